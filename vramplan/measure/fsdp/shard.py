"""The model as accelerate shards it for FSDP2: built like `build.build_fake_model`, then `fsdp2_prepare_model`
over a 1-D mesh of the (fake) world, and the `fully_shard` units that came out."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import BaseModel

from vramplan.measure.fake_step import logical_numel, patched, quant_state_tensors
from vramplan.measure.fsdp.tracker import local_tensor
from vramplan.measure.livebytes import cuda_block_bytes
from vramplan.training import Method, Precision, TrainingSetup

# accelerate/utils/dataclasses.py, FullyShardedDataParallelPlugin.set_mixed_precision: Trainer's bf16/fp16 flag.
ACCELERATE_MIXED_PRECISION = {
    Precision.BF16: "bf16", Precision.BF16_PURE: "no", Precision.BF16_MIXED: "bf16", Precision.FP16_MIXED: "fp16",
    Precision.FP32: "no",
}
# The FSDP-QLoRA recipe (peft docs, "FSDP + QLoRA"): packed 4-bit bytes viewed as bf16 so FSDP shards them.
QLORA_QUANT_STORAGE = torch.bfloat16
MESH_DIM = "dp_shard"


class FsdpUnit(BaseModel):
    """One `fully_shard` call: its parameters, their bytes on this rank and when all-gathered.

    `params` counts stored elements (a packed 4-bit weight in bf16 storage counts its bf16 elements, a quarter of
    the weights it stands for); `unsharded_bytes` is what one all-gather materialises, in param_dtype.
    """

    name: str
    params: int
    sharded_bytes: int
    unsharded_bytes: int
    dtypes: list[str]
    reshard_after_forward: bool


def _fsdp_plugin(setup: TrainingSetup, reshard_after_forward: bool, offload_params: bool):
    """accelerate's FSDP2 plugin as Trainer builds it from `fsdp_config` (fsdp_version 2, transformer wrap)."""
    from accelerate.utils.dataclasses import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=reshard_after_forward,
        cpu_ram_efficient_loading=False,
        # accelerate sets CPUOffloadPolicy() (pinned); pinning needs CUDA and moves no GPU bytes.
        cpu_offload=CPUOffloadPolicy(pin_memory=False) if offload_params else False,
    )
    mixed_precision = ACCELERATE_MIXED_PRECISION[setup.precision]
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)  # accelerate/state.py, AcceleratorState for FSDP
    return plugin, mixed_precision


def shard_like_accelerate(model, setup: TrainingSetup, world_size: int, *, reshard_after_forward: bool = True,
                          offload_params: bool = False, fake_mode=None):
    """Run accelerate's `fsdp2_prepare_model` on `model`, over a 1-D mesh of the (fake) world."""
    import accelerate.utils.fsdp_utils as fsdp_utils
    import bitsandbytes as bnb
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin, mixed_precision = _fsdp_plugin(setup, reshard_after_forward, offload_params)
    # Built outside fake mode: the mesh reads its rank table as Python ints.
    mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
    # The attributes of accelerate's Accelerator that fsdp2_prepare_model reads (accelerate 1.15-1.16:
    # accelerate/utils/fsdp_utils.py); `device` is where ignored modules go (1.16 reads it on every call).
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision=mixed_precision, is_main_process=True,
        torch_device_mesh=mesh, parallelism_config=SimpleNamespace(fsdp_dim_names=(MESH_DIM,)),
        device=torch.device("cpu"),
    )
    with contextlib.ExitStack() as stack:
        # accelerate's logger refuses to log before an AcceleratorState exists.
        stack.enter_context(patched(fsdp_utils, "logger", lambda _: logging.getLogger(fsdp_utils.__name__)))
        # fsdp2_prepare_model keeps a `model.state_dict()` for cpu_ram_efficient_loading (off here), and
        # bitsandbytes' state dict reads double-quantization offsets as Python floats, which fake tensors lack.
        stack.enter_context(
            patched(bnb.nn.Linear4bit, "_save_to_state_dict", lambda _: torch.nn.Module._save_to_state_dict)
        )
        stack.enter_context(fake_mode or contextlib.nullcontext())
        model = fsdp_utils.fsdp2_prepare_model(accelerator, model)
    # fsdp2_prepare_model passes `mixed_precision_policy or MixedPrecisionPolicy()` (no casts) to fully_shard.
    return model, plugin.mixed_precision_policy or MixedPrecisionPolicy()


def build_sharded(config: dict[str, Any], setup: TrainingSetup, world_size: int, reshard_after_forward: bool,
                  offload_params: bool, fake_mode):
    """(sharded model, mixed-precision policy, parameters it stands for, QuantState tensors per module)."""
    from vramplan.measure.build import build_fake_model

    torch.manual_seed(0)
    quant_storage = QLORA_QUANT_STORAGE if setup.method is Method.QLORA else torch.uint8
    model = build_fake_model(config, setup, fake_mode, quant_storage=quant_storage)
    total_params = sum(logical_numel(p) for p in model.parameters())
    quant_states = [(name, tensors) for name, tensors in quant_state_tensors(model)]
    model, policy = shard_like_accelerate(
        model, setup, world_size, reshard_after_forward=reshard_after_forward, offload_params=offload_params,
        fake_mode=fake_mode,
    )
    return model, policy, total_params, quant_states


def _fsdp_units(model) -> list[tuple[str, Any]]:
    """(unit name, FSDPParamGroup) of every `fully_shard` call that holds parameters."""
    from torch.distributed.fsdp import FSDPModule

    units = []
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None and all(group is not seen for _, seen in units):
                units.append((group._module_fqn or "(root)", group))
    return units


def describe_units(model) -> list[FsdpUnit]:
    """Every `fully_shard` unit of the sharded model, with its bytes on this rank and when gathered."""
    units = []
    for name, group in _fsdp_units(model):
        params = [p.sharded_param for p in group.fsdp_params]
        units.append(FsdpUnit(
            name=name,
            params=sum(p.numel() for p in params),
            sharded_bytes=sum(cuda_block_bytes(local_tensor(p).untyped_storage().nbytes()) for p in params),
            unsharded_bytes=sum(
                cuda_block_bytes(p._orig_size.numel() * (p.param_dtype or p.orig_dtype).itemsize)
                for p in group.fsdp_params
            ),
            dtypes=sorted({str(p.dtype).removeprefix("torch.") for p in params}),
            reshard_after_forward=group.post_forward_mesh_info is not None,
        ))
    return units
