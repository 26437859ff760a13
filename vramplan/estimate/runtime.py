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
from vramplan.training import DEEPSPEED_STRATEGIES, Loss, Method, Precision, Stack, Strategy, TrainingSetup

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
# NCCL's own device buffers, outside torch's allocator, per communicator a rank joins: nccl issue 864 measured
# 1.6 GB for one communicator; ring buffers are 12 MiB per channel and peer (src/init.cc computeBuffSizes,
# src/transport/p2p.cc), NVLS adds 256 MiB-1.5 GiB on NVSwitch systems by NCCL version (src/transport/nvls.cc).
# The upper end is used so device_bytes errs high, as the CUDA context.
NCCL_COMMUNICATOR_BYTES = 1600 * 1000**2


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
    (transformers loss_utils ForCausalLMLoss: logits.float(), cross_entropy). Chunked and fused losses never hold
    full logits: 0."""
    if setup.stack is Stack.TORCHTUNE or setup.loss is not Loss.STANDARD:
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
    return int(slack + fsdp_stream_slack(spec, setup, total_params)) + rule.floor_bytes


def fsdp_stream_slack(spec: ModelSpec, setup: TrainingSetup, total_params: int) -> float:
    """FSDP2's collective buffers cached in side-stream pools, in unsharded decoder layers of bf16 weights."""
    if setup.strategy not in (Strategy.FSDP, Strategy.FSDP_HYBRID) or setup.world_size == 1:
        return 0.0
    layer_bytes = total_params * (4 if setup.precision is Precision.FP32 else 2) / spec.num_layers
    full = setup.method is Method.FULL
    return FSDP_LAYERS_CACHED[(full, setup.allocator.expandable_segments)] * layer_bytes


def reserved_bytes(spec: ModelSpec, setup: TrainingSetup, phases: list[PhasePeak], total_params: int) -> int:
    """Caching allocator reserve at the peak: the allocated peak in whole 2 MiB segments, the cuBLAS workspaces,
    and the fragmentation slack of the replays (an upper end)."""
    peak_allocated = max(phase.total_bytes for phase in phases)
    rounded = -(-peak_allocated // LARGE_SEGMENT_ROUND_BYTES) * LARGE_SEGMENT_ROUND_BYTES
    return rounded + CUBLAS_WORKSPACE_BYTES + fragmentation_bytes(spec, setup, phases, total_params)


def device_bytes(reserved: int, paged_bytes: int) -> int:
    """What nvidia-smi shows: reserved memory, the CUDA context, and managed (paged) optimizer state."""
    return reserved + CUDA_CONTEXT_BYTES + paged_bytes


def communicators(setup: TrainingSetup) -> int:
    """NCCL communicators a rank joins (torch creates each on a group's first collective): the default group;
    HSDP adds its shard and replicate groups (torch/distributed/device_mesh.py, one group per mesh dimension);
    DeepSpeed clones the world group for data parallelism (deepspeed/utils/groups.py _clone_world_group)."""
    if setup.world_size == 1 or setup.strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP):
        return 0
    if setup.strategy is Strategy.FSDP_HYBRID and setup.nodes > 1:
        return 3
    if setup.strategy in DEEPSPEED_STRATEGIES:
        return 2
    return 1


def nccl_bytes(setup: TrainingSetup) -> int:
    """NCCL's device buffers on one rank: every communicator it joins."""
    return communicators(setup) * NCCL_COMMUNICATOR_BYTES
