"""Liger's RMSNorm, SwiGLU and RoPE kernels in the trace (`--liger`): liger's own Python runs, its kernels do not.

`--liger` on the Hugging Face stacks is what TRL/transformers `use_liger_kernel` applies: liger_kernel.transformers
`_apply_liger_kernel_to_instance(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
fused_linear_cross_entropy=<--loss fused>)`. Every buffer those ops use is allocated by torch (ops/rms_norm.py
`rms_norm_forward`/`rms_norm_backward`, ops/swiglu.py `swiglu_forward`, ops/rope.py `rope_forward`); their Triton
kernels only write into them (in place: RoPE rotates q and k where they lie, SwiGLU's backward writes its gradients
over the saved gate and up, RMSNorm's backward writes dX over dY), so the kernels become no-ops. Where liger asks
which device it runs on, it is given an H100's answer (`_AS_ON_CUDA`).
"""

from __future__ import annotations

import contextlib

from vramplan.errors import NotModelledError
from vramplan.measure.liger_loss import NoLaunch, rewritten

# transformers' model types whose liger apply function patches RMSNorm, SwiGLU and RoPE the way the rules count.
LIGER_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# ops/rms_norm.py rms_norm_backward: one fp32 row of partial weight gradients per SM (an H100 SXM has 132).
H100_SM_COUNT = 132

_AS_ON_CUDA = {
    "rms_norm_backward": [
        ('if X.device.type == "cuda":', "if True:"),
        ("torch.cuda.get_device_properties(X.device).multi_processor_count", str(H100_SM_COUNT)),
    ],
}

_KERNELS = {
    "rms_norm": ("_rms_norm_forward_kernel", "_block_rms_norm_forward_kernel", "_rms_norm_backward_kernel",
                 "_block_rms_norm_backward_kernel"),
    "swiglu": ("_swiglu_forward_kernel", "_swiglu_backward_kernel", "_swiglu_forward_kernel_tiled",
               "_swiglu_backward_kernel_tiled"),
    "rope": ("_triton_rope",),
}


@contextlib.contextmanager
def liger_applied(model, fused_loss: bool):
    """Patch the model (under peft's wrapper, if any) as `use_liger_kernel` does, for the duration of the block.

    liger also replaces the modeling module's globals (`apply_rotary_pos_emb`, the RMSNorm and MLP classes), which
    RoPE needs while the model runs; they are restored on exit so later models of the process stay unpatched."""
    import sys

    from liger_kernel.backends.registry import list_registered
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config.model_type not in LIGER_MODEL_TYPES:
        modelled = ", ".join(LIGER_MODEL_TYPES)
        raise NotModelledError(f"--liger is modelled for {modelled}, not {base.config.model_type!r}")
    # liger imports RoPE's backends at its first call and logs each that fails to import with the exception, whose
    # traceback reaches the calling frame: a log handler that keeps records (pytest's) would keep that step's q and
    # k alive. Import them now, before any tensor of the step exists.
    list_registered("rope")
    modeling = sys.modules[type(base).__module__]
    before = dict(vars(modeling))
    try:
        _apply_liger_kernel_to_instance(
            model=base, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
            fused_linear_cross_entropy=fused_loss,
        )
        yield
    finally:
        for name in set(vars(modeling)) - set(before):
            delattr(modeling, name)
        for name, value in before.items():
            if vars(modeling).get(name) is not value:
                setattr(modeling, name, value)


@contextlib.contextmanager
def liger_kernels_as_noops():
    """Run liger's RMSNorm, SwiGLU and RoPE with no-op kernels and an H100's answers; yields the skipped launches."""
    import importlib

    launches: list[tuple[str, tuple]] = []
    modules = {name: importlib.import_module(f"liger_kernel.ops.{name}") for name in _KERNELS}
    saved: list[tuple[object, str, object]] = []

    def swap(module, name, value):
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    for op, names in _KERNELS.items():
        for name in names:
            swap(modules[op], name, NoLaunch(name, launches))
    swap(modules["swiglu"], "_should_tile", lambda n_cols: False)  # Blackwell-only tiling; an H100 takes rows
    rms = modules["rms_norm"]
    swap(rms, "rms_norm_backward", rewritten(rms, dict(vars(rms)), "rms_norm_backward", _AS_ON_CUDA))
    try:
        yield launches
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)
