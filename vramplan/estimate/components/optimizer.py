"""Optimizer states and the temporaries of `optimizer.step()`, per optimizer implementation."""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.errors import NotModelledError
from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.training import Optimizer

# torch/optim/adamw.py: exp_avg and exp_avg_sq are zeros_like(param), in the parameter's dtype.
ADAM_STATES_PER_PARAM = 2
# bitsandbytes/optim/optimizer.py Optimizer8bit.init_state: tensors under 4096 elements keep fp32 states.
BNB_8BIT_MIN_ELEMENTS = 4096
# bitsandbytes 8-bit blockwise states: one uint8 per value plus one fp32 absmax per 256 values.
BNB_8BIT_BLOCK = 256
# bitsandbytes Optimizer8bit: qmap1/qmap2 (256-entry fp32 dynamic quantization maps), shared by all parameters.
BNB_QMAP_VALUES = 256
# transformers/optimization.py Adafactor.step, while `update = grad**2 + eps` is formed (and again in
# _approx_sq_grad): grad.float(), p.float(), grad**2 and update for a bf16/fp16 tensor; grad**2 and update for fp32.
ADAFACTOR_FP32_COPIES_HALF = 4
ADAFACTOR_FP32_COPIES_FP32 = 2


class OptimizerMemory(BaseModel):
    """States the torch allocator holds, states outside it (paged), and the step's peak temporaries."""

    state_bytes: int
    paged_state_bytes: int
    step_temporary_bytes: int


def optimizer_memory(optimizer: Optimizer, shapes: list[tuple[int, ...]], param_bytes: int) -> OptimizerMemory:
    """Memory of `optimizer` over trainable tensors of these shapes, stored `param_bytes` wide."""
    tensors = [math.prod(shape) for shape in shapes]
    if optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED, Optimizer.PAGED_ADAMW):
        states = sum(ADAM_STATES_PER_PARAM * tensor_bytes(n * param_bytes) for n in tensors)
        # state["step"] is a 0-d fp32 tensor per parameter (torch/optim/adamw.py, _init_group).
        steps = len(tensors) * tensor_bytes(FP32_BYTES)
        if optimizer is Optimizer.PAGED_ADAMW:
            return OptimizerMemory(state_bytes=steps, paged_state_bytes=states, step_temporary_bytes=0)
        return OptimizerMemory(
            state_bytes=states + steps, paged_state_bytes=0, step_temporary_bytes=_adamw_temporaries(optimizer, tensors, param_bytes)
        )
    if optimizer in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT):
        states = sum(_bnb_8bit_state_bytes(n) for n in tensors)
        if any(n >= BNB_8BIT_MIN_ELEMENTS for n in tensors):
            states += 2 * tensor_bytes(BNB_QMAP_VALUES * FP32_BYTES)
        if optimizer is Optimizer.PAGED_ADAMW_8BIT:
            return OptimizerMemory(state_bytes=0, paged_state_bytes=states, step_temporary_bytes=0)
        return OptimizerMemory(state_bytes=states, paged_state_bytes=0, step_temporary_bytes=0)
    if optimizer is Optimizer.SGD:
        # Trainer's optim="sgd": torch.optim.SGD without momentum keeps no state and updates in place.
        return OptimizerMemory(state_bytes=0, paged_state_bytes=0, step_temporary_bytes=0)
    if optimizer is Optimizer.ADAFACTOR:
        return _adafactor_memory(shapes, param_bytes)
    raise NotModelledError(f"--optimizer {optimizer.value} is not modelled yet")


def _adamw_temporaries(optimizer: Optimizer, tensors: list[int], param_bytes: int) -> int:
    """foreach AdamW: `torch._foreach_sqrt(exp_avg_sqs)` allocates one copy of every state at once
    (torch/optim/adamw.py, _multi_tensor_adamw); fused AdamW computes in the kernel and allocates nothing."""
    if optimizer is Optimizer.ADAMW_FUSED:
        return 0
    return sum(tensor_bytes(n * param_bytes) for n in tensors)


def _bnb_8bit_state_bytes(elements: int) -> int:
    if elements < BNB_8BIT_MIN_ELEMENTS:
        return ADAM_STATES_PER_PARAM * tensor_bytes(elements * FP32_BYTES)
    blocks = -(-elements // BNB_8BIT_BLOCK)
    per_state = tensor_bytes(elements) + tensor_bytes(blocks * FP32_BYTES)
    return ADAM_STATES_PER_PARAM * per_state


def _adafactor_memory(shapes: list[tuple[int, ...]], param_bytes: int) -> OptimizerMemory:
    """transformers.optimization.Adafactor as Trainer's optim="adafactor" builds it (no first moment).

    States (fp32, `.to(grad)` after `grad.float()`): a factored second moment, one row and one column vector, for
    tensors of 2+ dims; a full exp_avg_sq for vectors; and state["RMS"], a 0-d tensor per parameter. The step runs
    parameter by parameter; its peak holds fp32 copies of the largest tensor.
    """
    states = 0
    for shape in shapes:
        if len(shape) >= 2:
            states += tensor_bytes(math.prod(shape[:-1]) * FP32_BYTES) + tensor_bytes(math.prod(shape[:-2] + shape[-1:]) * FP32_BYTES)
        else:
            states += tensor_bytes(math.prod(shape) * FP32_BYTES)
        states += tensor_bytes(FP32_BYTES)
    copies = ADAFACTOR_FP32_COPIES_HALF if param_bytes < FP32_BYTES else ADAFACTOR_FP32_COPIES_FP32
    largest = max((math.prod(shape) for shape in shapes), default=0)
    return OptimizerMemory(
        state_bytes=states, paged_state_bytes=0, step_temporary_bytes=copies * tensor_bytes(largest * FP32_BYTES)
    )
