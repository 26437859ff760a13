"""Eager attention (`--attn eager`, transformers' eager_attention_forward): the s x s scores materialised.

modeling_llama.py eager_attention_forward: k and v are repeated to every head (repeat_kv copies them under GQA);
`matmul(q, k^T) * scaling + mask` gives the scores in the compute dtype; softmax runs in fp32 and is cast back
(`softmax(..., dtype=float32).to(query.dtype)`); dropout (p = 0 in training configs) returns its input; the
product with v follows. Autograd keeps q, the repeated k and v, softmax's fp32 output and the 16-bit
probabilities: b x heads x s x s, 6 bytes per element with bf16 compute. The model builds one additive mask in the
compute dtype (masking_utils.eager_mask: b x 1 x s x s) for every layer.
"""

from __future__ import annotations

from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


def scores_elements(spec: ModelSpec, setup: TrainingSetup) -> int:
    """b x heads x s x s: one attention-probability tensor of a layer."""
    return setup.batch_size * spec.num_heads * setup.seq_len * setup.seq_len


def eager_saved_bytes(spec: ModelSpec, setup: TrainingSetup, compute: int, tokens: int) -> list[int]:
    """Tensors one layer's eager attention keeps for backward."""
    scores = scores_elements(spec, setup)
    heads_wide = spec.q_size  # repeat_kv widens k and v to every query head (a copy when kv heads < heads)
    k_kept = heads_wide if spec.num_kv_heads < spec.num_heads else spec.kv_size
    v_kept = spec.num_heads * (spec.v_size // spec.num_kv_heads) if spec.num_kv_heads < spec.num_heads else spec.v_size
    return [
        tensor_bytes(tokens * spec.q_size * compute),  # q, saved by matmul(q, k^T)
        tensor_bytes(tokens * k_kept * compute),  # repeated k
        tensor_bytes(scores * FP32_BYTES),  # softmax's fp32 output, saved by its backward
        tensor_bytes(scores * compute),  # the probabilities cast back, saved by matmul(p, v)
        tensor_bytes(tokens * v_kept * compute),  # repeated v
    ]


def eager_mask_bytes(spec: ModelSpec, setup: TrainingSetup, compute: int) -> int:
    """masking_utils.eager_mask: the additive float mask, b x 1 x s x s in the compute dtype."""
    return tensor_bytes(setup.batch_size * setup.seq_len * setup.seq_len * compute)


def eager_forward_transient_bytes(spec: ModelSpec, setup: TrainingSetup, compute: int) -> int:
    """While softmax runs: its input (the masked scores) and the fp32 cast softmax makes of it
    (F.softmax(dtype=float32) converts the input first), beside the output it keeps."""
    scores = scores_elements(spec, setup)
    return tensor_bytes(scores * compute) + tensor_bytes(scores * FP32_BYTES)


# Net bytes per b x heads x s x s element that softmax's backward adds beyond what the layer keeps (the 16-bit
# probabilities already released): the `.to(query.dtype)` backward's fp32 gradient and _softmax_backward_data's fp32
# output, with, without checkpointing, the 16-bit gradient of the probabilities still referenced by the engine.
# From our trace (tiny-llama-v512, b=2, s=512: tests/estimate/test_eager.py holds the estimate to it).
SOFTMAX_BACKWARD_NET_BYTES_CHECKPOINTED = 4
SOFTMAX_BACKWARD_NET_BYTES = 6


def eager_backward_transient_bytes(spec: ModelSpec, setup: TrainingSetup, compute: int) -> int:
    """softmax's backward in the top layer of a kind (see SOFTMAX_BACKWARD_NET_BYTES)."""
    per_element = SOFTMAX_BACKWARD_NET_BYTES_CHECKPOINTED if setup.gradient_checkpointing else SOFTMAX_BACKWARD_NET_BYTES
    return tensor_bytes(scores_elements(spec, setup) * per_element)
