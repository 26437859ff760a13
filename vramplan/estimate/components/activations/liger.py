"""What Liger's RMSNorm, SwiGLU and RoPE kernels (`--liger`) keep and allocate in one Hugging Face decoder layer.

The kernels write into buffers torch allocates in liger's Python (liger_kernel/ops/*.py), so their memory is read
from that Python and confirmed by our trace (vramplan/measure/liger_kernels.py, tests/estimate/test_liger.py).
RoPE rotates q and k in place (ops/rope.py rope_forward) and saves only cos and sin, which the model shares across
layers: it adds no per-layer bytes, and the q/k it returns are the projections' own outputs.
"""

from __future__ import annotations

from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes


# The assumption line printed with a --liger answer (estimate/assumptions.py).
LIGER_ASSUMPTION = (
    "liger: Liger's RMSNorm, SwiGLU and RoPE kernels (liger-kernel 0.8.5, use_liger_kernel): norms save their input "
    "and an fp32 rstd, SwiGLU saves gate and up, RoPE rotates q and k in place"
)
# ops/swiglu.py LigerSiLUMulFunction.forward: ctx.save_for_backward(a, b), the gate and up projections' outputs
# (torch's silu * up also saves silu(gate): three).
SWIGLU_SAVED_INTERMEDIATES = 2
# The layer's backward peaks in down_proj's backward (torch MmBackward): d(product), the gradient of the layer's
# output and (full fine-tuning) down_proj's weight gradient, while the product is still saved. The SwiGLU step
# after it allocates nothing: ops/swiglu.py swiglu_backward writes d(gate) and d(up) over the saved gate and up
# (torch's autograd holds three intermediate-wide tensors there). Measured: tests/estimate/test_liger.py.
DOWN_PROJ_BACKWARD_HIDDEN_GRADIENTS = 1
# ops/rms_norm.py rms_norm_backward: one fp32 row of partial weight gradients per SM (an H100 SXM has 132; the
# trace answers as an H100, vramplan/measure/liger_kernels.py).
SM_COUNT = 132


def norm_saved_bytes(width_in: int, size: int, tokens: int) -> list[int]:
    """ops/rms_norm.py LigerRMSNormFunction.forward: saves its input X itself (no fp32 copy) and one fp32 RSTD per
    row (casting_mode "llama"); the normalised tensor is recomputed in backward, never saved."""
    return [tensor_bytes(tokens * size * width_in), tensor_bytes(tokens * FP32_BYTES)]


def down_proj_backward_in_flight_bytes(product: int, hidden: int, down_weight_gradient: int) -> int:
    """Bytes in flight at the MLP's backward peak under Liger (nothing saved is released yet)."""
    return product + DOWN_PROJ_BACKWARD_HIDDEN_GRADIENTS * hidden + down_weight_gradient


def final_norm_forward_bytes(tokens: int) -> int:
    """ops/rms_norm.py rms_norm_forward: the final norm's RSTD; the X it saves is the last layer's output, counted."""
    return tensor_bytes(tokens * FP32_BYTES)


def final_norm_backward_bytes(tokens: int, hidden: int, width: int, weight_trains: bool) -> int:
    """ops/rms_norm.py rms_norm_backward (in_place=True): dX is written over dY, so the final norm's backward holds
    only its saved X and RSTD and, when its weight trains, the per-SM partial weight gradients."""
    partial = tensor_bytes(SM_COUNT * hidden * FP32_BYTES) if weight_trains else 0
    return tensor_bytes(tokens * hidden * width) + tensor_bytes(tokens * FP32_BYTES) + partial
