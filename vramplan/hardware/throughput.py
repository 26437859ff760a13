"""Training FLOPs per token, and tokens per second on a GPU at a stated utilisation.

Matmul FLOPs only (the other ops are memory-bound and small next to them), counted from the model's shapes:
- forward: 2 FLOPs per weight per token for every linear layer and lm_head (Kaplan et al. 2020, section 2.1);
  causal attention adds 2 x seq_len x q_size per layer per token (QK^T and AV, half the square kept);
- backward: the input gradient costs one forward again; weight gradients cost another, but only for weights
  that train (full fine-tuning; for LoRA/QLoRA just the adapters);
- gradient checkpointing recomputes the forward once more.

The GPU's share (step_work, compute_seconds): matmuls run at the GPU's maximum achievable matmul rate (MAMF, a
measured fraction of the datasheet's dense BF16 peak); the memory-bound work (elementwise ops over the activations,
QLoRA's dequantisation, the optimizer step) runs at the memory bandwidth; the sum is divided by STACK_EFFICIENCY, the
share of that ideal the real training stacks reach (measured against published runs: validation/RESULTS.md,
"Training throughput").

Several GPUs add communication (step_traffic, step_time): the bytes each strategy's collectives move per step,
over the link they cross (vramplan/hardware/links.py). Ring collectives (NCCL's ring algorithm; Patarasuk and
Yuan 2009, "Bandwidth optimal all-reduce algorithms"): an all-gather or reduce-scatter of B bytes over n ranks
sends (n-1)/n x B per rank, an all-reduce 2 (n-1)/n x B. Communication is taken as NOT overlapped with compute:
step time = compute + communication, an upper bound on time (DDP's bucketed all-reduce and FSDP2/ZeRO-3
prefetching hide part of it in practice).
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.components.activations.layer import activation_bytes
from vramplan.estimate.components.weights import adapter_tensor_elements, weight_memory
from vramplan.estimate.dtypes import HALF_BYTES, trainable_bytes_per_param
from vramplan.hardware.catalog import Gpu
from vramplan.hardware.links import Links
from vramplan.models.spec import ModelSpec
from vramplan.training import DEEPSPEED_STRATEGIES, Method, Offload, Strategy, TrainingSetup

FLOPS_PER_MAC = 2
TERA = 10**12  # the catalog's TFLOPS are 10^12 FLOP/s
# FSDP2 and ZeRO-3 gather each layer's parameters twice per step: before its forward and before its backward
# (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py pre_forward / pre_backward unshard; reshard after
# forward is on; the checkpointed recompute runs inside the backward's gather). ZeRO paper section 7.2.2: 3 x psi.
PARAM_GATHERS_PER_STEP = 2
# Offloaded states cross PCIe twice a step: ZeRO-Offload sends the 16-bit gradient partition to the CPU and the
# updated 16-bit parameters back (ZeRO-Offload paper, Ren et al. 2021, section 4.1); offloaded parameters are
# fetched once for forward and once for backward.
OFFLOAD_CROSSINGS = 2

# Maximum achievable matmul FLOPS (BF16 inputs, no sparsity) that mamf-finder measured: stas00/ml-engineering
# compute/accelerator/README.md, "Maximum Achievable Matmul FLOPS comparison table" (A100 SXM 267.9 of 312, A100 PCIe
# 256.4, H100 SXM 792.1 of 989, GH200 821.0 of 989, MI300X 781.9 of 1300 with ROCm 6.2).
MAMF_BF16_TFLOPS = {"a100-sxm4-80gb": 267.9, "a100-sxm4-40gb": 267.9, "a800-sxm4-80gb": 267.9,
                    "a100-pcie-80gb": 256.4, "h100-sxm5-80gb": 792.1, "h800-sxm-80gb": 792.1,
                    "h200-sxm-141gb": 821.0, "mi300x": 781.9}
# A GPU the table does not measure: the median efficiency of its NVIDIA rows (85.9, 83.0, 82.2, 80.1 %).
DEFAULT_MATMUL_EFFICIENCY = 0.826
# Memory-bound kernels (elementwise ops, dequantisation, the optimizer's foreach ops) stream at this share of the
# datasheet bandwidth: a 4 GiB device copy reaches 90.6% of peak on an H100 NVL (a public ceiling probe, read via
# find_string "Maximum Achievable Matmul FLOPS"); the many small eager kernels of a step reach less, which
# STACK_EFFICIENCY absorbs.
BANDWIDTH_EFFICIENCY = 0.9
# Saved activations cross memory four times a step: written in the forward, read in the backward, and their gradients
# written and read there; checkpointing's recompute writes them once more.
ACTIVATION_PASSES = 4
# bitsandbytes dequantises each 4-bit weight into a 16-bit copy before every matmul (bnb.functional.dequantize_4bit
# under MatMul4Bit: forward, and the backward's input gradient): it reads half a byte, writes two, and the matmul
# reads the two back.
DEQUANT_BYTES_PER_WEIGHT = 4.5
# AdamW's step reads parameter, gradient and both moments and writes parameter and moments: 7 tensors for every 2 of
# state, so 3.5 bytes move per byte of optimizer state (torch/optim/adamw.py _multi_tensor_adamw).
OPTIMIZER_BYTES_PER_STATE_BYTE = 3.5
# The share of the ideal step (matmuls at MAMF + memory-bound work at the bandwidth) that real fine-tuning stacks
# reach: the median of measured / ideal over the published runs in validation/throughput/ (kernel launches, the
# attention kernel, the loss, the data loader, Python). Recomputed by scripts/validate_throughput.py;
# tests/hardware/test_throughput_validation.py keeps this figure equal to that median.
STACK_EFFICIENCY = 0.76
# The job time a run really takes, as a multiple of the predicted time: the 10th and 90th percentiles of measured /
# predicted time over the same published runs (scripts/validate_throughput.py). The report quotes times as this range.
TIME_RANGE = (0.70, 1.37)


class StepFlops(BaseModel):
    """FLOPs of one training step per token, split the way they are counted."""

    forward_per_token: int
    backward_per_token: int
    recompute_per_token: int
    reference_per_token: int = 0  # DPO: the reference model's forward (no backward) over the same rows

    @property
    def per_token(self) -> int:
        return self.forward_per_token + self.backward_per_token + self.recompute_per_token + self.reference_per_token


def step_flops(spec: ModelSpec, setup: TrainingSetup) -> StepFlops:
    # Every layer's nn.Linear weights, plus, in an MoE layer, the experts each token is routed to (top-k of E: the
    # 3D expert tensors hold E experts' weights).
    linear_weights = _linear_weights(spec)
    lm_head = spec.vocab_size * spec.hidden_size
    adapters = sum(adapter_tensor_elements(spec, setup))
    # Causal attention: QK^T and AV are each seq_len x q_size MACs per token, halved by the causal mask.
    attention = spec.num_layers * 2 * setup.seq_len * spec.q_size // 2
    forward = FLOPS_PER_MAC * (linear_weights + lm_head + adapters + attention)
    input_grads = forward
    if setup.method is Method.FULL:
        weight_grads = FLOPS_PER_MAC * (linear_weights + lm_head)
    else:
        weight_grads = FLOPS_PER_MAC * adapters
    # Attention's backward recomputes nothing but needs gradients for q, k and v: two more passes.
    attention_backward = FLOPS_PER_MAC * attention
    recompute = forward - FLOPS_PER_MAC * lm_head if setup.gradient_checkpointing else 0
    # (ORPO has no reference: its rows are counted by tokens_per_step at 2 x pairs, as DPO's policy forward)
    # DPOTrainer._compute_loss runs the reference forward over the same rows (the adapter-disabled base under peft)
    # GRPO with beta > 0 scores the same rows with the reference (per generation batch: per micro-batch on average)
    scored = setup.objective == "dpo" or (setup.objective == "grpo" and setup.grpo.beta > 0)
    reference = forward - FLOPS_PER_MAC * adapters if scored else 0
    if setup.objective == "kto":  # KTOTrainer: the reference over the rows, and the KL rows twice (policy, reference)
        reference = 3 * forward - FLOPS_PER_MAC * adapters
    return StepFlops(
        forward_per_token=forward,
        backward_per_token=input_grads + weight_grads + attention_backward,
        recompute_per_token=recompute,
        reference_per_token=reference,
    )


class StepWork(BaseModel):
    """What one rank computes and streams for one micro-batch: matmul FLOPs per token and memory-bound bytes."""

    flops_per_token: int
    activation_bytes: int  # elementwise traffic over the saved activations, per micro-batch
    dequant_bytes: int  # QLoRA's dequantisation traffic, per micro-batch
    optimizer_bytes: int  # the optimizer step's traffic (one step per micro-batch: no accumulation modelled)
    generation_flops: int = 0  # GRPO: generate's matmuls (prefill and decoding), per micro-batch on average
    generation_bytes: int = 0  # GRPO: what each decoding step reads (weights, KV cache), per micro-batch on average

    @property
    def memory_bytes(self) -> int:
        return self.activation_bytes + self.dequant_bytes + self.optimizer_bytes + self.generation_bytes


def _linear_weights(spec: ModelSpec) -> int:
    """Weights every token's matmuls read: the layers' linears plus, in MoE layers, the experts it is routed to."""
    weights = sum(lin.weight_params for lin in spec.all_layer_linears)
    if spec.moe is not None:
        per_expert = sum(math.prod(shape[1:]) for shape in spec.expert_tensor_shapes()[:2])
        weights += len(spec.moe_layer_ids) * spec.moe.experts_per_token * per_expert
    return weights


def step_work(spec: ModelSpec, setup: TrainingSetup, optimizer_state_bytes: int) -> StepWork:
    """One rank's micro-batch; `optimizer_state_bytes` is the rank's optimizer state (sharded where the layout
    shards it)."""
    # a DPO step's activations are its rows' (chosen and rejected)
    rows = setup.model_copy(update={"gradient_checkpointing": False, "batch_size": setup.rows, "objective": "sft",
                                    "prompt_len": None})
    saved, _ = activation_bytes(spec, rows)
    passes = ACTIVATION_PASSES + (1 if setup.gradient_checkpointing else 0)
    dequant = 0
    if setup.method is Method.QLORA:
        # every pass over a layer dequantises all of its 4-bit weights (the experts all, not only the routed ones)
        quantised = sum(lin.weight_params for lin in spec.all_layer_linears)
        if spec.moe is not None:
            quantised += len(spec.moe_layer_ids) * sum(math.prod(s) for s in spec.expert_tensor_shapes()[:2])
        weight_passes = 2 + (1 if setup.gradient_checkpointing else 0)
        dequant = round(DEQUANT_BYTES_PER_WEIGHT * quantised * weight_passes)
    flops, traffic = generation_work(spec, setup) if setup.objective == "grpo" else (0, 0)
    return StepWork(flops_per_token=step_flops(spec, setup).per_token, activation_bytes=saved * passes,
                    dequant_bytes=dequant,
                    optimizer_bytes=round(OPTIMIZER_BYTES_PER_STATE_BYTE * optimizer_state_bytes),
                    generation_flops=flops, generation_bytes=traffic)


def generation_work(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """GRPO's transformers generation, per micro-batch (one generation batch serves steps_per_generation of them):
    the forward matmuls of every prompt and generated token, and the bytes each decoding step streams (every weight,
    dequantised under QLoRA, and the KV cache so far, half full on average). A lower bound: generate's per-step
    Python and kernel-launch overhead, which dominates small models, is not counted."""
    rows, prompt, completion = setup.generation_rows, setup.prompt_len, setup.completion_len
    per_token = FLOPS_PER_MAC * (_linear_weights(spec) + spec.vocab_size * spec.hidden_size)
    attention = FLOPS_PER_MAC * spec.num_layers * spec.q_size * (prompt + completion // 2)
    flops = rows * (prompt + completion) * (per_token + attention)
    linear = sum(lin.weight_params for lin in spec.all_layer_linears)
    weights = (DEQUANT_BYTES_PER_WEIGHT * linear if setup.method is Method.QLORA else HALF_BYTES * linear) + (
        HALF_BYTES * spec.vocab_size * spec.hidden_size)
    cache = rows * (prompt + completion // 2) * spec.num_layers * (spec.kv_size + spec.v_size) * HALF_BYTES
    steps = setup.grpo.steps_per_generation
    return flops // steps, round(completion * (weights + cache)) // steps


def matmul_efficiency(gpu: Gpu) -> tuple[float, str]:
    """(share of the dense BF16 peak large matmuls reach, where the figure comes from)."""
    mamf = MAMF_BF16_TFLOPS.get(gpu.id)
    if mamf is not None and gpu.bf16_dense_tflops:
        return mamf / gpu.bf16_dense_tflops, f"measured MAMF {mamf:g} TFLOPS"
    return DEFAULT_MATMUL_EFFICIENCY, "no MAMF measurement: the median of the measured NVIDIA parts"


def compute_seconds(work: StepWork, tokens: int, gpu: Gpu, utilisation: float | None = None) -> float:
    """One rank's micro-batch of `tokens`, communication left out. `utilisation` (a user's MFU) replaces the model:
    matmul FLOPs at that share of the dense BF16 peak, nothing else."""
    peak = gpu.bf16_dense_tflops * TERA
    if utilisation is not None:
        return (work.flops_per_token * tokens + work.generation_flops) / (peak * utilisation)
    efficiency, _ = matmul_efficiency(gpu)
    matmuls = (work.flops_per_token * tokens + work.generation_flops) / (peak * efficiency)
    memory = 0.0
    if gpu.bandwidth_gb_s:
        memory = work.memory_bytes / (gpu.bandwidth_gb_s * 10**9 * BANDWIDTH_EFFICIENCY)
    return (matmuls + memory) / STACK_EFFICIENCY


def tokens_per_second(flops_per_token: int, bf16_dense_tflops: float, utilisation: float) -> float:
    """Tokens per second for one GPU running at `utilisation` of its dense BF16 tensor rate."""
    return bf16_dense_tflops * 1e12 * utilisation / flops_per_token


def _ring_shard(nbytes: int, ranks: int) -> int:
    """Bytes one rank sends in a ring all-gather or reduce-scatter of `nbytes` over `ranks`."""
    return nbytes * (ranks - 1) // ranks


def _ring_all_reduce(nbytes: int, ranks: int) -> int:
    return 2 * _ring_shard(nbytes, ranks)


class StepTraffic(BaseModel):
    """Bytes one step moves over each link; zero on one GPU."""

    gpu_link_bytes: int  # one rank sends over the in-node GPU link
    network_bytes: int  # one node sends over its network
    host_bytes: int  # one rank moves between GPU and host RAM (offload)
    hierarchical: bool  # HSDP: in-node and cross-node collectives run one after the other
    collectives: str


def _model_state_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(parameter bytes a rank gathers or holds whole, gradient bytes it reduces) for the whole model."""
    weights = weight_memory(spec, setup)
    if setup.strategy in DEEPSPEED_STRATEGIES and setup.method is not Method.QLORA:
        # DeepSpeed casts the module to 16-bit and reduces 16-bit gradients (estimate/strategies/zero.py).
        return weights.total_params * HALF_BYTES, weights.trainable_params * HALF_BYTES
    return weights.base_bytes + weights.adapter_bytes, weights.trainable_params * trainable_bytes_per_param(setup)


def step_traffic(spec: ModelSpec, setup: TrainingSetup) -> StepTraffic:
    strategy, world, gpus, nodes = setup.strategy, setup.world_size, setup.gpus, setup.nodes
    if strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP) or world == 1 and setup.offload is Offload.NONE:
        return StepTraffic(gpu_link_bytes=0, network_bytes=0, host_bytes=0, hierarchical=False,
                           collectives="none (one GPU computes at a time)" if strategy is Strategy.DEVICE_MAP
                           else "none")
    params, grads = _model_state_bytes(spec, setup)
    hierarchical = strategy is Strategy.FSDP_HYBRID and nodes > 1
    group = gpus if strategy is Strategy.FSDP_HYBRID else world
    if strategy is Strategy.DDP:
        per_rank = _ring_all_reduce(grads, world)
        what = "all-reduce of the gradients"
    elif strategy in (Strategy.ZERO1, Strategy.ZERO2):
        # reduce-scatter the 16-bit gradients; all-gather the updated 16-bit trainable parameters after the step
        # (as many, and as wide, as the gradients)
        updated_params = grads
        per_rank = _ring_shard(grads, world) + _ring_shard(updated_params, world)
        what = "reduce-scatter of the gradients + all-gather of the updated parameters"
    else:
        per_rank = PARAM_GATHERS_PER_STEP * _ring_shard(params, group) + _ring_shard(grads, group)
        what = f"{PARAM_GATHERS_PER_STEP} all-gathers of the parameters + reduce-scatter of the gradients"
    if hierarchical:
        # every rank all-reduces its gradient shard with its peers on the other nodes; a node's GPUs share its NICs
        network = gpus * _ring_all_reduce(grads // gpus, nodes)
        what += f" within each node, then all-reduce of the gradient shards across {nodes} nodes"
    else:
        network = per_rank if nodes > 1 else 0  # a ring over nodes carries each rank's volume across every node
    return StepTraffic(gpu_link_bytes=per_rank, network_bytes=network, host_bytes=_offload_bytes(setup, params,
                       grads, group), hierarchical=hierarchical, collectives=what)


def _offload_bytes(setup: TrainingSetup, params: int, grads: int, group: int) -> int:
    if setup.offload is Offload.NONE:
        return 0
    if setup.strategy in DEEPSPEED_STRATEGIES:
        moved = OFFLOAD_CROSSINGS * -(-grads // group)  # gradient partition down, updated partition up
        if setup.offload is Offload.PARAMS:
            moved += OFFLOAD_CROSSINGS * -(-params // group)
        return moved
    # FSDP2 CPUOffloadPolicy: parameter shards copied in for forward and backward, gradient shards copied out.
    return OFFLOAD_CROSSINGS * -(-params // group) + -(-grads // group)


class StepTime(BaseModel):
    """One training step of the whole layout, in seconds; None where a link's bandwidth is unknown."""

    compute_s: float
    communication_s: float | None
    tokens_per_step: int  # over every data-parallel rank
    missing: str = ""  # which bandwidth is unknown

    @property
    def step_s(self) -> float | None:
        return None if self.communication_s is None else self.compute_s + self.communication_s

    @property
    def tokens_per_second(self) -> float | None:
        step = self.step_s
        return None if step is None else self.tokens_per_step / step

    @property
    def communication_share(self) -> float | None:
        step = self.step_s
        return None if step is None else self.communication_s / step


def _seconds(nbytes: int, bandwidth: int | None) -> float | None:
    if nbytes == 0:
        return 0.0
    return None if bandwidth is None else nbytes / bandwidth


def step_time(work: StepWork, setup: TrainingSetup, traffic: StepTraffic, links: Links, gpu: Gpu,
              utilisation: float | None = None) -> StepTime:
    """Compute (compute_seconds, every rank alike) plus communication, not overlapped. A DPO step runs its rows
    (chosen and rejected: twice the pairs), all of them counted as training tokens."""
    rank_tokens = setup.rows * setup.seq_len
    compute = compute_seconds(work, rank_tokens, gpu, utilisation)
    # device_map="auto" is one process: its GPUs take turns, so the layout trains one micro-batch at a time.
    replicas = 1 if setup.strategy is Strategy.DEVICE_MAP else setup.world_size
    gpu = _seconds(traffic.gpu_link_bytes, links.gpu_to_gpu)
    network = _seconds(traffic.network_bytes, links.node_to_node)
    host = _seconds(traffic.host_bytes, links.gpu_to_host)
    unknown = [name for name, value in (("GPU link", gpu), ("network", network), ("host PCIe", host))
               if value is None]
    if unknown:
        return StepTime(compute_s=compute, communication_s=None, tokens_per_step=rank_tokens * replicas,
                        missing=", ".join(unknown) + " bandwidth unknown")
    # A ring that spans nodes runs at its slowest edge; HSDP's in-node and cross-node phases follow each other.
    links_s = gpu + network if traffic.hierarchical else max(gpu, network)
    return StepTime(compute_s=compute, communication_s=links_s + host, tokens_per_step=rank_tokens * replicas)
