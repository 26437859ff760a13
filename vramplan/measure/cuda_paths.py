"""The branches a CUDA run takes where the same code on CPU or on fake tensors would take another.

Each helper names the library code that differs and why; `as_on_gpu` applies them all to a Hugging Face step,
`dropout_as_on_cuda` only the dropout one (torchtune's step calls `F.scaled_dot_product_attention` itself).
"""

from __future__ import annotations

import contextlib

import torch


def cuda_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: `at::dropout` takes `native_dropout`, whose mask is bool (1 byte/element).

    On CPU `at::dropout` keeps a mask in the input's dtype instead (aten/src/ATen/native/Dropout.cpp,
    `is_fused_kernel_acceptable` is CUDA-only), which would over-count the trace.
    """
    if not training or p == 0.0:
        return input
    return torch.ops.aten.native_dropout(input, p, True)[0]


def _unpacked_sequences(position_ids):
    """transformers' packed-sequence detection as it answers on a GPU for our unpacked inputs: no packing.

    `masking_utils.find_packed_sequence_indices` cannot read FakeTensor values, so under tracing it assumes
    packed sequences and builds a b x s x s mask, which also moves SDPA off its flash kernel. On a GPU with
    real unpacked inputs it returns None and SDPA runs with `is_causal=True` and no mask.
    """
    return None


def _cuda_sdpa_for(sdpa):
    """SDPA as CUDA dispatches it when the value head dim differs from the query's (DeepSeek MLA: 192 vs 128).

    CUDA's flash kernel needs equal q/k/v head dims, so `scaled_dot_product_attention` takes the memory-efficient
    kernel (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, check_head_dim_size_flash /
    check_head_dim_size_mem_efficient), which saves q, k, v, the output and an fp32 logsumexp. CPU has no such
    kernel and falls back to the math path that keeps b x heads x s x s scores; the efficient op's meta kernel runs
    on fake CPU tensors, so the trace calls it directly.
    """

    def sdpa_as_on_cuda(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if query.size(-1) == value.size(-1) or attn_mask is not None or kwargs.get("enable_gqa"):
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)
        if torch.is_autocast_enabled(query.device.type):
            # scaled_dot_product_attention is on autocast's lower-precision list: its inputs are cast first
            # (aten/src/ATen/autocast_mode.cpp); the private kernel called here is not on the list.
            dtype = torch.get_autocast_dtype(query.device.type)
            query, key, value = (tensor.to(dtype) for tensor in (query, key, value))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, dropout_p, is_causal, scale=scale
        )[0]

    return sdpa_as_on_cuda


class _FakeGroupedMM(torch.autograd.Function):
    """`F.grouped_mm` on fake tensors of any dtype, saving what ATen's autograd saves.

    CUDA runs fp32 grouped matmuls (QLoRA's k-bit preparation upcasts the 3D experts to fp32) through ATen's
    fallback kernel (aten/src/ATen/native/cuda/Blas.cpp, _grouped_mm_cuda), but the meta kernel fake tensors use
    accepts bf16 only. Same output shape and dtype; the input is kept only when the weight trains and the weight
    only when the input needs a gradient (the bf16 trace of the real op keeps the same).
    """

    @staticmethod
    def forward(ctx, input, weight, offs):
        ctx.save_for_backward(
            input if weight.requires_grad else None, weight if input.requires_grad else None
        )
        ctx.shapes = (input.shape, weight.shape)
        return input.new_empty(input.size(0), weight.size(-1))

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        grad_input = grad.new_empty(ctx.shapes[0]) if weight is not None else None
        grad_weight = grad.new_empty(ctx.shapes[1]) if input is not None else None
        return grad_input, grad_weight, None


def _grouped_mm_for(grouped_mm):
    from torch._subclasses.fake_tensor import FakeTensor

    def grouped_mm_any_dtype(input, weight, *args, offs=None, **kwargs):
        if isinstance(weight, FakeTensor) and weight.dtype != torch.bfloat16 and not args and not kwargs:
            return _FakeGroupedMM.apply(input, weight, offs)
        return grouped_mm(input, weight, *args, offs=offs, **kwargs)

    return grouped_mm_any_dtype


@contextlib.contextmanager
def as_on_gpu(packed: bool = False):
    """Take the branches a CUDA run takes where CPU or FakeTensor code would differ (documented in each helper).

    `packed`: the batch packs several sequences per row, so transformers' packed-sequence detection finds them, as
    it does on a GPU (under fake tensors it cannot read positions and always answers "packed")."""
    from transformers import masking_utils

    functional = torch.nn.functional
    originals = (
        functional.dropout, masking_utils.find_packed_sequence_indices, functional.scaled_dot_product_attention
    )
    functional.dropout = cuda_dropout
    if not packed:
        masking_utils.find_packed_sequence_indices = _unpacked_sequences
    functional.scaled_dot_product_attention = _cuda_sdpa_for(originals[2])
    grouped_mm = getattr(functional, "grouped_mm", None)
    if grouped_mm is not None:
        functional.grouped_mm = _grouped_mm_for(grouped_mm)
    try:
        yield
    finally:
        (functional.dropout, masking_utils.find_packed_sequence_indices,
         functional.scaled_dot_product_attention) = originals
        if grouped_mm is not None:
            functional.grouped_mm = grouped_mm


@contextlib.contextmanager
def dropout_as_on_cuda():
    """Only the dropout branch of `as_on_gpu` (bool mask), for steps outside transformers (torchtune's LoRA)."""
    functional = torch.nn.functional
    original = functional.dropout
    functional.dropout = cuda_dropout
    try:
        yield
    finally:
        functional.dropout = original
