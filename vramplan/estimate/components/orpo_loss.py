"""TRL 1.16's ORPO loss (trl/experimental/orpo/orpo_trainer.py `concatenated_forward`) on the full logits of the
chosen and rejected rows: what it allocates beyond the layers' activations, in forward and in backward.

ORPOTrainer has no fused head. Its model call returns the b x s x V logits of the 2 x pairs rows, which Trainer's
accelerate wrapping copies to fp32 under mixed precision (`convert_outputs_to_fp32`). `cross_entropy_loss` takes
the chosen rows' shifted logits `.contiguous()` (a copy) and keeps their log-softmax; `get_batch_logps` runs
`selective_log_softmax` over every row, which on a GPU is TRL's Triton kernel (trl/kernels/logprob_entropy.py
`_LogProbEntropyFunction`): it keeps the logits themselves and returns one gradient of their (shifted) shape.
Autograd then sums the two paths' gradients of the logits (each a slice's backward: zeros of the full shape), in
place (input_buffer.cpp accumulate). Traced: vramplan/measure/trl_orpo.py.
"""

from __future__ import annotations

from vramplan.estimate.components.logits import LogitsMemory
from vramplan.estimate.dtypes import FP32_BYTES, autocast_on, compute_bytes, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


def orpo_logits_memory(spec: ModelSpec, rows: TrainingSetup) -> LogitsMemory:
    """The logits and loss term of ORPO's step at `rows` (2 x pairs rows of seq_len tokens; the first half chosen)."""
    vocab, length, count = spec.vocab_size, rows.seq_len, rows.batch_size
    chosen = count // 2
    head_width = compute_bytes(rows.precision)  # lm_head's output: the autocast dtype, else the weights'
    # accelerate's convert_outputs_to_fp32 (Trainer with bf16/fp16=True): the logits the loss sees are fp32
    width = FP32_BYTES if autocast_on(rows) else head_width
    logits = tensor_bytes(count * length * vocab * width)  # all_logits, kept by the log-prob kernel for backward
    head_output = tensor_bytes(count * length * vocab * head_width) if width != head_width else 0
    shifted_chosen = tensor_bytes(chosen * (length - 1) * vocab * width)  # logits[..., :-1, :] of the chosen rows
    # cross_entropy_loss: `.contiguous()` copy of the shifted chosen logits, then log_softmax's output (kept)
    log_softmax = shifted_chosen
    forward_peak = max(head_output + logits, logits + shifted_chosen + log_softmax)
    saved = logits + log_softmax
    # Backward, in autograd's order (the log-prob path was recorded last, so it runs first):
    kernel_grad = tensor_bytes(count * (length - 1) * vocab * width)  # _LogProbEntropyFunction.backward's grad_logits
    kernel_path = saved + kernel_grad  # its saved logits are released once it returns; the slice backward's zeros
    # of the full shape (the same size) follow
    # the NLL path: nll_loss_backward's and _log_softmax_backward_data's outputs beside the kept log-softmax; then
    # the two slices' backward (`[..., :-1, :]` to the chosen rows' shape, `[:chosen]` to all rows), beside the
    # log-prob path's gradient of the logits waiting in the input buffer
    nll_path = logits + log_softmax + 2 * shifted_chosen
    chosen_full = tensor_bytes(chosen * length * vocab * width)
    slices = 2 * logits + chosen_full
    # then the summed gradient (in place) and its cast back to lm_head's output dtype (`.float()`'s backward)
    cast_back = logits + head_output
    backward_peak = max(kernel_path, nll_path, slices, cast_back)
    return LogitsMemory(forward_peak_bytes=forward_peak, saved_bytes=saved, backward_peak_bytes=backward_peak)
