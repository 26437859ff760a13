"""How one FSDP2 rank's bytes are counted: a live-bytes tracker that sees through DTensor and storage resizes, and
the patches that file each allocation FSDP makes under what it is (sharded or gathered parameter, all-gather or
reduce-scatter buffer, unsharded gradient)."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from vramplan.measure.fake_step import patched, step_phases
from vramplan.measure.livebytes import (
    ACTIVATIONS,
    GRADIENTS,
    OPTIMIZER_STATES,
    TEMPORARIES,
    LiveBytesTracker,
    Snapshot,
    cuda_block_bytes,
)
from vramplan.result import (
    ALL_GATHER_BUFFERS,
    REDUCE_SCATTER_BUFFERS,
    REPLICATED_TENSORS,  # buffers and 4-bit QuantStates: FSDP does not shard them
    SHARDED_PARAMETERS,
    UNSHARDED_GRADIENTS,
    UNSHARDED_PARAMETERS,
)

FSDP_CATEGORIES = (
    SHARDED_PARAMETERS, REPLICATED_TENSORS, UNSHARDED_PARAMETERS, ALL_GATHER_BUFFERS, GRADIENTS,
    UNSHARDED_GRADIENTS, REDUCE_SCATTER_BUFFERS, OPTIMIZER_STATES, ACTIVATIONS, TEMPORARIES,
)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor is its own)."""
    return getattr(tensor, "_local_tensor", tensor)


@dataclass
class FsdpLiveBytesTracker(LiveBytesTracker):
    """LiveBytesTracker that sees through DTensor, follows storage resizes and keeps host-resident bytes out.

    The DTensor, `wait_tensor` and nested-fake-mode rules are those of torch's own FSDP2 tracker
    (torch/distributed/_tools/fsdp2_mem_tracker.py, `FSDPMemTracker.__torch_dispatch__`); the resize patch is
    `MemTracker._track_resize` (FSDP2 frees and re-allocates unsharded parameters by `storage.resize_`).
    """

    unit: str | None = None  # the FSDP unit whose unshard/reshard/reduce code is running
    # Per phase, the units holding all-gathered parameters or all-gather buffers when those bytes are at their most.
    most_gathered: dict[str, dict[str, int]] = field(default_factory=dict)
    host_phases: tuple[str, ...] = ()  # phases whose allocations live in host memory (CPU offload)
    _host: set[int] = field(default_factory=set)
    _entry_fake_mode: Any = None
    _saved_resize: Any = None

    def __enter__(self):
        from torch._guards import active_fake_mode

        self._entry_fake_mode = active_fake_mode()
        self._saved_resize = torch.UntypedStorage.resize_
        tracker, original = self, self._saved_resize

        def resize_(storage, size):
            result = original(storage, size)
            tracker._resized(storage)
            return result

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._saved_resize
        return super().__exit__(*exc)

    def reset_peak(self) -> None:
        super().reset_peak()
        self.most_gathered.clear()

    def _resized(self, storage) -> None:
        known = self._records.get(id(storage))
        nbytes = cuda_block_bytes(storage.nbytes())
        if known is not None and known[0] != nbytes:
            self._records[id(storage)] = (nbytes, known[1], known[2])
            self._record_free(id(storage))  # the allocator frees the old block and allocates the new size
            self._record_alloc(id(storage), storage.nbytes())
            self._grow(nbytes - known[0], (known[2], known[1]))

    def note_gathered(self) -> None:
        """Remember when this phase's gathered bytes (parameters and all-gather buffers) are at their most."""
        gathered = gathered_units(self._live_by_owner)
        if sum(gathered.values()) > sum(self.most_gathered.get(self.phase, {}).values()):
            self.most_gathered[self.phase] = gathered

    def _current_category(self) -> str:
        if self.unit is not None:
            return TEMPORARIES
        return super()._current_category()

    def track(self, tensor, category=None, module=None) -> None:
        storage = tensor.untyped_storage()
        if id(storage) in self._host:
            return
        if self.phase in self.host_phases and id(storage) not in self._records:
            self.to_host(tensor)
            return
        super().track(tensor, category, module)

    def to_host(self, tensor: torch.Tensor) -> None:
        """This storage lives in host memory (CPU offload): stop counting it."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._host:
            return
        record = self._records.pop(key, None)
        if record is not None:
            self._refresh_snapshots()
            self._record_free(key)
            self.live_bytes -= record[0]
            self._add_owner((record[2], record[1]), -record[0])
        else:
            weakref.finalize(storage, self._host.discard, key)
        self._host.add(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._guards import active_fake_mode
        from torch.distributed.tensor import DTensor

        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor run its local ops, which come back here
        if func is torch.ops._c10d_functional.wait_tensor.default and active_fake_mode():
            return args[0]  # the fake kernel returns a new tensor where eager returns its input
        if active_fake_mode() is not self._entry_fake_mode:
            return func(*args, **(kwargs or {}))  # DTensor's sharding propagation, not the rank's memory
        return super().__torch_dispatch__(func, types, args, kwargs)


def fsdp_categories(snapshot: Snapshot) -> dict[str, int]:
    totals = dict.fromkeys(FSDP_CATEGORIES, 0)
    for (_, category), nbytes in snapshot.by_owner.items():
        totals[category] = totals.get(category, 0) + nbytes
    return totals


def gathered_units(by_owner: dict[tuple[str, str], int]) -> dict[str, int]:
    """'<unit> (params)' / '<unit> (buffer)': bytes of all-gathered parameters and all-gather buffers per unit."""
    kinds = {UNSHARDED_PARAMETERS: "params", ALL_GATHER_BUFFERS: "buffer"}
    return {
        f"{module} ({kinds[category]})": nbytes
        for (module, category), nbytes in sorted(by_owner.items())
        if category in kinds and nbytes > 0
    }


def step_peaks(tracker: FsdpLiveBytesTracker) -> dict[str, Any]:
    """The FsdpStepTrace fields a measured step leaves on the tracker: peaks, phases, what was gathered."""
    phases = step_phases(tracker, fsdp_categories)
    measured = {phase.phase: tracker.phase_snapshots[phase.phase] for phase in phases}
    return dict(
        peak_allocated_bytes=tracker.peak_bytes,
        peak_phase=tracker.peak_phase,
        components=fsdp_categories(tracker.peak),
        phases=phases,
        gathered_at_peak={phase: gathered_units(snapshot.by_owner) for phase, snapshot in measured.items()},
        most_gathered={phase: units for phase, units in tracker.most_gathered.items() if phase in measured},
    )


def in_unit(tracker: FsdpLiveBytesTracker, name_of):
    """Run an FSDP unit's method (FSDP2's FSDPParamGroup, FSDP1's FlatParamHandle) with `tracker.unit` set to
    `name_of(unit)`: FSDP's own allocations in it are filed under that unit."""
    def wrap(method):
        def wrapped(unit, *args, **kwargs):
            previous, tracker.unit = tracker.unit, name_of(unit)
            try:
                return method(unit, *args, **kwargs)
            finally:
                tracker.note_gathered()
                tracker.unit = previous
        return wrapped
    return wrap


def sharded_gradient_hooks(params, tracker: FsdpLiveBytesTracker, owners: dict[int, str], offload_params: bool,
                           gradient_dtypes: set[str]) -> list:
    """FSDP2 sets each sharded gradient in foreach_reduce and runs the post-accumulate hooks itself: file it as a
    gradient (in host memory under CPU offload), noting its dtype in `gradient_dtypes`."""
    def on_sharded_grad(param):
        gradient_dtypes.add(str(param.grad.dtype).removeprefix("torch."))
        if offload_params:
            tracker.to_host(local_tensor(param.grad))
        else:
            tracker.tag(local_tensor(param.grad), GRADIENTS, owners.get(id(param), "(model)"))

    return [param.register_post_accumulate_grad_hook(on_sharded_grad) for param in params]


def track_sharded_parameters(model, tracker: FsdpLiveBytesTracker, owners: dict[int, str], offload_params: bool,
                             skip=lambda tensor: False) -> None:
    """Every sharded parameter of `model` as this rank holds it (host-resident under CPU offload), except those
    `skip` names (their storage is tracked otherwise), and the model's unsharded buffers."""
    for param in model.parameters():
        shard = local_tensor(param)
        if offload_params:
            tracker.to_host(shard)
        elif not skip(shard):
            tracker.tag(shard, SHARDED_PARAMETERS, owners.get(id(param), "(model)"))
    tracker.track_all(model.buffers(), REPLICATED_TENSORS)


def _tagging_allocate(tracker: FsdpLiveBytesTracker, category: str):
    """The flat all-gather output / reduce-scatter input and output (_fsdp_collectives.py, Default*.allocate)."""
    def wrap(method):
        def allocate(comm, *args, **kwargs):
            tensor = method(comm, *args, **kwargs)
            tracker.tag(tensor, category, tracker.unit or "(fsdp)")
            return tensor
        return allocate
    return wrap


def _tagging_outputs(tracker: FsdpLiveBytesTracker):
    """Each parameter's unsharded storage (_fsdp_param.py, FSDPParam.init_all_gather_outputs), then resized."""
    def wrap(method):
        def init_all_gather_outputs(fsdp_param, *args, **kwargs):
            method(fsdp_param, *args, **kwargs)
            for tensor in fsdp_param.all_gather_outputs:
                tracker.tag(tensor, UNSHARDED_PARAMETERS, tracker.unit or "(fsdp)")
        return init_all_gather_outputs
    return wrap


def _hooking_unsharded_grads(tracker: FsdpLiveBytesTracker):
    """Autograd's gradient of each unsharded parameter, in param_dtype, until post_backward reduce-scatters it."""
    def wrap(method):
        def init_unsharded_param(fsdp_param):
            method(fsdp_param)
            param = fsdp_param._unsharded_param
            if param.requires_grad and not getattr(param, "_vramplan_hooked", False):
                unit = tracker.unit or "(fsdp)"
                param.register_post_accumulate_grad_hook(
                    lambda p: tracker.tag(local_tensor(p.grad), UNSHARDED_GRADIENTS, unit)
                )
                param._vramplan_hooked = True
        return init_unsharded_param
    return wrap


def fix_quant_state(module) -> None:
    """bitsandbytes' `fix_4bit_weight_quant_state_from_module` without re-wrapping in Params4bit.

    FSDP2's all-gathered weight is a fresh Parameter without `quant_state`; bitsandbytes wraps it in Params4bit
    (a view, no allocation) and re-attaches the module's QuantState. Params4bit cannot wrap a FakeTensor, so the
    state is attached to the Parameter itself, which is all `Linear4bit.forward` reads.
    """
    if getattr(module.weight, "quant_state", None) is None:
        module.weight.quant_state = module.quant_state


@contextlib.contextmanager
def instrument_fsdp(tracker: FsdpLiveBytesTracker):
    """FSDP2's unshard/reshard/reduce code and its buffers, reported to `tracker` for the block."""
    import bitsandbytes.nn.modules as bnb_modules
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    group_methods = ("unshard", "wait_for_unshard", "reshard", "post_backward")
    patches = [
        *((FSDPParamGroup, name, in_unit(tracker, lambda group: group._module_fqn or "(root)"))
          for name in group_methods),
        (collectives.DefaultAllGather, "allocate", _tagging_allocate(tracker, ALL_GATHER_BUFFERS)),
        (collectives.DefaultReduceScatter, "allocate", _tagging_allocate(tracker, REDUCE_SCATTER_BUFFERS)),
        (FSDPParam, "init_all_gather_outputs", _tagging_outputs(tracker)),
        (FSDPParam, "init_unsharded_param", _hooking_unsharded_grads(tracker)),
        (bnb_modules, "fix_4bit_weight_quant_state_from_module", lambda _: fix_quant_state),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, wrap in patches:
            stack.enter_context(patched(owner, name, wrap))
        yield
