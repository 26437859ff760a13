"""Activations of a transformers v5 mixture-of-experts block: router, grouped_mm experts, shared expert gate.

transformers v5 runs the experts through `grouped_mm_experts_forward` (transformers/integrations/moe.py, the
default `experts_implementation`): every token is copied once per chosen expert, S = tokens x top-k rows, sorted
by expert, so the shapes (and the bytes) do not depend on where the router sends the tokens. Confirmed tensor by
tensor against our trace of the real code (validation/matrix.toml, tiny-mixtral / tiny-qwen3-moe / tiny-deepseek-v3).
"""

from __future__ import annotations

from vramplan.estimate.dtypes import ALLOCATION_GRANULE_BYTES, FP32_BYTES, INT64_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec


# torch.sort / gathers in grouped_mm_experts_forward: `perm // num_top_k` (hidden-state gather index), `perm`
# (routing-weight gather index) and `inv_perm` (the restoring gather), int64 each, saved by the index backwards.
DISPATCH_INDEX_COPIES = 3
# grouped_mm's `offs` (cumulative tokens per expert, int32 [E]) is saved once for both grouped matmuls.
OFFSETS_BYTES = 4
# DeepSeek-V3 router (DeepseekV3TopkRouter.forward) leaves a few tiny tensors (the normalising denominator and
# 0-d scalars) besides those counted below: three 512-byte blocks, measured in tiny-deepseek-v3 traces.
DEEPSEEK_ROUTER_SMALL_BLOCKS = 3


def routed_rows(spec: ModelSpec, tokens: int) -> int:
    """S: token-expert pairs the grouped matmuls process."""
    return tokens * spec.moe.experts_per_token


def router_saved_bytes(spec: ModelSpec, tokens: int, compute: int) -> list[int]:
    """What the router keeps for backward.

    Mixtral/Qwen (MixtralTopKRouter, Qwen3MoeTopKRouter): softmax's fp32 output [T, E], topk's int64 indices and,
    when the top-k weights are renormalised in place (`/= sum`), the weights and their sum. DeepSeek-V3
    (DeepseekV3TopkRouter): sigmoid's output, gather's indices and the in-place normalisation's operands.
    """
    moe = spec.moe
    e, k = moe.num_experts, moe.experts_per_token
    indices = tensor_bytes(tokens * k * INT64_BYTES)
    if spec.family == "deepseek_v3":
        small = DEEPSEEK_ROUTER_SMALL_BLOCKS * ALLOCATION_GRANULE_BYTES
        return [tensor_bytes(tokens * e * compute), indices, 2 * tensor_bytes(tokens * k * compute), small]
    saved = [tensor_bytes(tokens * e * FP32_BYTES), indices]
    if _renormalises(spec):
        saved += [tensor_bytes(tokens * k * FP32_BYTES), tensor_bytes(tokens * FP32_BYTES)]
    return saved


def _renormalises(spec: ModelSpec) -> bool:
    """Mixtral always renormalises its top-k weights (`router_top_value /= sum`); Qwen-MoE with norm_topk_prob."""
    return spec.family == "mixtral" or spec.moe.norm_topk_prob


def routing_weight_bytes(spec: ModelSpec, compute: int) -> int:
    """Width of the routing weights the experts multiply by: fp32 in Mixtral (softmax of `.float()` logits),
    cast back to the logits' dtype in Qwen-MoE, the sigmoid scores' dtype in DeepSeek-V3."""
    return FP32_BYTES if spec.family == "mixtral" else compute


def experts_saved_bytes(spec: ModelSpec, tokens: int, expert_width: int, compute: int, train: bool) -> list[int]:
    """grouped_mm_experts_forward's saved tensors for one layer.

    The gate/up output [S, 2I] (silu saves gate, the multiply saves up: both views of it), act(gate) [S, I], the
    down projection's output [S, H] (saved by the multiply with the routing weights, for the router's gradient),
    the sorted routing weights, three int64 dispatch indices and the offsets. When the experts train, each grouped
    matmul also saves its input: the gathered token copies [S, H] and the SwiGLU product [S, I].
    `expert_width` is the experts' dtype: grouped_mm casts its input to it (`input.to(weight.dtype)`), autocast
    does not apply.
    """
    rows = routed_rows(spec, tokens)
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size
    saved = [
        tensor_bytes(rows * 2 * inter * expert_width),
        tensor_bytes(rows * inter * expert_width),
        tensor_bytes(rows * h * expert_width),
        tensor_bytes(rows * routing_weight_bytes(spec, compute)),
        DISPATCH_INDEX_COPIES * tensor_bytes(rows * INT64_BYTES),
        tensor_bytes(spec.moe.num_experts * OFFSETS_BYTES),
    ]
    if train:
        saved += [tensor_bytes(rows * h * expert_width), tensor_bytes(rows * inter * expert_width)]
    return saved


def shared_gate_saved_bytes(spec: ModelSpec, tokens: int, compute: int) -> list[int]:
    """Qwen2-MoE: `sigmoid(shared_expert_gate(x)) * shared_expert(x)` saves the sigmoid's output [T, 1] and the
    shared expert's output [T, H] (Qwen2MoeSparseMoeBlock.forward)."""
    if not spec.moe.shared_expert_gate:
        return []
    return [tensor_bytes(tokens * compute), tensor_bytes(tokens * spec.hidden_size * compute)]


def experts_forward_transient_bytes(
    spec: ModelSpec, tokens: int, expert_width: int, residual: int, frame_tensors: int
) -> int:
    """Unsaved tensors alive at the experts' largest forward moment, besides what the layer saves.

    The MoE block's input (the decoder layer's `residual` and the norm output: `frame_tensors` hidden states),
    the gathered token copies [S, H] (a local until the function returns), then the larger of two moments:
    the down grouped_mm (the SwiGLU product [S, I] and the output [S, H]) or the restoring gather (the fp32
    weighted output [S, H] and its gathered copy; the output is saved by then).
    """
    rows = routed_rows(spec, tokens)
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size
    frame = frame_tensors * tensor_bytes(tokens * h * residual)
    down = tensor_bytes(rows * inter * expert_width) + tensor_bytes(rows * h * expert_width)
    restore = 2 * tensor_bytes(rows * h * FP32_BYTES)
    return frame + tensor_bytes(rows * h * expert_width) + max(down, restore)


def experts_backward_in_flight_bytes(spec: ModelSpec, tokens: int, expert_width: int, residual: int) -> int:
    """Gradients alive at the experts' SwiGLU multiply backward: d(product), d(act) and d(up), [S, I] each, and
    the layer output's gradient. The routing multiply's fp32 gradients are consumed by then, and the later
    gate/up concatenation [S, 2I] comes after act and the gate/up output are released (measured in the
    tiny-mixtral and mixtral-8x7b traces of validation/matrix.toml)."""
    rows = routed_rows(spec, tokens)
    inter = spec.moe.expert_intermediate_size
    return 3 * tensor_bytes(rows * inter * expert_width) + tensor_bytes(tokens * spec.hidden_size * residual)


# --- transformers 4.x's Mixtral layout (--transformers 4; traced by vramplan/measure/moe_v4.py) -------------------

def balanced_rows(tokens: int, top_k: int, experts: int) -> list[int]:
    """Rows each expert receives when the router spreads tokens x top_k evenly (the first ones take the rest): the
    routing the v4 estimate assumes and vramplan/measure/moe_v4.py traces."""
    base, rest = divmod(tokens * top_k, experts)
    return [base + (1 if i < rest else 0) for i in range(experts)]


def v4_expert_rows(spec: ModelSpec, tokens: int) -> list[int]:
    """Rows each expert's loop iteration processes with balanced routing (tokens x top-k / experts)."""
    return balanced_rows(tokens, spec.moe.experts_per_token, spec.moe.num_experts)


def v4_experts_saved_bytes(spec: ModelSpec, tokens: int, width: int) -> list[int]:
    """What 4.x's expert loop keeps for backward, per expert (frozen experts: LoRA or QLoRA): the gather's and the
    routing-weight index's int64 indices, act(w1 x) saves w1's output, the multiply saves act and w3's output
    ([rows, I] each), the routing weights' slice [rows, 1], and [rows, H] twice (the expert's output, saved by the
    routing multiply, and the gathered rows), as the saved-tensor hooks of the traced block list them."""
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size
    saved: list[int] = []
    for rows in v4_expert_rows(spec, tokens):
        saved += [2 * tensor_bytes(rows * INT64_BYTES), 3 * tensor_bytes(rows * inter * width),
                  tensor_bytes(rows * width), 2 * tensor_bytes(rows * h * width)]
    return saved


def v4_experts_forward_transient_bytes(spec: ModelSpec, tokens: int, width: int, residual: int,
                                       frame_tensors: int) -> int:
    """Unsaved tensors alive at 4.x's largest expert moment: the block's input frame, the `final` accumulator
    [T, H], the one-hot expert mask (int64 [E, top-k, T], alive through the loop) and one expert's SwiGLU product
    [rows, I] with w2's output [rows, H]."""
    rows = max(v4_expert_rows(spec, tokens))
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size
    frame = frame_tensors * tensor_bytes(tokens * h * residual)
    mask = tensor_bytes(tokens * spec.moe.experts_per_token * spec.moe.num_experts * INT64_BYTES)
    return frame + tensor_bytes(tokens * h * width) + mask + tensor_bytes(rows * inter * width) + tensor_bytes(
        rows * h * width)


def v4_experts_backward_in_flight_bytes(spec: ModelSpec, tokens: int, width: int, residual: int) -> int:
    """One expert's SwiGLU backward: d(product), d(act), d(w3 out), [rows, I] each, and the layer output's
    gradient [T, H]."""
    rows = max(v4_expert_rows(spec, tokens))
    return 3 * tensor_bytes(rows * spec.moe.expert_intermediate_size * width) + tensor_bytes(
        tokens * spec.hidden_size * residual)
