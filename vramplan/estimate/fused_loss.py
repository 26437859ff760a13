"""`--loss fused` on the Hugging Face stacks: Liger's fused linear cross-entropy in place of lm_head + loss.

liger_kernel/ops/fused_linear_cross_entropy.py `fused_linear_cross_entropy_forward` runs lm_head and the loss a
chunk of tokens at a time and computes the input's and lm_head's gradients during the forward, so the b x s x V
logits never exist. Each allocation below is liger's (traced by running liger's own code on fake tensors:
vramplan/measure/liger_loss.py; estimate against that trace: tests/estimate/test_fused_loss.py).
"""

from __future__ import annotations

from vramplan.errors import NotModelledError
from vramplan.estimate.dtypes import BOOL_BYTES, FP32_BYTES, autocast_on, compute_bytes, tensor_bytes
from vramplan.estimate import liger
from vramplan.estimate.activations import dtype_flow
from vramplan.estimate.logits import LogitsMemory
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Strategy, TrainingSetup

# The final RMSNorm's backward, where a fused loss's backward peaks: its saved fp32 input and five fp32 hidden-state
# buffers (the upcast gradient, the normalisation's gradients and their reduction temporaries). Count from our
# trace (validation/matrix.toml tiny-llama-full-fused).
FINAL_NORM_BACKWARD_FP32_BUFFERS = 6

# Strategies whose lm_head weight is whole on each GPU when liger reads `lm_head.weight` directly.
_TRACED_STRATEGIES = (Strategy.SINGLE, Strategy.DDP)


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def chunk_tokens(tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk: the chunk's logits stay within about tokens x hidden elements."""
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


def refuse_unmodelled_fused(setup: TrainingSetup) -> None:
    """Traced: one GPU (or a DDP replica, which runs the same step)."""
    if setup.strategy not in _TRACED_STRATEGIES:
        raise NotModelledError(f"--loss fused with --strategy {setup.strategy.value} is not modelled yet")


def fused_loss_memory(spec: ModelSpec, setup: TrainingSetup) -> LogitsMemory:
    """Peak bytes of liger's fused linear cross-entropy on top of the layers' saved tensors."""
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
    compute = compute_bytes(setup.precision)
    logits_chunk = tensor_bytes(chunk * vocab * compute)
    if autocast_on(setup) and width != compute:
        # fp32 hidden states under autocast: `_input_chunk @ weight.t()` casts the chunk and the weight. autocast
        # caches the cast of a leaf that requires grad (counted in autocast_weight_copies, made by the chunk's
        # `grad_logits_chunk @ weight`) but not of the view `weight.t()`: from the second chunk on, a trained
        # lm_head has a second low-precision copy alive while each chunk's logits are made.
        second_copy = lm_head_trains and chunk < tokens
        chunk_temporary = tensor_bytes(chunk * hidden * compute) + (
            tensor_bytes(vocab * hidden * compute) if second_copy else 0
        )
    elif lm_head_trains and width == FP32_BYTES:
        # fp32 without autocast: the fallback `grad_weight += torch.mm(grad_logits_chunk.t(), _input_chunk).float()`.
        chunk_temporary = grad_weight
    else:
        # bf16 weights: grad_input and grad_weight are written in place (torch.mm/addmm with out=).
        chunk_temporary = 0
    stored = grad_input + grad_weight
    forward_peak = stored + per_token + logits_chunk + chunk_temporary
    # fused_linear_cross_entropy_backward only scales the stored gradients in place (element_mul_kernel); grad_input
    # then runs through the final norm's backward while grad_weight waits as lm_head's gradient.
    norm_backward = FINAL_NORM_BACKWARD_FP32_BUFFERS * tensor_bytes(tokens * hidden * FP32_BYTES)
    if setup.liger:
        norm_backward = liger.final_norm_backward_bytes(tokens, hidden, width, lm_head_trains)
    return LogitsMemory(
        forward_peak_bytes=forward_peak, saved_bytes=stored, backward_peak_bytes=grad_weight + norm_backward
    )


def released_lm_head_copy_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """autocast's copy of an fp32 lm_head weight, which no matmul saves for backward when liger computes the loss
    (autocast_weight_copies counts it as saved by lm_head's matmul)."""
    if not autocast_on(setup) or dtype_flow(setup).residual != FP32_BYTES:
        return 0
    return tensor_bytes(spec.vocab_size * spec.hidden_size * compute_bytes(setup.precision))
