"""The logits and cross-entropy term: lm_head output, transformers' fp32 upcast, log-softmax and its gradient."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, autocast_on, compute_bytes, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


class LogitsMemory(BaseModel):
    """Peak bytes of the loss computation on top of what the layers keep, in forward and in backward."""

    forward_peak_bytes: int
    saved_bytes: int
    backward_peak_bytes: int


def logits_memory(spec: ModelSpec, setup: TrainingSetup) -> LogitsMemory:
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
