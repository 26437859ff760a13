"""TRL 1.x's fused LM head (trl/trainer/utils.py `add_fused_lm_head`, trl/kernels/chunked_logprob.py
`ChunkedLogProbFunction`, TRL 1.16) on its GPU path: per-token log-probabilities of the labelled positions, the
vocabulary projected in tiles, never the b x s x V logits."""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import dtype_flow
from vramplan.estimate.components.autocast import AutocastCopies, released_lm_head_copy_bytes
from vramplan.estimate.components.logits import LogitsMemory
from vramplan.estimate.dtypes import FP32_BYTES, compute_bytes, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup

# chunked_logprob.py: TOKEN_CHUNK_SIZE, tokens per projection tile; trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE,
# vocabulary entries per tile. One tile buffer, min(N, 4096) x 32768 in the compute dtype, serves every tile.
HEAD_TOKEN_TILE = 4096
HEAD_VOCAB_TILE = 32768
# ChunkedLogProbFunction.forward's fp32 per-token statistics (running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum,
# max_before_target, target_logit) live through the tile loop.
FORWARD_STATISTICS = 7
# The per-row outputs the fused forward returns (add_fused_lm_head: masked_scatter of each into zeros of the labels'
# shape): DPOTrainer asks for log_probs, entropy, mean_logits (fp32) and is_top1 (bool); GRPOTrainer for log_probs
# and entropy (grpo_trainer.py __init__), and its reference copy for log_probs alone (the default).
DPO_FP32_OUTPUTS = 3
GRPO_FP32_OUTPUTS = 2
# What the Function saves for backward besides the hidden rows: log_z and entropy, fp32 per token.
SAVED_STATISTICS = 2


def tile_bytes(setup: TrainingSetup, labelled: int) -> int:
    """The projection tile buffer: min(N, 4096) x 32768 in the compute dtype (the autocast dtype, else the
    hidden states')."""
    return tensor_bytes(min(labelled, HEAD_TOKEN_TILE) * HEAD_VOCAB_TILE * compute_bytes(setup.precision))


def fused_head_memory(spec: ModelSpec, setup: TrainingSetup, labelled: int, fp32_outputs: int = DPO_FP32_OUTPUTS,
                      bool_outputs: int = 1) -> LogitsMemory:
    """The head's forward peak, what it keeps for backward, and its backward peak, for `labelled` scored positions of
    `setup`'s rows (N). The hidden rows of the labelled positions are copied out (`hidden_states[mask]`) and kept;
    backward accumulates the hidden rows' gradient in fp32 (and the lm_head's, V x h, when it trains), then casts
    them to the parameters' dtypes."""
    flow = dtype_flow(setup)
    hidden = spec.hidden_size
    rows_tokens = setup.tokens_per_step
    compact = tensor_bytes(labelled * hidden * flow.residual)  # hidden_states[mask]
    per_token = tensor_bytes(labelled * FP32_BYTES)
    cast = weight_tile_cast_bytes(spec, setup)
    tile = tile_bytes(setup, labelled) + cast
    outputs = fp32_outputs * tensor_bytes(rows_tokens * FP32_BYTES) + bool_outputs * tensor_bytes(rows_tokens)
    forward_peak = compact + tile + FORWARD_STATISTICS * per_token
    saved = compact + SAVED_STATISTICS * per_token + outputs
    # backward returns grad_hidden.to(hidden.dtype) and grad_weight.to(weight.dtype) (copies unless fp32) while the
    # fp32 accumulators and the tile buffer are still referenced
    grad_hidden = tensor_bytes(labelled * hidden * FP32_BYTES) + _cast_bytes(labelled * hidden, flow.residual)
    grad_weight = 0
    if setup.method is Method.FULL:  # the lm_head trains
        grad_weight = tensor_bytes(spec.vocab_size * hidden * FP32_BYTES) + _cast_bytes(
            spec.vocab_size * hidden, flow.residual)
    # backward's loop rebinds `w_chunk = weight[start:end].to(compute_dtype)`: the next tile's copy is made while the
    # previous one is still bound, two copies at once when the vocabulary spans several tiles
    next_cast = cast if spec.vocab_size > HEAD_VOCAB_TILE else 0
    backward_peak = saved + grad_hidden + grad_weight + tile + next_cast + per_token
    return LogitsMemory(forward_peak_bytes=forward_peak, saved_bytes=saved, backward_peak_bytes=backward_peak)


def _cast_bytes(elements: int, dtype_bytes: int) -> int:
    """`.to(dtype)` of an fp32 tensor: a copy, unless the dtype is fp32."""
    return 0 if dtype_bytes == FP32_BYTES else tensor_bytes(elements * dtype_bytes)


def weight_tile_cast_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """`weight[start:end].to(compute_dtype)` per vocabulary tile (chunked_logprob.py forward and backward): a copy of
    one tile of the lm_head when its weight is not in the compute dtype (an fp32 head under mixed precision or
    QLoRA's k-bit preparation). It replaces autocast's whole-head copy, which the fused head never makes."""
    compute = compute_bytes(setup.precision)
    if dtype_flow(setup).residual == compute:
        return 0
    return tensor_bytes(min(spec.vocab_size, HEAD_VOCAB_TILE) * spec.hidden_size * compute)


def without_head_copy(spec: ModelSpec, setup: TrainingSetup, copies: AutocastCopies) -> AutocastCopies:
    """autocast's weight copies with the lm_head's taken out: TRL's fused head casts its weight a tile at a time
    (weight_tile_cast_bytes), never through autocast."""
    head = released_lm_head_copy_bytes(spec, setup)
    return copies.model_copy(update={"forward_bytes": copies.forward_bytes - head,
                                     "loss_backward_bytes": copies.loss_backward_bytes - head})
