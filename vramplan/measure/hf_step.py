"""Run the real Hugging Face training step on CPU and count its live tensor bytes.

The model comes from `build` (real tensors for small configs, FakeTensors for any size) and is driven through
forward, backward and optimizer step the way transformers' Trainer drives it: accelerate's autocast around the
forward and `convert_to_fp32` of its outputs, `loss.backward()`, `optimizer.step()`, then
`zero_grad(set_to_none=True)`. The step measured is a steady-state one: optimizer states already exist.

Two warm-ups are offered. `step` runs a whole training step first (what a GPU probe does). `optimizer` only
gives every trainable parameter a gradient and steps the optimizer once, which creates the same states at a
third of the cost; tests hold the two to the same peak.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Literal

import torch
from pydantic import BaseModel

from vramplan.measure.build import AUTOCAST_DTYPE, build_fake_model, build_real_model, make_optimizer
from vramplan.measure.livebytes import (
    CATEGORIES,
    GRADIENTS,
    OPTIMIZER_STATES,
    PARAMETERS,
    LiveBytesTracker,
    Snapshot,
)
from vramplan.measure.trace import ModulePeak
from vramplan.training import Loss, TrainingSetup

Warmup = Literal["step", "optimizer"]
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


class PhaseBytes(BaseModel):
    """Live bytes at one phase's peak, split by category."""

    phase: str
    peak_bytes: int
    categories: dict[str, int]


class StepTrace(BaseModel):
    """Live-bytes peaks of one steady-state training step."""

    peak_allocated_bytes: int
    peak_phase: str
    categories: dict[str, int]
    phases: list[PhaseBytes]
    by_module: list[ModulePeak]
    idle_bytes: int
    total_params: int
    trainable_params: int


def _cuda_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: `at::dropout` takes `native_dropout`, whose mask is bool (1 byte/element).

    On CPU `at::dropout` keeps a mask in the input's dtype instead (aten/src/ATen/native/Dropout.cpp,
    `is_fused_kernel_acceptable` is CUDA-only), which would over-count the trace.
    """
    if not training or p == 0.0:
        return input
    return torch.ops.aten.native_dropout(input, p, True)[0]


@contextlib.contextmanager
def quiet_libraries():
    """transformers' and peft's deprecation notices and config remarks are not the user's business here."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|bitsandbytes)\.")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


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


def _packed_positions(input_ids):
    """Two sequences per row (positions restart half-way), as a packing collator (TRL, axolotl) writes them."""
    batch, length = input_ids.shape
    half = max(1, length // 2)
    return (torch.arange(length, device=input_ids.device) % half).expand(batch, length)


@contextlib.contextmanager
def _as_on_gpu(packed: bool = False):
    """Take the branches a CUDA run takes where CPU or FakeTensor code would differ (documented in each helper).

    `packed`: the batch packs several sequences per row, so transformers' packed-sequence detection finds them, as
    it does on a GPU (under fake tensors it cannot read positions and always answers "packed")."""
    from transformers import masking_utils

    functional = torch.nn.functional
    originals = (
        functional.dropout, masking_utils.find_packed_sequence_indices, functional.scaled_dot_product_attention
    )
    functional.dropout = _cuda_dropout
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


def _module_name(name: str) -> str:
    """peft's wrapper prefix removed, so names read as in the user's model."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name or "(model)"


@contextlib.contextmanager
def _attribute_modules(model, tracker: LiveBytesTracker):
    """Keep `tracker.module` on the innermost module whose forward runs (recomputation included)."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    names = {id(module): _module_name(name) for name, module in model.named_modules()}
    stack: list[str] = []

    def enter(module, args):
        name = names.get(id(module))
        if name is not None:
            stack.append(name)
            tracker.module = name
            tracker.recomputing = tracker.phase == "backward"

    def leave(module, args, output):
        if names.get(id(module)) is not None and stack:
            stack.pop()
            tracker.module = stack[-1] if stack else "(no module)"
            tracker.recomputing = bool(stack) and tracker.phase == "backward"

    # always_call: checkpointing stops a recomputation early by raising inside the layer's forward.
    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _owner_of_parameters(model) -> dict[int, str]:
    owners = {}
    for name, module in model.named_modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            owners[id(tensor)] = _module_name(name)
    return owners


def _tag_optimizer_states(optimizer, tracker: LiveBytesTracker, owners: dict[int, str]) -> None:
    for param, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.tag(value, OPTIMIZER_STATES, owners.get(id(param), "(optimizer)"))


def _by_module(snapshot: Snapshot) -> list[ModulePeak]:
    """The peak's bytes by module, each layer's copy of a module folded into one `layers.*` row."""
    grouped: dict[str, dict[str, int]] = {}
    members: dict[str, set[str]] = {}
    for (module, category), nbytes in snapshot.by_owner.items():
        pattern = _LAYER_INDEX.sub(".*", module)
        row = grouped.setdefault(pattern, dict.fromkeys(CATEGORIES, 0))
        row[category] += nbytes
        members.setdefault(pattern, set()).add(module)
    rows = [
        ModulePeak(module=name, count=len(members[name]), bytes=sum(row.values()), categories=row)
        for name, row in grouped.items()
    ]
    return sorted(rows, key=lambda row: row.bytes, reverse=True)


def trace_training_step(
    config: dict[str, Any],
    setup: TrainingSetup,
    *,
    fake: bool = True,
    warmup: Warmup = "optimizer",
    seed: int = 0,
) -> StepTrace:
    """Peak live bytes of a steady-state training step of `config` under `setup`, on CPU."""
    with quiet_libraries():
        return _trace(config, setup, fake, warmup, seed)


def _trace(config: dict[str, Any], setup: TrainingSetup, fake: bool, warmup: Warmup, seed: int) -> StepTrace:
    from accelerate.utils import convert_to_fp32

    torch.manual_seed(seed)
    fake_mode = _fake_mode() if fake else contextlib.nullcontext()
    model = build_fake_model(config, setup, fake_mode) if fake else build_real_model(config, setup)
    loss_kernels = _liger(model, setup) if setup.liger or setup.loss is Loss.FUSED else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    owners = _owner_of_parameters(model)
    vocab = int(config["vocab_size"])
    tracker = LiveBytesTracker(skip_matmul_arithmetic=not fake)
    autocast = (
        torch.autocast("cpu", dtype=AUTOCAST_DTYPE[setup.precision]) if setup.autocast else contextlib.nullcontext()
    )
    hooks = [
        param.register_post_accumulate_grad_hook(
            lambda p: tracker.tag(p.grad, GRADIENTS, owners.get(id(p), "(model)"))
        )
        for param in params
    ]

    def training_step(input_ids) -> None:
        tracker.set_phase("forward")
        with autocast:
            extra = {"position_ids": _packed_positions(input_ids)} if setup.packing else {}
            outputs = model(input_ids=input_ids, labels=input_ids, **extra)
        if setup.autocast:
            # accelerate's prepare_model wraps forward in convert_outputs_to_fp32 (Trainer with bf16/fp16=True).
            outputs = convert_to_fp32(outputs)
        loss = outputs.loss
        del outputs
        tracker.set_phase("backward")
        loss.backward()
        del loss
        tracker.set_phase("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker.set_phase("idle")

    # Built outside fake mode: bitsandbytes' optimizers build their quantization maps from Python scalars.
    optimizer = make_optimizer(params, setup.optimizer)
    try:
        with fake_mode, _as_on_gpu(setup.packing), loss_kernels, _attribute_modules(model, tracker), tracker:
            input_ids = torch.randint(0, vocab, (setup.batch_size, setup.seq_len))
            for param in model.parameters():
                tracker.tag(param, PARAMETERS, owners.get(id(param), "(model)"))
            tracker.track_all(model.buffers(), PARAMETERS)
            for name, tensors in _quant_state_tensors(model):
                tracker.track_all(tensors, PARAMETERS, name)
            tracker.set_phase("warmup")
            if warmup == "step":
                training_step(input_ids)
            else:
                for param in params:
                    param.grad = torch.zeros_like(param)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            _tag_optimizer_states(optimizer, tracker, owners)
            tracker.set_phase("idle")
            tracker.reset_peak()
            training_step(input_ids)
            tracker.finish()
    finally:
        for hook in hooks:
            hook.remove()
    phases = step_phases(tracker)
    return StepTrace(
        peak_allocated_bytes=tracker.peak_bytes,
        peak_phase=tracker.peak_phase,
        categories=tracker.peak.by_category(),
        phases=phases,
        by_module=_by_module(tracker.peak),
        idle_bytes=tracker.live_bytes,
        total_params=sum(_logical_numel(p) for p in model.parameters()),
        trainable_params=sum(p.numel() for p in params),
    )


def step_phases(tracker: LiveBytesTracker) -> list[PhaseBytes]:
    """Each measured phase's peak and its categories (the warm-up and idle phases are not the step's)."""
    return [
        PhaseBytes(phase=phase, peak_bytes=tracker.phase_peaks[phase], categories=snapshot.by_category())
        for phase, snapshot in tracker.phase_snapshots.items()
        if phase in ("forward", "backward", "optimizer")
    ]


def _liger(model, setup: TrainingSetup):
    """`--loss fused`: liger's fused linear cross-entropy forward on the model; `--liger`: its RMSNorm, SwiGLU and
    RoPE; their kernels as no-ops."""
    from vramplan.measure.liger_kernels import liger_applied, liger_kernels_as_noops
    from vramplan.measure.liger_loss import apply_fused_loss, liger_ops_without_kernels

    fused = setup.loss is Loss.FUSED
    if not setup.liger:
        apply_fused_loss(model)
        return liger_ops_without_kernels()
    stack = contextlib.ExitStack()
    stack.enter_context(liger_applied(model, fused_loss=fused))  # until the step ends
    stack.enter_context(liger_kernels_as_noops())
    if fused:
        stack.enter_context(liger_ops_without_kernels())
    return stack


def _quant_state_tensors(model):
    """(module name, tensors) of each 4-bit weight's QuantState: absmax, code, offset and the nested state2."""
    for name, module in model.named_modules():
        quant_state = getattr(module._parameters.get("weight"), "quant_state", None)  # the owner, not peft's wrapper
        if quant_state is None:
            continue
        tensors = [quant_state.absmax, quant_state.code, getattr(quant_state, "offset", None)]
        nested = getattr(quant_state, "state2", None)
        if nested is not None:
            tensors += [nested.absmax, nested.code]
        yield _module_name(name), [tensor for tensor in tensors if isinstance(tensor, torch.Tensor)]


def _logical_numel(param: torch.Tensor) -> int:
    """Elements a parameter stands for: a packed 4-bit weight stands for its QuantState's full shape."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None:
        return int(torch.Size(quant_state.shape).numel())
    return param.numel()


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)
