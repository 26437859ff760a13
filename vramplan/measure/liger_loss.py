"""Liger's fused linear cross-entropy in the trace: liger's own Python runs, its Triton kernels do not.

`--loss fused` on the Hugging Face stacks is what TRL/transformers `use_liger_kernel` and axolotl's
`liger_fused_linear_cross_entropy: true` apply: liger_kernel.transformers `_apply_liger_kernel_to_instance`
replaces the causal LM's forward with liger's `lce_forward`, which hands the last hidden states and lm_head's
weight to `LigerFusedLinearCrossEntropyFunction` (liger_kernel/ops/fused_linear_cross_entropy.py). That function
computes the logits a chunk of tokens at a time and the gradients of the input and of lm_head's weight in the
forward, so the full logits never exist.

Every buffer that function uses is allocated by torch (zeros_like, empty, matmul, addmm), and the trace runs that
Python unchanged on fake tensors. Its Triton kernels (`liger_cross_entropy_kernel`, `element_mul_kernel`) only
write into buffers torch already allocated, so they are replaced by no-ops. Where liger asks which device it runs
on, it is given an sm80+ GPU's answer (`_AS_ON_CUDA`); where it reads a value (`.item()`, `torch.equal`), it is
given one that takes the branch a Trainer step takes.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap

import torch

from vramplan.errors import NotModelledError

# liger_kernel/transformers/monkey_patch.py `_apply_liger_kernel_to_instance`: only the fused loss, as
# `--loss fused` without `--liger`; the other kernels default to True in each apply_liger_kernel_to_* function.
_LCE_ONLY = dict(
    fused_linear_cross_entropy=True, cross_entropy=False, rope=False, rms_norm=False, swiglu=False, geglu=False,
    layer_norm=False,
)

# Source text of liger 0.8.x (ops/fused_linear_cross_entropy.py) and what it reads on an sm80+ GPU. The trace's
# autocast is CPU's (standing for CUDA's), so liger's CUDA-autocast queries ask about CPU's instead.
_AS_ON_CUDA = {
    "_can_use_mm_out": [
        ('_input.device.type != "cuda"', "False"),
        ("torch.is_autocast_enabled()", 'torch.is_autocast_enabled("cpu")'),
        ('torch.get_autocast_dtype("cuda")', 'torch.get_autocast_dtype("cpu")'),
    ],
    "fused_linear_cross_entropy_forward": [
        ('grad_weight.device.type == "cuda"', "True"),
        ("torch.cuda.get_device_capability(grad_weight.device)[0] >= 8", "True"),
        # The count of non-ignored targets only scales what the (no-op) kernel writes.
        ("target_mask.sum().item()", "_item(target_mask.sum())"),
    ],
    "fused_linear_cross_entropy_backward": [
        # Trainer divides the summed loss by num_items_in_batch, so the gradient is not 1 and liger scales its
        # stored gradients in place (element_mul_kernel).
        ("torch.equal(grad_output,", "_equals_one(grad_output,"),
    ],
}


class NoLaunch:
    """A Triton kernel whose launch (`kernel[grid](...)`) does nothing but note its grid: the kernel only writes
    into buffers torch already allocated."""

    def __init__(self, name: str, launches: list[tuple[str, tuple]]):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, tuple(grid)))


def _is_fake(tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def _item(tensor):
    return 1 if _is_fake(tensor) else tensor.item()


def _equals_one(grad_output, one):
    """`torch.equal(grad_output, 1.0)`: a fake gradient is taken to be Trainer's 1 / num_items_in_batch."""
    return False if _is_fake(grad_output) else torch.equal(grad_output, one)


def rewritten(module, namespace: dict, name: str, table: dict = _AS_ON_CUDA):
    """liger's function `name` of `module`, its source text edited by `table[name]`'s (old, new) pairs and compiled
    in `namespace`; raises NotModelledError when liger's source no longer holds a text to replace."""
    source = textwrap.dedent(inspect.getsource(getattr(module, name)))
    for old, new in table[name]:
        if old not in source:
            raise NotModelledError(f"liger-kernel's {name} changed (no `{old}`); the fused-loss trace needs updating")
        source = source.replace(old, new)
    exec(compile(source, f"<vramplan as-on-cuda {name}>", "exec"), namespace)
    return namespace[name]


@contextlib.contextmanager
def liger_ops_without_kernels():
    """Run liger's fused linear cross-entropy with no-op kernels and a GPU's answers to its device questions;
    yields the list of (kernel, grid) launches it skipped."""
    from liger_kernel.ops import fused_linear_cross_entropy as flce

    launches: list[tuple[str, tuple]] = []
    kernels = {name: NoLaunch(name, launches) for name in ("liger_cross_entropy_kernel", "element_mul_kernel")}
    namespace = {**vars(flce), "_item": _item, "_equals_one": _equals_one, **kernels}
    patched = {name: rewritten(flce, namespace, name) for name in _AS_ON_CUDA}
    originals = {name: getattr(flce, name) for name in patched}
    for name, function in patched.items():
        setattr(flce, name, function)
    try:
        yield launches
    finally:
        for name, function in originals.items():
            setattr(flce, name, function)


def apply_fused_loss(model) -> None:
    """Give the causal LM (under peft's wrapper, if any) liger's fused-loss forward, as TRL and axolotl do."""
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, **_LCE_ONLY)
    if getattr(base.forward, "__func__", None) is type(base).forward:
        raise NotModelledError(f"liger-kernel has no fused-loss forward for model type {base.config.model_type!r}")
