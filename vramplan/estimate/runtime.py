"""What the GPU adds beyond live tensors: the caching allocator's reserve, cuBLAS workspaces, the CUDA context and
NCCL's buffers.

The reserve is a closed-form rule derived from replaying the matrix's traced allocation streams through the
caching-allocator simulation (vramplan/allocator/caching.py, `replay_steady_step`; scripts/replay_matrix.py writes
validation/results/replay.csv). What the replays show the slack (reserved - allocated) depends on:
- the loss's logits blocks: with the standard cross-entropy every step allocates the lm_head output, its fp32 upcast,
  log_softmax's fp32 output and an fp32 gradient (transformers' ForCausalLMLoss); each is too large for any
  cached hole, so each gets a segment of its own, and those segments stay reserved when the step's peak comes later;
- the transient bytes at the peak (allocated - weights, adapters, optimizer states) and checkpointing: without it
  backward frees the saved activations in reverse order of their allocation, so holes close (slack <= 2.6% of the
  transient bytes); with it each layer's recomputation allocates activations between gradients of other sizes and
  best fit carves the larger cached blocks, so holes pile up (<= 30%; 67% with torchtune's optimizer-in-backward,
  whose per-parameter steps interleave too);
- FSDP: all-gather and reduce-scatter buffers live in their own streams' pools (per-stream caches): slack in
  unsharded layers;
- `expandable_segments:True` maps pages into one growing segment per stream: most carving slack goes away.
The fractions are the largest ratio seen over every replayed matrix case, so the rule is never below a replay: an
upper end, said so in the answer. `vramplan check --exact` replays the job's own traced stream instead.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.models.spec import ModelSpec
from vramplan.result import PhasePeak
from vramplan.training import Loss, Method, Precision, Stack, Strategy, TrainingSetup

MIB = 1024**2
# PR pytorch/pytorch#86509: a CUDA context measured 636 MiB with every kernel loaded (CUDA_MODULE_LOADING=EAGER) and
# 274 MiB lazily at first use; lazily loaded kernels then grow it during training; pytorch#135279 and ptrblck in
# pytorch#107667 report ~1 GB / >1000 MB. No sourced figure per GPU generation exists (MEMORY_FACTS.md), so the
# upper end is used for every GPU, so device_bytes errs high.
CUDA_CONTEXT_BYTES = 1024 * MIB
# aten/src/ATen/cuda/CublasHandlePool.cpp getChosenWorkspaceSize: 32 MiB on Hopper and Blackwell (":4096:8"),
# 8.125 MiB elsewhere, from the caching allocator, one per (handle, stream); a training step has two GEMM threads
# (Python's and autograd's backward thread). The estimate does not know the GPU: the upper end, 2 x 32 MiB.
CUBLAS_WORKSPACE_BYTES = 2 * 32 * MIB
# c10/cuda/CUDACachingAllocator.cpp: kRoundLarge = 2 MiB (large segments are multiples of it);
# kSmallBuffer = 2 MiB (the segment small allocations are carved from).
LARGE_SEGMENT_ROUND_BYTES = 2 * MIB
SMALL_SEGMENT_BYTES = 2 * MIB


class FragmentationRule(BaseModel):
    """The slack over the allocated peak: the loss's logits blocks, plus a fraction of the peak's transient bytes."""

    logits_blocks: float  # x the logits blocks not live at the peak (1: each keeps its own segment)
    checkpointed: float  # x transient bytes, with gradient checkpointing
    stored: float  # x transient bytes, without
    floor_bytes: int = 256 * MIB  # small pools and 20 MiB segments: slack that does not scale with the step


# From the steady-state replays of the 127 single-GPU matrix cases (validation/results/replay.csv): the largest
# (slack - logits blocks - floor) / transient bytes, rounded up.
DEFAULT_RULE = FragmentationRule(logits_blocks=1.0, checkpointed=0.30, stored=0.026)
EXPANDABLE_RULE = FragmentationRule(logits_blocks=1.0, checkpointed=0.17, stored=0.016)
OPTIMIZER_IN_BACKWARD_CHECKPOINTED = {False: 0.67, True: 0.17}  # torchtune optimizer_in_bwd (1 matrix case)
# FSDP2: all-gather and reduce-scatter buffers are cached in their own streams' pools, which the default stream
# cannot reuse: slack in unsharded decoder layers (bf16 bytes), the largest over the matrix's real-size FSDP cases
# beyond the single-GPU terms (full fine-tuning reduce-scatters every layer's gradients; adapters only theirs).
# The FSDP trace's stream attribution (torch.cpu's stream contexts under the fake process group) is not yet
# checked against a GPU.
# Keyed (full fine-tuning, expandable segments).
FSDP_LAYERS_CACHED = {(True, False): 12.0, (True, True): 8.0, (False, False): 3.2, (False, True): 1.8}
# FSDP1: FlatParamHandle allocates each sharded gradient (reduce-scatter output, `_saved_grad_shard`) in the
# post-backward stream and the gathered flat parameters in the unshard stream (torch/distributed/fsdp/
# _runtime_utils.py _post_backward_hook, _unshard). Freed in the default stream's forward, the gradients' blocks stay
# in the post-backward pool, where the forward cannot reuse them: the whole gradient shard is slack; the unshard
# pool caches up to the rate limiter's two gathered layers (flat, as gathered) beside it. The count is the largest
# the replays of the matrix's real-size FSDP1 cases need beyond the gradients (2.97,
# llama-3.1-8b-fsdp1-4x2-full-hybrid-ckpt; 2.2 without HYBRID_SHARD), rounded up.
FSDP1_LAYERS_CACHED = 3.0
# What every phase holds for the whole step: not transient, never fragments.
HELD_COMPONENTS = ("weights", "lora_adapters", "optimizer_states")


def fragmentation_rule(setup: TrainingSetup) -> FragmentationRule:
    expandable = setup.allocator.expandable_segments
    rule = EXPANDABLE_RULE if expandable else DEFAULT_RULE
    if setup.optimizer_in_backward:
        return rule.model_copy(update={"checkpointed": OPTIMIZER_IN_BACKWARD_CHECKPOINTED[expandable]})
    return rule


def logits_blocks_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The standard loss's logits-sized segments in one step, as the replays show them: the lm_head output, its fp32
    upcast (none when already fp32), log_softmax's fp32 output, and one fp32 gradient that no freed block can hold
    (transformers loss_utils ForCausalLMLoss: logits.float(), cross_entropy). Chunked and fused losses, and TRL's
    fused head under DPO and GRPO (components/trl_head.py), never hold full logits: 0."""
    if setup.stack is Stack.TORCHTUNE or setup.loss is not Loss.STANDARD or setup.objective != "sft":
        return 0
    fp32 = setup.batch_size * setup.seq_len * spec.vocab_size * 4
    output = fp32 if setup.precision is Precision.FP32 else fp32 // 2
    return output + 2 * fp32 + (fp32 if output != fp32 else 0)


def fragmentation_bytes(spec: ModelSpec, setup: TrainingSetup, phases: list[PhasePeak], total_params: int) -> int:
    """The allocator's slack at the peak: cached blocks no request of the step could reuse (an upper end)."""
    rule = fragmentation_rule(setup)
    peak = max(phases, key=lambda phase: phase.total_bytes)
    loss = max(phases, key=lambda phase: phase.components.get("logits_loss", 0))
    live_logits = loss.components.get("logits_loss", 0)
    logits_slack = 0
    if live_logits:  # the loss phase, with every logits block reserved, against the peak
        logits_slack = max(0, loss.total_bytes - live_logits + logits_blocks_bytes(spec, setup) - peak.total_bytes)
    transient = peak.total_bytes - sum(peak.components.get(name, 0) for name in HELD_COMPONENTS)
    fraction = rule.checkpointed if setup.gradient_checkpointing else rule.stored
    slack = rule.logits_blocks * logits_slack + fraction * max(0, transient)
    gradients = max(phase.components.get("gradients", 0) for phase in phases)
    return int(slack + fsdp_stream_slack(spec, setup, total_params, gradients)) + rule.floor_bytes


def fsdp_stream_slack(spec: ModelSpec, setup: TrainingSetup, total_params: int, gradient_bytes: int = 0) -> float:
    """FSDP's collective buffers cached in side-stream pools: FSDP2's in unsharded decoder layers of bf16 weights;
    FSDP1's sharded gradients (`gradient_bytes`) and its unshard stream's gathered layers."""
    if setup.world_size == 1:
        return 0.0
    if setup.strategy is Strategy.FSDP1:
        from vramplan.estimate.strategies.fsdp1 import fsdp1_units

        gathered = max(u.gathered_bytes for u in fsdp1_units(spec, setup) if u.name != "root")
        return gradient_bytes + FSDP1_LAYERS_CACHED * gathered
    layer_bytes = total_params * (4 if setup.precision is Precision.FP32 else 2) / spec.num_layers
    if setup.strategy not in (Strategy.FSDP, Strategy.FSDP_HYBRID):
        return 0.0
    full = setup.method is Method.FULL
    layers = FSDP_LAYERS_CACHED[(full, setup.allocator.expandable_segments)] * layer_bytes
    # FSDP2 also makes the sharded gradients in its reduce-scatter stream (foreach_reduce): at least FSDP1's slack,
    # which torchtune's bf16 gradients (no upcast, fewer layers' worth of bytes) need (llama-3.2-1b-tt-fsdp2-full).
    slack = max(layers, gradient_bytes + FSDP1_LAYERS_CACHED * layer_bytes)
    if setup.stack is Stack.TORCHTUNE:
        slack += torchtune_root_pool_bytes(spec, setup)
    return slack


def torchtune_root_pool_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """torchtune reshards its root (embedding, final norm, output) after the model's forward, before the loss: its
    unsharded parameters and all-gather output go back to the all-gather stream's pool, which the loss (default
    stream) cannot reuse (replays of the matrix's *-tt-fsdp* cases)."""
    from vramplan.estimate.strategies.fsdp_units import TORCHTUNE_ROOT, torchtune_fsdp_groups
    from vramplan.estimate.strategies.states import shard_group_size

    group = shard_group_size(setup)
    root = next(g for g in torchtune_fsdp_groups(spec, setup) if g.name == TORCHTUNE_ROOT)
    return root.gathered_bytes(group) + root.all_gather_buffer(group)


def reserved_bytes(spec: ModelSpec, setup: TrainingSetup, phases: list[PhasePeak], total_params: int) -> int:
    """Caching allocator reserve at the peak: the allocated peak in whole 2 MiB segments, the cuBLAS workspaces,
    and the fragmentation slack of the replays (an upper end)."""
    peak_allocated = max(phase.total_bytes for phase in phases)
    rounded = -(-peak_allocated // LARGE_SEGMENT_ROUND_BYTES) * LARGE_SEGMENT_ROUND_BYTES
    return rounded + CUBLAS_WORKSPACE_BYTES + fragmentation_bytes(spec, setup, phases, total_params)


def device_bytes(reserved: int, paged_bytes: int) -> int:
    """What nvidia-smi shows: reserved memory, the CUDA context, and managed (paged) optimizer state."""
    return reserved + CUDA_CONTEXT_BYTES + paged_bytes
