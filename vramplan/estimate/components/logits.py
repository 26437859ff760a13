"""The logits and cross-entropy term in each variant: the Hugging Face stacks' full logits (lm_head output,
transformers' fp32 upcast, log-softmax and its gradient), torchtune's chunked (CEWithChunkedOutputLoss) and unchunked
loss, and `--loss fused`, Liger's fused linear cross-entropy, whose chunked logits replace the full ones."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.errors import NotModelledError
from vramplan.estimate.components.activations.flow import dtype_flow
from vramplan.estimate.components.activations.liger import final_norm_backward_bytes as liger_final_norm_backward
from vramplan.estimate.dtypes import BOOL_BYTES, FP32_BYTES, HALF_BYTES, autocast_on, compute_bytes, tensor_bytes
from vramplan.estimate.scope import refuse_unmodelled_fused
from vramplan.models.spec import ModelSpec
from vramplan.training import Loss, Method, TrainingSetup

# modules/loss/ce_chunked_output_loss.py: CEWithChunkedOutputLoss(num_output_chunks=8).
NUM_OUTPUT_CHUNKS = 8
# measured: tests/estimate/test_torchtune.py (see chunked_head_backward_bytes): the output weight's gradient exists
# three times over when the second chunk's is added, two chunks into the head's backward.
HEAD_GRADIENT_COPIES = 3
# A tied output's gradient and the embedding's at the end of backward (input_buffer.cpp accumulate): with chunked
# output the buffered gradient is the chunks' out-of-place sum, a tensor the buffer alone holds, and the embedding's
# is added into it in place (two copies); unchunked it is the output matmul's transposed view, summed out of place
# (three). Traced: tests/estimate/test_torchtune.py (qwen2-tied cases).
TIED_END_GRADIENT_COPIES = {True: 2, False: 3}  # chunked output -> copies
HEAD_CHUNKS_DONE = 2
# The final RMSNorm's backward, where a fused loss's backward peaks: its saved fp32 input and five fp32 hidden-state
# buffers (the upcast gradient, the normalisation's gradients and their reduction temporaries). Count from our
# trace (validation/matrix.toml tiny-llama-full-fused).
FINAL_NORM_BACKWARD_FP32_BUFFERS = 6


class LogitsMemory(BaseModel):
    """Peak bytes of the loss computation on top of what the layers keep, in forward and in backward."""

    forward_peak_bytes: int
    saved_bytes: int
    backward_peak_bytes: int


def logits_memory(spec: ModelSpec, setup: TrainingSetup) -> LogitsMemory:
    """The Hugging Face stacks' standard loss: the full b x s x V logits."""
    tokens = setup.tokens_per_step
    width = compute_bytes(setup.precision)
    logits = tensor_bytes(tokens * spec.vocab_size * width)
    fp32 = tensor_bytes(tokens * spec.vocab_size * FP32_BYTES)
    # transformers loss_utils.ForCausalLMLoss: `logits = logits.float()` (a copy unless already fp32).
    upcast = fp32 if width != FP32_BYTES else 0
    # cross_entropy = log_softmax + nll_loss; log_softmax keeps its fp32 output for backward.
    log_softmax = fp32
    # accelerate convert_outputs_to_fp32 (Trainer with bf16/fp16=True) copies the returned logits to fp32.
    accelerate_copy = fp32 if autocast_on(setup) else 0
    forward_peak = logits + max(upcast + log_softmax, log_softmax + accelerate_copy)
    # Backward of the loss: nll_loss_backward's fp32 grad and _log_softmax_backward_data's output next to the
    # saved log-softmax; the returned logits are gone by then.
    backward_peak = log_softmax + 2 * fp32
    return LogitsMemory(forward_peak_bytes=forward_peak, saved_bytes=log_softmax, backward_peak_bytes=backward_peak)


def torchtune_logits_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """torchtune: (forward peak of the output head and loss, peak of the loss's backward).

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


def chunked_head_backward_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """torchtune full fine-tuning, the output head's backward, after every chunk's cross-entropy backward (autograd
    runs those first: they were created last). The output weight's gradients from the chunks are summed in
    autograd's input buffer before AccumulateGrad runs (so the optimizer_in_bwd hook fires once). The first chunk's
    arrives as a transposed view of mm's [h, V] result, which input_buffer.cpp's accumulate does not add into (torch
    takes `old + new` for it: tests/measure/test_gradient_accumulation.py), so the second is added out of place: that
    chunk's mm output, the buffered first one and their sum exist at once (HEAD_GRADIENT_COPIES, counted with the
    gradients), next to the other chunks' bf16 logits gradients and two chunks' gradients of the head input
    (returned here)."""
    tokens, chunks = setup.tokens_per_step, NUM_OUTPUT_CHUNKS
    logits_grad = tensor_bytes(tokens // chunks * spec.vocab_size * HALF_BYTES)
    input_grad = tensor_bytes(tokens // chunks * spec.hidden_size * HALF_BYTES)
    return (chunks - HEAD_CHUNKS_DONE) * logits_grad + HEAD_CHUNKS_DONE * input_grad


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def chunk_tokens(tokens: int, hidden: int, vocab: int) -> int:
    """Liger: tokens per chunk, so that the chunk's logits stay within about tokens x hidden elements."""
    # fused_linear_cross_entropy_forward: inc_factor = cdiv(V, chunk_mem_const * H), chunk_mem_const = 1
    inc_factor = -(-vocab // hidden)
    # chunk_size = next_power_of_2(cdiv(BT, inc_factor)), never more than BT
    return min(next_power_of_2(-(-tokens // inc_factor)), tokens)


def fused_loss_assumption(spec: ModelSpec, setup: TrainingSetup) -> str:
    chunk = chunk_tokens(setup.tokens_per_step, spec.hidden_size, spec.vocab_size)
    return (
        f"fused loss: Liger's fused linear cross-entropy (liger-kernel 0.8.5), logits {chunk} tokens at a time; "
        "cut-cross-entropy is counted the same way"
    )


def _fused_chunk_temporary(spec: ModelSpec, setup: TrainingSetup, chunk: int, width: int, grad_weight: int) -> int:
    """What one chunk's matmuls allocate beside the chunk's logits."""
    tokens, hidden, vocab = setup.tokens_per_step, spec.hidden_size, spec.vocab_size
    lm_head_trains = setup.method is Method.FULL
    compute = compute_bytes(setup.precision)
    if autocast_on(setup) and width != compute:
        # fp32 hidden states under autocast: `_input_chunk @ weight.t()` casts the chunk and the weight. autocast
        # caches the cast of a leaf that requires grad (counted in autocast_weight_copies, made by the chunk's
        # `grad_logits_chunk @ weight`) but not of the view `weight.t()`: from the second chunk on, a trained
        # lm_head has a second low-precision copy alive while each chunk's logits are made.
        second_copy = lm_head_trains and chunk < tokens
        return tensor_bytes(chunk * hidden * compute) + (tensor_bytes(vocab * hidden * compute) if second_copy else 0)
    if lm_head_trains and width == FP32_BYTES:
        # fp32 without autocast: the fallback `grad_weight += torch.mm(grad_logits_chunk.t(), _input_chunk).float()`.
        return grad_weight
    # bf16 weights: grad_input and grad_weight are written in place (torch.mm/addmm with out=).
    return 0


def fused_loss_memory(spec: ModelSpec, setup: TrainingSetup) -> LogitsMemory:
    """Peak bytes of liger's fused linear cross-entropy on top of the layers' saved tensors.

    liger_kernel/ops/fused_linear_cross_entropy.py `fused_linear_cross_entropy_forward` runs lm_head and the loss a
    chunk of tokens at a time and computes the input's and lm_head's gradients during the forward, so the b x s x V
    logits never exist. Each allocation below is liger's (traced by running liger's own code on fake tensors:
    vramplan/measure/liger_loss.py; estimate against that trace: tests/estimate/test_fused_loss.py).
    """
    refuse_unmodelled_fused(setup)
    tokens, hidden, vocab = setup.tokens_per_step, spec.hidden_size, spec.vocab_size
    width = dtype_flow(setup).residual  # the final norm's output: liger's `_input`, and lm_head's dtype
    lm_head_trains = setup.method is Method.FULL
    # grad_input = torch.zeros_like(_input): BT x H, kept from the forward for backward.
    grad_input = tensor_bytes(tokens * hidden * width)
    # grad_weight = torch.zeros_like(weight) when lm_head trains; backward hands it to autograd as lm_head's .grad.
    grad_weight = tensor_bytes(vocab * hidden * width) if lm_head_trains else 0
    # loss_1d = torch.zeros(BT, dtype=float32); target_mask = target != ignore_index (bool).
    per_token = tensor_bytes(tokens * FP32_BYTES) + tensor_bytes(tokens * BOOL_BYTES)
    # logits_storage = torch.empty((chunk_size, V)) (`_can_use_mm_out` on CUDA: the hidden states already in the
    # matmul dtype): one chunk's logits, which the cross-entropy kernel overwrites with their gradient.
    chunk = chunk_tokens(tokens, hidden, vocab)
    logits_chunk = tensor_bytes(chunk * vocab * compute_bytes(setup.precision))
    stored = grad_input + grad_weight
    forward_peak = stored + per_token + logits_chunk + _fused_chunk_temporary(spec, setup, chunk, width, grad_weight)
    # fused_linear_cross_entropy_backward only scales the stored gradients in place (element_mul_kernel); grad_input
    # then runs through the final norm's backward while grad_weight waits as lm_head's gradient.
    norm_backward = FINAL_NORM_BACKWARD_FP32_BUFFERS * tensor_bytes(tokens * hidden * FP32_BYTES)
    if setup.liger:
        norm_backward = liger_final_norm_backward(tokens, hidden, width, lm_head_trains)
    return LogitsMemory(
        forward_peak_bytes=forward_peak, saved_bytes=stored, backward_peak_bytes=grad_weight + norm_backward
    )
