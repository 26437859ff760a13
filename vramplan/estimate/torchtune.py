"""`--stack torchtune`: one GPU's peak for torchtune's single-device recipes (lora_finetune_single_device.py,
full_finetune_single_device.py, torchtune 0.6.1), from the rules of its modules.

Everything is bf16 (the recipes' `dtype: bf16`, adapters included). Each decoder layer is
TransformerSelfAttentionLayer: RMSNorm (fp32 inside), MultiHeadAttention (RoPE in fp32, GQA keys/values expanded
to every head, F.scaled_dot_product_attention), RMSNorm, FeedForward (w2(silu(w1 x) * w3 x)). The loss is
CEWithChunkedOutputLoss over `num_output_chunks` logits chunks, or CrossEntropyLoss on the fp32 logits.
Checked against vramplan/measure/torchtune_step.py, which runs torchtune's own modules (tests/estimate/
test_torchtune.py).
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.peak import estimate_from_phases
from vramplan.result import Estimate, PhasePeak
from vramplan.estimate.dtypes import BOOL_BYTES, FP32_BYTES, HALF_BYTES, INT64_BYTES, tensor_bytes
from vramplan.estimate.torchtune_states import (
    MLP_NAMES,
    lora_plan,
    model_state,
    quantized_linears,
    refuse_unmodelled_family,
)
from vramplan.errors import NotModelledError
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.training import Attention, Loss, Method, Optimizer, Precision, Strategy, TrainingSetup

# modules/loss/ce_chunked_output_loss.py: CEWithChunkedOutputLoss(num_output_chunks=8).
NUM_OUTPUT_CHUNKS = 8
# training/_activation_offloading.py OffloadActivations: max_fwd_stash_size=5 (saved tensors kept on the GPU
# after their copy to the host starts), min_offload_size=1024 bytes.
OFFLOAD_FWD_STASH = 5
# measured: tests/estimate/test_torchtune.py. During a layer's backward (after recomputation) the gradients in
# flight: the layer output's gradient, and at the SwiGLU step the gradients of silu(w1 x) and w3 x next to the
# product's (2 B/value each) plus the fp32 gradient of the norm's input.
SWIGLU_BACKWARD_GRADS = 3
# measured: tests/estimate/test_torchtune.py. torchao NF4Tensor.get_original_weight (linear_nf4's
# `weight.to(bf16)`, in forward and again in backward) unpacks the nibbles into two int64 index tensors and
# dequantizes them before the bf16 weight exists: about 6 B per value of the weight at its peak.
NF4_DEQUANT_BYTES_PER_VALUE = 6
# measured: tests/estimate/test_torchtune.py (see _head_backward_point): the output weight's gradient exists three
# times over when the second chunk's is added, two chunks into the head's backward.
HEAD_GRADIENT_COPIES = 3
HEAD_CHUNKS_DONE = 2
# measured: tests/estimate/test_torchtune.py (see _offload_recompute_point): the residual stream and the gradients
# in flight during the top layer's recomputation under activation offloading, in b x s x h bf16 tensors.
OFFLOAD_RECOMPUTE_HIDDEN = 4
# The fused AdamW (torch/optim/adamw.py _fused_adamw) and the foreach one are modelled by estimate/optimizer.py.
MODELLED_OPTIMIZERS = (Optimizer.ADAMW_FUSED, Optimizer.ADAMW)


def refuse_unmodelled_torchtune(spec: ModelSpec, setup: TrainingSetup) -> None:
    refuse_unmodelled_family(spec)
    if setup.precision is not Precision.BF16:
        raise NotModelledError(
            f"--stack torchtune trains in pure bf16; --precision {setup.precision.value} is not modelled"
        )
    if setup.optimizer not in MODELLED_OPTIMIZERS:
        raise NotModelledError(
            f"--stack torchtune with --optimizer {setup.optimizer.value} is not modelled; use adamw-fused or adamw"
        )
    if setup.strategy is not Strategy.SINGLE:
        raise NotModelledError("--stack torchtune is modelled for the single-device recipes only")
    if setup.packing or setup.liger or setup.attn is not Attention.SDPA:
        raise NotModelledError("--stack torchtune with --packing, --liger or --attn other than sdpa is not modelled")
    if setup.activation_offload and not setup.gradient_checkpointing:
        raise NotModelledError("torchtune refuses enable_activation_offloading without activation checkpointing")
    if setup.lora is not None:
        lora_plan(setup)


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


def logits_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(forward peak of the output head and loss, peak of the loss's backward).

    The backward peak is at its first step: the kept fp32 log-softmax plus nll_loss_backward's and
    _log_softmax_backward_data's fp32 outputs for one chunk (all the logits when unchunked)."""
    tokens, vocab = setup.tokens_per_step, spec.vocab_size
    if setup.loss is Loss.CHUNKED:
        chunk = tokens // NUM_OUTPUT_CHUNKS * vocab
        bf16 = NUM_OUTPUT_CHUNKS * tensor_bytes(chunk * HALF_BYTES)
        log_probs = NUM_OUTPUT_CHUNKS * tensor_bytes(chunk * FP32_BYTES)
        # transformer.py chunked_output: every chunk's bf16 logits exist before the loss runs; the loss upcasts one
        # chunk at a time (`logits.float()`), and cross_entropy keeps each chunk's fp32 log-softmax.
        return bf16 + log_probs + tensor_bytes(chunk * FP32_BYTES), log_probs + 2 * tensor_bytes(chunk * FP32_BYTES)
    if setup.loss is Loss.STANDARD:
        bf16 = tensor_bytes(tokens * vocab * HALF_BYTES)
        fp32 = tensor_bytes(tokens * vocab * FP32_BYTES)
        # transformer.py unembed: `self.output(h).float()`; the recipe's loss then keeps the log-softmax while the
        # fp32 logits are still referenced (`del logits` comes after the loss).
        return max(bf16 + fp32, 2 * fp32), 3 * fp32
    raise NotModelledError(f"--stack torchtune with --loss {setup.loss.value} is not modelled")


class _Step(BaseModel):
    """What the peak candidates of one step share."""

    persistent: dict[str, int]
    hidden: int  # one b x s x h bf16 tensor
    saved: list[int]  # each layer's saved bytes
    kept_forward: int  # what the layers hold at the end of forward
    head: int  # final norm, the output head's kept input, the batch (shifted labels included)
    batch: int


def estimate_torchtune(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    refuse_unmodelled_torchtune(spec, setup)
    state = model_state(spec, model.config, setup)
    step = _step(spec, setup, state)
    phases = [_forward_peak(spec, setup, step), _backward_peak(spec, setup, state, step)]
    if not setup.optimizer_in_backward:
        phases.append(PhasePeak(phase="optimizer", components={
            **step.persistent,
            "gradients": state.gradients,
            "optimizer_temporaries": state.optimizer_temporaries,
            "activations": step.batch,
        }))
    return estimate_from_phases(
        model, setup, phases, total_params=state.total_params, trainable_params=state.trainable_params,
        host_bytes=_offloaded_bytes(spec, setup), notes=_notes(setup),
    )


def _step(spec: ModelSpec, setup: TrainingSetup, state) -> _Step:
    hidden = hidden_bytes(spec, setup)
    saved = [layer_saved_bytes(spec, setup, first=i == 0) for i in range(spec.num_layers)]
    if setup.activation_offload:
        # Layer inputs go to host memory; of the last OFFLOAD_FWD_STASH saved tensors still referenced at the end
        # of forward (the last layer's input, the final norm's two, its scale) one is a layer input.
        kept_forward = hidden
    elif setup.gradient_checkpointing:
        kept_forward = spec.num_layers * hidden  # non-reentrant checkpointing keeps each layer's input
    else:
        kept_forward = sum(saved)
    batch = state.batch + tensor_bytes(setup.tokens_per_step * INT64_BYTES)  # + the shifted labels (`hstack`)
    # Full fine-tuning: the output projection keeps its (chunked) bf16 input for its weight gradient.
    head_input = hidden if setup.method is Method.FULL else 0
    return _Step(
        persistent={
            "weights": state.weights,
            "lora_adapters": state.lora_adapters,
            "optimizer_states": state.optimizer_states,
        },
        hidden=hidden,
        saved=saved,
        kept_forward=kept_forward,
        head=final_norm_bytes(spec, setup) + head_input + batch,
        batch=batch,
    )


def _forward_peak(spec: ModelSpec, setup: TrainingSetup, step: _Step) -> PhasePeak:
    loss_forward, _ = logits_bytes(spec, setup)
    forward = PhasePeak(phase="forward", components={
        **step.persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_forward,
    })
    if setup.gradient_checkpointing:
        # A checkpointed layer's forward keeps nothing; its transient is below its recomputation in backward.
        return forward
    # At the end of the last layer's forward all layers' saved tensors exist.
    last_layer = PhasePeak(phase="forward", components={**step.persistent, "activations": sum(step.saved) + step.batch})
    return max(forward, last_layer, key=lambda p: p.total_bytes)


def _backward_peak(spec: ModelSpec, setup: TrainingSetup, state, step: _Step) -> PhasePeak:
    """The largest of: the loss's backward (its first chunk), the output head's backward (full fine-tuning), and
    the top and bottom layer's backward (where it starts; its SwiGLU step)."""
    tokens, full = setup.tokens_per_step, setup.method is Method.FULL
    _, loss_backward = logits_bytes(spec, setup)
    loss = {**step.persistent, "activations": step.kept_forward + step.head, "logits_loss": loss_backward}
    points = [PhasePeak(phase="backward", components=loss)]
    if setup.loss is Loss.CHUNKED and full:
        points.append(_head_backward_point(spec, setup, state, step))
    if full and spec.tie_word_embeddings:
        # The tied matrix's gradient from the head waits in autograd's input buffer through the whole backward;
        # the embedding's gradient (embedding_dense_backward) is added to it out of place at the very end.
        layer_grads = 0 if setup.optimizer_in_backward else state.gradients - state.output_gradient
        points.append(PhasePeak(phase="backward", components={
            **step.persistent,
            "activations": step.batch,
            "gradients": layer_grads + HEAD_GRADIENT_COPIES * state.output_gradient,
        }))
    grads_at = _gradients_before_layer(spec, setup, state)
    mlp_value = tensor_bytes(tokens * spec.intermediate_size * HALF_BYTES)
    down_grad = _down_proj_gradient(spec) if full and not setup.optimizer_in_backward else 0
    for i in {spec.num_layers - 1, 0}:
        if not setup.gradient_checkpointing:
            below = sum(step.saved[:i])
        else:  # the inputs of layers 0..i (offloading: the one brought back, and the previous one still stashed)
            below = step.hidden * (2 if setup.activation_offload else i + 1)
        acts = below + step.saved[i] + step.batch
        # The SwiGLU step of the MLP backward. Under recomputation w2's input (the product) is already released
        # there; without checkpointing it is still held (measured: tests/estimate/test_torchtune.py).
        released = mlp_value if setup.gradient_checkpointing and product_saved(setup) else 0
        points.append(PhasePeak(phase="backward", components={
            **step.persistent,
            "activations": acts - released,
            "temporaries": step.hidden + SWIGLU_BACKWARD_GRADS * mlp_value + _dequant_bytes(spec, setup),
            "gradients": grads_at(i) + down_grad,
        }))
        # Where the layer's backward starts: all it saved, and the gradient of its output.
        points.append(PhasePeak(phase="backward", components={
            **step.persistent, "activations": acts, "temporaries": step.hidden, "gradients": grads_at(i),
        }))
    if setup.activation_offload:
        points.append(_offload_recompute_point(spec, setup, step))
    return max(points, key=lambda p: p.total_bytes)


def _offload_recompute_point(spec: ModelSpec, setup: TrainingSetup, step: _Step) -> PhasePeak:
    """Activation offloading: the top layer's recomputation, at `h * self.w3(x)` (measured:
    tests/estimate/test_torchtune.py). OffloadActivations keeps each tensor it brings back in its backward stash
    until the next node that brings one back has ended, so the final norm's fp32 input (brought back for the norm's
    backward) is still on the GPU with the layer's own input while the layer is recomputed. The recomputation has
    made all it keeps except w2's input (the product), plus w3's transient base and LoRA outputs when the MLP is
    adapted; the residual stream and the gradients in flight are OFFLOAD_RECOMPUTE_HIDDEN b x s x h tensors."""
    mlp_value = tensor_bytes(setup.tokens_per_step * spec.intermediate_size * HALF_BYTES)
    adapted_mlp = setup.lora is not None and lora_plan(setup).mlp
    product = mlp_value if product_saved(setup) else 0
    w3_transients = 2 * mlp_value if adapted_mlp else 0
    fp32_norm_input = tensor_bytes(setup.tokens_per_step * spec.hidden_size * FP32_BYTES)
    return PhasePeak(phase="backward", components={
        **step.persistent,
        "activations": step.saved[-1] - product + w3_transients + step.hidden + step.batch,
        "temporaries": fp32_norm_input + OFFLOAD_RECOMPUTE_HIDDEN * step.hidden,
    })


def _head_backward_point(spec: ModelSpec, setup: TrainingSetup, state, step: _Step) -> PhasePeak:
    """Full fine-tuning, the output head's backward, after every chunk's cross-entropy backward (autograd runs
    those first: they were created last). The output weight's gradients from the chunks are summed in autograd's
    input buffer before AccumulateGrad runs (so the optimizer_in_bwd hook fires once). The first chunk's arrives
    as a transposed view of mm's [h, V] result, so the second is added out of place: that chunk's mm output, the
    buffered first one and their sum exist at once (measured: tests/estimate/test_torchtune.py), next to the
    other chunks' bf16 logits gradients and two chunks' gradients of the head input."""
    tokens, chunks = setup.tokens_per_step, NUM_OUTPUT_CHUNKS
    logits_grad = tensor_bytes(tokens // chunks * spec.vocab_size * HALF_BYTES)
    input_grad = tensor_bytes(tokens // chunks * spec.hidden_size * HALF_BYTES)
    return PhasePeak(phase="backward", components={
        **step.persistent,
        "activations": step.kept_forward + step.head,
        "logits_loss": (chunks - HEAD_CHUNKS_DONE) * logits_grad + HEAD_CHUNKS_DONE * input_grad,
        "gradients": HEAD_GRADIENT_COPIES * state.output_gradient,
    })


def _gradients_before_layer(spec: ModelSpec, setup: TrainingSetup, state):
    """Gradients alive while layer i runs its backward: with optimizer_in_bwd only the one being stepped; otherwise
    the output's and final norm's, the layers above i, and (LoRA) every adapter gradient as it arrives."""
    layers = spec.num_layers

    def at(i: int) -> int:
        if setup.optimizer_in_backward:
            return 0  # each gradient is stepped and freed by its own hook before the next op runs
        above = state.gradients - state.embedding_gradient - state.output_gradient
        return state.output_gradient + above * (layers - 1 - i) // layers

    return at


def _dequant_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """QLoRA: the transient of dequantizing the largest NF4 weight (its backward needs the bf16 copy)."""
    largest = max((lin.in_features * lin.out_features for lin in quantized_linears(spec, setup)), default=0)
    return NF4_DEQUANT_BYTES_PER_VALUE * largest


def _down_proj_gradient(spec: ModelSpec) -> int:
    down = spec.dense_mlp_linears[-1]
    return tensor_bytes(down.in_features * down.out_features * HALF_BYTES)


def _offloaded_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    if not setup.activation_offload:
        return 0
    return spec.num_layers * hidden_bytes(spec, setup) + final_norm_bytes(spec, setup)


def _notes(setup: TrainingSetup) -> list[str]:
    notes = ["torchtune single-device recipe: pure bf16 (adapters too), CEWithChunkedOutputLoss (8 chunks) "
             "unless --loss standard, activation checkpointing per TransformerSelfAttentionLayer"]
    if setup.method is Method.QLORA:
        notes.append("torchao NF4 (block 64, int8 scalers in blocks of 256: always double-quantized); "
                     "--double-quant/--kbit-prep do not apply (no fp32 upcast of the other weights)")
    if setup.optimizer_in_backward:
        notes.append("optimizer_in_bwd: one AdamW per parameter, stepped as its gradient arrives")
    if setup.activation_offload:
        notes.append("activation offloading: layer inputs in host memory (host_bytes), not in the GPU peak")
    return notes
