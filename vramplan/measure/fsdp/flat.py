"""The model as accelerate wraps it for FSDP1 (`FullyShardedDataParallel`, one flat parameter per wrapped unit), and
the patches that file FSDP1's allocations under what they are.

accelerate/accelerator.py `prepare_model`, the `DistributedType.FSDP` branch (fsdp_version 1), with the plugin the
Trainer builds from `fsdp_config` (transformers/training_args.py: FULL_SHARD, use_orig_params, no prefetch,
limit_all_gathers) and, for a peft model, transformers/distributed/fsdp.py `update_fsdp_plugin_peft` (peft's
`fsdp_auto_wrap_policy`: every trainable leaf module, so each LoRA A and B, is a unit of its own; QLoRA's mixed
precision set to the 4-bit storage dtype). Under Trainer's bf16/fp16 every trainable flat parameter in 16 bits is
upcast to fp32 after wrapping; the forward runs under accelerate's autocast (`native_amp`), unlike FSDP2's.
"""

from __future__ import annotations

import contextlib

import torch

from vramplan.measure.fake_step import patched
from vramplan.measure.fsdp.shard import ACCELERATE_MIXED_PRECISION, QLORA_QUANT_STORAGE, FsdpUnit
from vramplan.measure.livebytes import cuda_block_bytes
from vramplan.result import (
    ALL_GATHER_BUFFERS,
    GRADIENTS,
    UNSHARDED_GRADIENTS,
    UNSHARDED_PARAMETERS,
)
from vramplan.training import Method, Offload, TrainingSetup

# transformers/training_args.py (FSDP1 branch of the fsdp_config defaults) and accelerate's plugin defaults; the
# backward prefetch is the setup's (`--backward-prefetch`, accelerate's fsdp_backward_prefetch).
TRAINER_FSDP1_DEFAULTS = dict(use_orig_params=True, limit_all_gathers=True)  # forward_prefetch: the setup's
SHARDING = {"full-shard": "FULL_SHARD", "shard-grad-op": "SHARD_GRAD_OP", "hybrid-shard": "HYBRID_SHARD",
            "no-shard": "NO_SHARD"}  # `--fsdp1-sharding`
BACKWARD_PREFETCH = {"none": "NO_PREFETCH", "backward-pre": "BACKWARD_PRE", "backward-post": "BACKWARD_POST"}


def _fsdp1_plugin(setup: TrainingSetup, offload_params: bool):
    from accelerate.utils.dataclasses import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=1, auto_wrap_policy="transformer_based_wrap", cpu_offload=offload_params,
        # sync_module_states broadcasts rank 0's weights once, before training: no bytes of the step.
        sync_module_states=False, cpu_ram_efficient_loading=False,
        backward_prefetch=BACKWARD_PREFETCH[setup.backward_prefetch], forward_prefetch=setup.forward_prefetch,
        # accelerate launch passes fsdp_sharding_strategy as FSDP_SHARDING_STRATEGY, which prepare_model prefers
        sharding_strategy=SHARDING[setup.fsdp1_sharding], reshard_after_forward=SHARDING[setup.fsdp1_sharding],
        **TRAINER_FSDP1_DEFAULTS,
    )
    mixed_precision = ACCELERATE_MIXED_PRECISION[setup.precision]
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)  # accelerate/state.py, AcceleratorState for FSDP
    return plugin, mixed_precision


def wrap_like_accelerate_fsdp1(model, setup: TrainingSetup, *, offload_params: bool = False, fake_mode=None):
    """(FSDP1-wrapped model, accelerate's mixed_precision string) as Trainer + accelerate wrap `model`."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin, mixed_precision = _fsdp1_plugin(setup, offload_params)
    if setup.method is not Method.FULL:
        from peft.utils.other import fsdp_auto_wrap_policy

        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)  # update_fsdp_plugin_peft
        if setup.method is Method.QLORA:
            plugin.set_mixed_precision(QLORA_QUANT_STORAGE, override=True)  # bnb_4bit_quant_storage
    plugin.set_auto_wrap_policy(model)
    kwargs = dict(
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward, cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy, mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states, backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch, use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers, device_id=torch.device("cpu"),
    )
    with fake_mode or contextlib.nullcontext(), _node_of(setup.gpus):
        model = FSDP(model, **kwargs)
        if mixed_precision != "no":
            _upcast_trainable(model)
    return model, mixed_precision


@contextlib.contextmanager
def _node_of(gpus: int):
    """HYBRID_SHARD without a process group or mesh (accelerate passes neither) shards over the node's devices,
    `device_count()` of them (torch/distributed/fsdp/_init_utils.py _init_process_group_state_for_hybrid_shard):
    on this CPU, the run's --gpus."""
    import torch.distributed.fsdp._init_utils as init_utils

    original = init_utils._init_intra_and_inter_node_groups

    def node_groups(global_group, _devices):
        return original(global_group, gpus)

    with patched(init_utils, "_init_intra_and_inter_node_groups", lambda _: node_groups):
        yield


def _upcast_trainable(model) -> None:
    """accelerate's prepare_model: every trainable flat parameter not in fp32 is upcast to it ("to mimic DeepSpeed")."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for module in FSDP.fsdp_modules(model):
        if not module._has_params:
            continue
        param = module._flat_param
        if param.dtype != torch.float32 and param.requires_grad:
            param.data = param.data.to(torch.float32)
            module._handle._orig_param_dtype = torch.float32


def flat_handles(model) -> list:
    """Every FlatParamHandle of the wrapped model, root first."""
    return [handle for _, handle in _units(model)]


def _units(model) -> list:
    """(FSDP module, its FlatParamHandle) of every unit that holds parameters, root first."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return [(module, module._handle) for module in FSDP.fsdp_modules(model) if module._handle is not None]


def handle_name(handle) -> str:
    """A unit's name: the path of the module it wraps, as `model.named_modules()` spells it without FSDP's and the
    checkpoint wrapper's own modules ("(root)" for the root)."""
    return getattr(handle, "_vramplan_name", None) or "(fsdp)"


def name_units(model) -> None:
    """Remember each unit's module path on its handle (for `handle_name`)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for path, module in model.named_modules():
        if isinstance(module, FSDP) and module._handle is not None:
            clean = path.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
            module._handle._vramplan_name = clean.removesuffix("._fsdp_wrapped_module") or "(root)"


def describe_flat_units(model) -> list[FsdpUnit]:
    """Every FSDP1 unit: its flat parameter's elements (padded to the world), bytes on this rank and gathered."""
    units = []
    for module, handle in _units(model):
        flat = handle.flat_param
        whole = flat._padded_unsharded_size if handle.uses_sharded_strategy else flat._unpadded_unsharded_size
        padded = whole.numel()  # NO_SHARD: the flat parameter, never padded
        units.append(FsdpUnit(
            name=handle_name(handle),
            params=padded,
            sharded_bytes=cuda_block_bytes(flat._local_shard.untyped_storage().nbytes()),
            unsharded_bytes=cuda_block_bytes(padded * handle._fwd_bwd_param_dtype.itemsize),
            dtypes=[str(flat.dtype).removeprefix("torch.")],
            # _post_forward_reshard keeps the root's; NO_SHARD never reshards
            reshard_after_forward=not module._is_root and handle.uses_sharded_strategy,
        ))
    return units


def build_flat(config, setup: TrainingSetup, fake_mode):
    """(FSDP1-wrapped model, accelerate's mixed_precision, parameters it stands for, QuantState tensors per module)."""
    from vramplan.measure.build import build_fake_model
    from vramplan.measure.fake_step import logical_numel, quant_state_tensors

    torch.manual_seed(0)
    quant_storage = QLORA_QUANT_STORAGE if setup.method is Method.QLORA else torch.uint8
    model = build_fake_model(config, setup, fake_mode, quant_storage=quant_storage)
    total_params = sum(logical_numel(p) for p in model.parameters())
    quant_states = [(name, tensors) for name, tensors in quant_state_tensors(model)]
    offload = setup.offload is Offload.PARAMS
    model, mixed_precision = wrap_like_accelerate_fsdp1(model, setup, offload_params=offload, fake_mode=fake_mode)
    name_units(model)
    for handle in flat_handles(model):
        # The original parameters as views of the (upcast) shard, which FSDP sets at the first reshard: the optimizer
        # states, created at Trainer's first step, take their dtype.
        handle._use_sharded_views()
    return model, mixed_precision, total_params, quant_states


def _tagging_result(tracker, category: str, of):
    """Tag the tensor `of(handle, result)` names after the method runs."""
    def wrap(method):
        def wrapped(handle, *args, **kwargs):
            result = method(handle, *args, **kwargs)
            tensor = of(handle, result)
            if tensor is not None and tensor.untyped_storage().nbytes() > 0:
                tracker.tag(tensor, category, handle_name(handle))
            return result
        return wrapped
    return wrap


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share one storage: FSDP1 compares data pointers, which are all 0 under FakeTensorMode."""
    return a.untyped_storage()._cdata == b.untyped_storage()._cdata


def _storage_allocated(tensor: torch.Tensor) -> bool:
    """torch.distributed.utils._data_ptr_allocated on storages: fake tensors have no data pointer."""
    return tensor.untyped_storage().nbytes() > 0


def _unpinned(tensor: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    """Tensor.pin_memory for a fake host tensor: itself (pinning changes no device bytes)."""
    return tensor


def _catch_all_reshard(state) -> None:
    """torch's `_runtime_utils._catch_all_reshard` (the post-backward callback reshards every unit whose
    post-backward hook never ran, e.g. frozen units whose inputs need no gradient) with its already-resharded test
    on storages instead of data pointers."""
    from torch.distributed.fsdp._runtime_utils import _reshard, _should_free_in_backward

    handle = state._handle
    if handle:
        flat_param = handle.flat_param
        if _same_storage(flat_param, flat_param._local_shard) and not handle._skipped_use_sharded_views:
            return
        _reshard(state, handle, _should_free_in_backward(state, handle))


@contextlib.contextmanager
def instrument_fsdp1(tracker):
    """FSDP1's unshard, reshard and gradient code, reported to `tracker` for the block
    (torch/distributed/fsdp/_flat_param.py FlatParamHandle, _runtime_utils.py)."""
    import bitsandbytes.nn.modules as bnb_modules
    import torch.distributed.fsdp._flat_param as flat_param_module
    import torch.distributed.fsdp._runtime_utils as runtime
    from torch.distributed.fsdp._flat_param import FlatParamHandle

    from vramplan.measure.fsdp.tracker import fix_quant_state, in_unit

    def reduce_scatter(original):  # _reduce_grad(state, handle): the unsharded gradient, reduce-scattered
        def wrapped(state, handle):
            previous, tracker.unit = tracker.unit, handle_name(handle)
            try:
                tracker.tag(handle.flat_param.grad, UNSHARDED_GRADIENTS, tracker.unit)
                return original(state, handle)
            finally:
                tracker.unit = previous
        return wrapped

    def post_reduce(original):  # the sharded gradient, kept in `_saved_grad_shard` until the optimizer step
        def wrapped(state, handle, grad_to_offload):
            # NO_SHARD all-reduces `.grad` in place (_reduce_grad_no_shard); under CPUOffload the shard stays on the
            # device beside its host copy until prepare_gradient_for_optim
            flat = handle.flat_param
            kept = flat._saved_grad_shard if handle.uses_sharded_strategy else flat.grad
            tracker.tag(kept, GRADIENTS, handle_name(handle))
            return original(state, handle, grad_to_offload)
        return wrapped

    patches = [
        (FlatParamHandle, "pre_unshard", _tagging_result(
            tracker, ALL_GATHER_BUFFERS, lambda h, _: h.flat_param._mp_shard if h._uses_param_mixed_precision
            else None)),
        (FlatParamHandle, "unshard", _tagging_result(
            tracker, UNSHARDED_PARAMETERS,  # NO_SHARD gathers nothing
            lambda h, _: h._get_padded_unsharded_flat_param() if h.uses_sharded_strategy else None)),
        *((FlatParamHandle, name, in_unit(tracker, handle_name))
          for name in ("pre_unshard", "unshard", "post_unshard", "reshard", "post_reshard",
                       "prepare_gradient_for_optim")),
        (runtime, "_reduce_grad", reduce_scatter),
        (runtime, "_post_reduce_grad_callback", post_reduce),
        (runtime, "_catch_all_reshard", lambda _: _catch_all_reshard),
        # SHARD_GRAD_OP keeps the unsharded views and asserts the gathered storage exists by its data pointer
        (flat_param_module, "_data_ptr_allocated", lambda _: _storage_allocated),
        # CPUOffload pins its host shards and gradients (host memory: no device bytes); fake tensors cannot be pinned
        (torch.Tensor, "pin_memory", lambda _: _unpinned),
        # bitsandbytes re-attaches the QuantState to FSDP's view of each 4-bit weight (see tracker.fix_quant_state)
        (bnb_modules, "fix_4bit_weight_quant_state_from_module", lambda _: fix_quant_state),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, wrap in patches:
            stack.enter_context(patched(owner, name, wrap))
        stack.enter_context(_cpu_stream_synchronize())
        yield


@contextlib.contextmanager
def _cpu_stream_synchronize():
    """CPUOffload's post-backward callback waits for the gradient copies to the host (`current_stream().synchronize()`,
    _runtime_utils._post_backward_final_callback); CPU streams have no such method: here, nothing to wait for."""
    stream_type = type(torch.cpu.current_stream())
    added = not hasattr(stream_type, "synchronize")
    if added:
        stream_type.synchronize = lambda self: None
    try:
        yield
    finally:
        if added:
            del stream_type.synchronize
