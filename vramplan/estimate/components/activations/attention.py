"""Attention's activations: SDPA's saved tensors, the masks a model builds (sliding window, packing), eager attention's
s x s scores, and DeepSeek's multi-head latent attention."""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import Flow, dtype_flow
from vramplan.estimate.dtypes import ALLOCATION_GRANULE_BYTES, BOOL_BYTES, FP32_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import Attention, TrainingSetup


def sdpa_saved(spec: ModelSpec, setup: TrainingSetup, flow: Flow, tokens: int, masked: bool) -> list[int]:
    """SDPA (CUDA flash / efficient, CPU flash) saves q after RoPE, k, v, the output and an fp32 logsumexp per head.

    Without a mask transformers passes k and v with their own (fewer) heads and `enable_gqa=True`; with one,
    `use_gqa_in_sdpa` is false, so `repeat_kv` widens k and v to every query head, and SDPA also saves the mask,
    converted to the query dtype at full batch size (ATen `convert_boolean_attn_mask`), b x s x s
    (transformers integrations/sdpa_attention.py; traced in validation/matrix.toml's sliding-window cases).
    """
    if setup.attn is Attention.EAGER:
        return eager_saved_bytes(spec, setup, flow.compute, tokens)
    q, kv, sdpa = spec.q_size, spec.kv_size, flow.compute
    if masked:  # k and v widened to every query head, and the mask
        k, v, mask = q, q, [tensor_bytes(tokens * setup.seq_len * sdpa)]
    else:
        # Phi-3 slices v out of the fused qkv_proj output, so SDPA's saved v keeps that whole tensor alive, unless
        # autocast casts v for SDPA (a Linear4bit returns fp32 under k-bit preparation), which makes v its own copy.
        shares_qkv = spec.fused_projections and flow.linear_out == sdpa
        k, v, mask = kv, q + 2 * kv if shares_qkv else kv, []
    logsumexp = tensor_bytes(tokens * spec.num_heads * FP32_BYTES)
    return [tensor_bytes(tokens * width * sdpa) for width in (q, k, v, q)] + [logsumexp, *mask]  # q, k, v, output


def masked_layer_ids(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, ...]:
    """Layers whose SDPA gets an explicit mask: sliding-window layers once the sequence reaches the window
    (transformers masking_utils._ignore_causal_mask_sdpa keeps the mask when kv_length >= local_attention_size);
    every layer when sequences are packed (create_causal_mask adds packed_sequence_mask_function and turns
    allow_is_causal_skip off). flash_attention_2 takes the window and packed positions (varlen) in the kernel: none."""
    if setup.attn is Attention.FLASH:
        return ()
    if setup.packing:
        return tuple(range(spec.num_layers))
    if spec.sliding_window is None or setup.seq_len < spec.sliding_window:
        return ()
    return spec.sliding_layer_ids


def masked_attention_layers(spec: ModelSpec, setup: TrainingSetup) -> int:
    return len(masked_layer_ids(spec, setup))


def model_mask_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The bool masks the model builds once, alive through forward and backward: the sliding-window one (1 x 1 x s x
    s); with packing one per batch row (b x 1 x s x s, the packed-sequence ids differ by row) for each attention kind
    (full, and sliding where the model has it)."""
    if setup.attn is Attention.EAGER:
        return eager_mask_bytes(spec, setup, dtype_flow(setup).compute)
    if not masked_attention_layers(spec, setup):
        return 0
    if setup.packing:
        kinds = 2 if spec.sliding_window is not None and spec.sliding_layer_ids else 1
        return kinds * tensor_bytes(setup.batch_size * setup.seq_len * setup.seq_len * BOOL_BYTES)
    return tensor_bytes(setup.seq_len * setup.seq_len * BOOL_BYTES)


# Eager attention (`--attn eager`, transformers' eager_attention_forward): the s x s scores materialised.
# modeling_llama.py eager_attention_forward: k and v are repeated to every head (repeat_kv copies them under GQA);
# `matmul(q, k^T) * scaling + mask` gives the scores in the compute dtype; softmax runs in fp32 and is cast back
# (`softmax(..., dtype=float32).to(query.dtype)`); dropout (p = 0 in training configs) returns its input; the
# product with v follows. Autograd keeps q, the repeated k and v, softmax's fp32 output and the 16-bit
# probabilities: b x heads x s x s, 6 bytes per element with bf16 compute. The model builds one additive mask in the
# compute dtype (masking_utils.eager_mask: b x 1 x s x s) for every layer.


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
# From our trace (tiny-llama-v512, b=2, s=512: validation/matrix.toml's tiny-llama-v512-*-eager cases, held by
# tests/measure/test_trace_crosscheck.py).
SOFTMAX_BACKWARD_NET_BYTES_CHECKPOINTED = 4
SOFTMAX_BACKWARD_NET_BYTES = 6


def eager_backward_transient_bytes(spec: ModelSpec, setup: TrainingSetup, compute: int) -> int:
    """softmax's backward in the top layer of a kind (see SOFTMAX_BACKWARD_NET_BYTES)."""
    per_element = SOFTMAX_BACKWARD_NET_BYTES_CHECKPOINTED if setup.gradient_checkpointing else SOFTMAX_BACKWARD_NET_BYTES
    return tensor_bytes(scores_elements(spec, setup) * per_element)


# DeepSeek multi-head latent attention (transformers DeepseekV3Attention), tensor by tensor; confirmed against our
# trace of the real code (validation/matrix.toml, tiny-deepseek-v3 cases).


# aten _scaled_dot_product_efficient_attention returns a philox seed and offset (0-d int64 tensors) that its
# backward keeps: one 512-byte block each.
EFFICIENT_ATTENTION_RNG_BLOCKS = 2


def mla_saved_bytes(
    spec: ModelSpec, tokens: int, compute: int, linear_out: int, weights_train: bool, residual: int
) -> list[int]:
    """What one MLA attention keeps for backward, LoRA copies aside.

    - q_a_layernorm and kv_a_layernorm (RMSNorm over q_lora_rank / kv_lora_rank): the fp32 input and rsqrt;
    - `torch.cat((q_pass, q_rot))` and the `new_empty` keys, [T, heads x (nope + rope)] each, saved by SDPA;
    - the values SDPA saves, a split view of kv_b_proj's output [T, heads x (nope + v)], which stays whole;
    - SDPA (CUDA's memory-efficient kernel: the value head dim differs from the query's): output
      [T, heads x v], fp32 logsumexp [T, heads], philox seed and offset.
    When the projections return a wider dtype than autocast's (a Linear4bit returns its fp32 input's dtype under
    k-bit preparation), autocast casts q, k and v for SDPA, which then saves those copies (v alone, not
    kv_b_proj's whole output). When the weights train, q_b_proj and kv_b_proj keep their (normalised) inputs and
    both norms their outputs.
    """
    mla, heads = spec.mla, spec.num_heads
    saved: list[int] = []
    ranks = [mla.kv_lora_rank] if mla.q_lora_rank is None else [mla.q_lora_rank, mla.kv_lora_rank]
    for rank in ranks:
        saved += [tensor_bytes(tokens * rank * FP32_BYTES), tensor_bytes(tokens * FP32_BYTES)]
        if weights_train:
            saved += [tensor_bytes(tokens * rank * compute), tensor_bytes(tokens * rank * residual)]
    kv_b_out = heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    values = spec.v_size if linear_out != compute else kv_b_out
    saved += [
        tensor_bytes(tokens * values * compute),
        tensor_bytes(tokens * spec.q_size * compute),
        tensor_bytes(tokens * spec.kv_size * compute),
        tensor_bytes(tokens * spec.attn_out_size * compute),
        tensor_bytes(tokens * heads * FP32_BYTES),
        EFFICIENT_ATTENTION_RNG_BLOCKS * ALLOCATION_GRANULE_BYTES,
    ]
    return saved
