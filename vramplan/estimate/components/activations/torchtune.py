"""What torchtune's modules keep for backward (torchtune 0.6.1 single-device recipes): TransformerSelfAttentionLayer
(RMSNorm fp32 inside, MultiHeadAttention with RoPE in fp32 and GQA keys/values expanded to every head,
F.scaled_dot_product_attention, FeedForward w2(silu(w1 x) * w3 x), LoRALinear), the final norm, activation
offloading, and the gradients in flight in a layer's backward. Everything is bf16. Checked against
vramplan/measure/torchtune_step.py, which runs torchtune's own modules (tests/estimate/test_torchtune.py).
"""

from __future__ import annotations

from vramplan.estimate.dtypes import BOOL_BYTES, FP32_BYTES, HALF_BYTES, tensor_bytes
from vramplan.estimate.lora_targets import MLP_NAMES, lora_plan
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup


# training/_activation_offloading.py OffloadActivations: max_fwd_stash_size=5 (saved tensors kept on the GPU
# after their copy to the host starts), min_offload_size=1024 bytes.
OFFLOAD_FWD_STASH = 5
# measured: tests/estimate/test_torchtune.py. During a layer's backward (after recomputation) the gradients in
# flight: the layer output's gradient, and at the SwiGLU step the gradients of silu(w1 x) and w3 x next to the
# product's (2 B/value each) plus the fp32 gradient of the norm's input.
SWIGLU_BACKWARD_GRADS = 3
# measured: tests/estimate/test_torchtune.py (see offload_recompute_bytes): the residual stream and the gradients
# in flight during the top layer's recomputation under activation offloading, in b x s x h bf16 tensors.
OFFLOAD_RECOMPUTE_HIDDEN = 4


def layer_saved_bytes(spec: ModelSpec, setup: TrainingSetup, first: bool) -> int:
    """What one TransformerSelfAttentionLayer keeps for backward (all of it during recomputation)."""
    tokens = setup.tokens_per_step
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    full = setup.method is Method.FULL
    adapted = lora_plan(setup).adapted if not full else set()
    # lora_a keeps its input x itself only without dropout; with dropout it keeps its own dropped copy instead.
    by_lora = adapted if setup.lora is not None and setup.lora.dropout == 0 else set()
    input_grad = full or not first  # a LoRA model's first layer input (the frozen embedding) needs no gradient
    saved = 0

    def norm(output_kept: bool) -> int:
        return norm_saved_bytes(spec, setup, output_kept)

    qkv_input = full or bool(by_lora & {"q_proj", "k_proj", "v_proj"})
    # lora_a needs its input even where the layer's input needs no gradient (LoRA's first layer).
    saved += norm(qkv_input) if input_grad else (tensor_bytes(tokens * h * HALF_BYTES) if qkv_input else 0)
    # attention.py: q after RoPE (bf16), k and v expanded to every head when n_kv < n_heads (`flatten` copies);
    # SDPA (flash) keeps q, k, v, its output (bf16) and the fp32 logsumexp [b, heads, s].
    kv_kept = q if spec.num_heads != spec.num_kv_heads else kv
    saved += 2 * tensor_bytes(tokens * q * HALF_BYTES) + 2 * tensor_bytes(tokens * kv_kept * HALF_BYTES)
    saved += tensor_bytes(tokens * spec.num_heads * FP32_BYTES)
    # The attention output feeds output_proj without a copy (`.contiguous()` of flash's [b, s, heads, d] output).
    saved += norm(full or bool(by_lora & set(MLP_NAMES)))
    # feed_forward.py: w1 x (silu's input), silu(w1 x), w3 x, and their product (w2's input).
    saved += 3 * tensor_bytes(tokens * inter * HALF_BYTES)
    saved += tensor_bytes(tokens * inter * HALF_BYTES) if product_saved(setup) else 0
    saved += _lora_saved(spec, setup, adapted)
    return saved


def product_saved(setup: TrainingSetup) -> bool:
    """w2's input silu(w1 x) * w3 x is kept when w2's weight trains, or by w2's lora_a (without dropout)."""
    if setup.method is Method.FULL:
        return True
    return lora_plan(setup).mlp and setup.lora.dropout == 0


def norm_saved_bytes(spec: ModelSpec, setup: TrainingSetup, output_kept: bool) -> int:
    """modules/rms_norm.py: F.rms_norm(x.float(), weight=bf16 scale) takes aten's composite path (input and weight
    dtypes differ, aten/src/ATen/native/layer_norm.cpp rms_norm_symint), which keeps the fp32 copy and the fp32
    rstd [b, s, 1], plus the fp32 normalised x for the scale's gradient when the scale trains (full fine-tuning);
    `.to(x.dtype)` makes the bf16 output, kept by the linears that need their input."""
    tokens, h = setup.tokens_per_step, spec.hidden_size
    kept = tensor_bytes(tokens * h * FP32_BYTES) + tensor_bytes(tokens * FP32_BYTES)
    if setup.method is Method.FULL:
        kept += tensor_bytes(tokens * h * FP32_BYTES)
    return kept + (tensor_bytes(tokens * h * HALF_BYTES) if output_kept else 0)


def _lora_saved(spec: ModelSpec, setup: TrainingSetup, adapted: set[str]) -> int:
    """modules/peft/lora.py LoRALinear.forward: lora_b(lora_a(dropout(x))) keeps lora_a's output (r values per
    token); with dropout each adapted linear keeps its own dropped copy of x and the bool mask (native_dropout)."""
    tokens, rank = setup.tokens_per_step, setup.lora.rank if setup.lora else 0
    total = 0
    for lin in spec.attention_linears + spec.dense_mlp_linears:
        if lin.name not in adapted:
            continue
        total += tensor_bytes(tokens * rank * HALF_BYTES)
        if setup.lora.dropout > 0:
            dropped = tokens * lin.in_features
            total += tensor_bytes(dropped * HALF_BYTES) + tensor_bytes(dropped * BOOL_BYTES)
    return total


def hidden_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    return tensor_bytes(setup.tokens_per_step * spec.hidden_size * HALF_BYTES)


def final_norm_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The final RMSNorm; its bf16 output is the output head's input, kept (below) only in full fine-tuning."""
    return norm_saved_bytes(spec, setup, output_kept=False)


def kept_through_forward(spec: ModelSpec, setup: TrainingSetup, saved: list[int]) -> int:
    """What the layers hold at the end of forward, `saved` being each layer's saved bytes."""
    if setup.activation_offload:
        # Layer inputs go to host memory; of the last OFFLOAD_FWD_STASH saved tensors still referenced at the end
        # of forward (the last layer's input, the final norm's two, its scale) one is a layer input.
        return hidden_bytes(spec, setup)
    if setup.gradient_checkpointing:
        return spec.num_layers * hidden_bytes(spec, setup)  # non-reentrant checkpointing keeps each layer's input
    return sum(saved)


def offloaded_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Activation offloading: the layer inputs and the final norm's tensors in host memory."""
    if not setup.activation_offload:
        return 0
    return spec.num_layers * hidden_bytes(spec, setup) + final_norm_bytes(spec, setup)


def swiglu_backward_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(released, in flight) at the SwiGLU step of a layer's backward. Under recomputation w2's input (the
    product) is already released there; without checkpointing it is still held (measured:
    tests/estimate/test_torchtune.py). In flight: the layer output's gradient and SWIGLU_BACKWARD_GRADS."""
    mlp_value = tensor_bytes(setup.tokens_per_step * spec.intermediate_size * HALF_BYTES)
    released = mlp_value if setup.gradient_checkpointing and product_saved(setup) else 0
    return released, hidden_bytes(spec, setup) + SWIGLU_BACKWARD_GRADS * mlp_value


def offload_recompute_bytes(spec: ModelSpec, setup: TrainingSetup, top_saved: int) -> tuple[int, int]:
    """(activations beyond the batch, temporaries) at the top layer's recomputation under activation offloading,
    at `h * self.w3(x)` (measured: tests/estimate/test_torchtune.py). OffloadActivations keeps each tensor it brings
    back in its backward stash until the next node that brings one back has ended, so the final norm's fp32 input
    (brought back for the norm's backward) is still on the GPU with the layer's own input while the layer is
    recomputed. The recomputation has made all it keeps (`top_saved`) except w2's input (the product), plus w3's
    transient base and LoRA outputs when the MLP is adapted; the residual stream and the gradients in flight are
    OFFLOAD_RECOMPUTE_HIDDEN b x s x h tensors."""
    hidden = hidden_bytes(spec, setup)
    mlp_value = tensor_bytes(setup.tokens_per_step * spec.intermediate_size * HALF_BYTES)
    adapted_mlp = setup.lora is not None and lora_plan(setup).mlp
    product = mlp_value if product_saved(setup) else 0
    w3_transients = 2 * mlp_value if adapted_mlp else 0
    fp32_norm_input = tensor_bytes(setup.tokens_per_step * spec.hidden_size * FP32_BYTES)
    return top_saved - product + w3_transients + hidden, fp32_norm_input + OFFLOAD_RECOMPUTE_HIDDEN * hidden
