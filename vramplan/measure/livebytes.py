"""Count the bytes of live tensor storage while real (or fake) PyTorch code runs.

A TorchDispatchMode sees every tensor an operator returns; each new storage is
registered with a finalizer, so the live total falls when autograd or Python
frees it. The running maximum is what `torch.cuda.max_memory_allocated` reports
for the same code on a GPU, once sizes are rounded like the CUDA caching
allocator rounds them.

Each storage also carries a category (parameters, gradients, optimizer states,
activations, temporaries) and the module that allocated it, so the peak can be
broken down by both. Categories start from the phase a storage is born in and
are corrected by `tag` when the step learns more (a gradient once autograd
accumulates it, an optimizer state once the optimizer holds it).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vramplan.allocator.caching import TracedEvent

# c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize = 512, every block is a multiple of it.
CUDA_ALLOCATION_GRANULE_BYTES = 512

PARAMETERS = "parameters"
GRADIENTS = "gradients"
OPTIMIZER_STATES = "optimizer_states"
ACTIVATIONS = "activations"
TEMPORARIES = "temporaries"
CATEGORIES = (PARAMETERS, GRADIENTS, OPTIMIZER_STATES, ACTIVATIONS, TEMPORARIES)

# What a storage born in each phase is, until `tag` says otherwise.
_PHASE_CATEGORY = {
    "setup": PARAMETERS,
    "warmup": OPTIMIZER_STATES,
    "forward": ACTIVATIONS,
    "backward": TEMPORARIES,
    "optimizer": TEMPORARIES,
    "idle": TEMPORARIES,
}
UNATTRIBUTED = "(no module)"
_DEFAULT_CPU_STREAM = torch.cpu.current_stream()  # torch/cpu/__init__.py _default_cpu_stream


def cuda_block_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator charges to `memory_allocated` for one storage."""
    if nbytes == 0:
        return 0
    granule = CUDA_ALLOCATION_GRANULE_BYTES
    return -(-nbytes // granule) * granule


def _matmul_shape(func, args) -> list[int] | None:
    """Output shape of the matrix products whose values a memory trace does not need."""
    if func is torch.ops.aten.mm.default:
        return [args[0].shape[0], args[1].shape[1]]
    if func is torch.ops.aten.addmm.default:
        return [args[1].shape[0], args[2].shape[1]]
    if func is torch.ops.aten.bmm.default:
        return [args[0].shape[0], args[0].shape[1], args[1].shape[2]]
    return None


@dataclass
class Snapshot:
    """Live bytes at one moment, by (module, category)."""

    total_bytes: int = 0
    by_owner: dict[tuple[str, str], int] = field(default_factory=dict)

    def by_category(self) -> dict[str, int]:
        totals = dict.fromkeys(CATEGORIES, 0)
        for (_, category), nbytes in self.by_owner.items():
            totals[category] += nbytes
        return totals


# The use counts, seen from the tracker's dispatch mode during the engine's accumulate, of a gradient the input
# buffer holds the last reference to (the buffer's, the call's and the Python object's): of its storage, and of the
# tensor itself (can_accumulate_inplace's `adjusted_use_count(v) == 1`). Measured:
# tests/measure/test_gradient_accumulation.py.
LAST_REFERENCE_STORAGE_USES = 2
LAST_REFERENCE_TENSOR_USES = 4


def accumulates_in_place(old: object, new: object = None, *rest: object) -> bool:
    """Whether autograd's InputBuffer on a GPU would add `new` into `old` in place (can_accumulate_inplace(old)):
    `old` dense and held by the buffer alone; `new` of its shape and dtype."""
    if rest or not isinstance(old, torch.Tensor) or not isinstance(new, torch.Tensor):
        return False
    if torch.is_grad_enabled():  # backward with create_graph: the engine sums out of place
        return False
    if old.shape != new.shape or old.dtype != new.dtype or not _non_overlapping_and_dense(old):
        return False
    storage = old.untyped_storage()._cdata
    if storage == new.untyped_storage()._cdata:  # one gradient sent twice: the buffer's is not the last reference
        return False
    return (torch._C._storage_Use_Count(storage) <= LAST_REFERENCE_STORAGE_USES
            and old._use_count() <= LAST_REFERENCE_TENSOR_USES)


def _non_overlapping_and_dense(tensor: torch.Tensor) -> bool:
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    return is_non_overlapping_and_dense_or_false(tensor)


@dataclass
class LiveBytesTracker(TorchDispatchMode):
    """Live storage bytes, their peak, the phase of the peak, and who holds the bytes at each peak."""

    live_bytes: int = 0
    peak_bytes: int = 0
    phase: str = "setup"
    peak_phase: str = "setup"
    phase_peaks: dict[str, int] = field(default_factory=dict)
    # Return uninitialised outputs for mm/addmm/bmm: same allocation, no arithmetic (bf16 GEMMs are very slow on
    # CPUs without bf16 units, and a memory count never reads the values). Fake tensors need no such help.
    skip_matmul_arithmetic: bool = False
    # The module whose forward is running (maintained by the caller's module hooks), for attribution.
    module: str = UNATTRIBUTED
    recomputing: bool = False
    # Set between autograd nodes in backward (fake_step.gpu_gradient_accumulation): where the engine sums two
    # gradients of one tensor, in place on a GPU.
    accumulating: bool = False
    peak: Snapshot = field(default_factory=Snapshot)
    phase_snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _records: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    # The ordered allocations and frees, for a replay through the caching allocator (vramplan/allocator):
    # ("alloc", serial, bytes), ("free", serial, 0), and ("reset", 0, 0) where the measured step starts.
    events: list[TracedEvent] = field(default_factory=list)  # the allocator stream (allocator/caching.py)
    _serials: dict[int, int] = field(default_factory=dict)
    _streams: dict[int, int] = field(default_factory=dict)  # id of a side stream: its index
    _live_by_owner: dict[tuple[str, str], int] = field(default_factory=dict)
    _peak_stale: bool = False
    _phase_stale: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def set_phase(self, phase: str) -> None:
        self._refresh_snapshots()
        self.phase = phase
        if self.live_bytes > self.phase_peaks.get(phase, -1):  # a phase's peak may be where it starts
            self.phase_peaks[phase] = self.live_bytes
            self._phase_stale = True

    def reset_peak(self) -> None:
        self._refresh_snapshots()
        self.events.append(("reset", 0, 0, 0))
        self.peak_bytes = self.live_bytes
        self.peak_phase = self.phase
        self.phase_peaks = {}
        self.phase_snapshots = {}
        self.peak = self._snapshot()

    def finish(self) -> None:
        """Take any snapshot still owed; call once the measured code has run."""
        self._refresh_snapshots()

    def track(self, tensor: torch.Tensor, category: str | None = None, module: str | None = None) -> None:
        """Count the storage behind `tensor` (once, however many views share it)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        nbytes = cuda_block_bytes(storage.nbytes())
        known = self._records.get(key)
        if known is None:
            owner = (module or self._current_module(), category or self._current_category())
            self._records[key] = (nbytes, owner[1], owner[0])
            weakref.finalize(storage, self._release, key)
            self._record_alloc(key, storage.nbytes())
            self._grow(nbytes, owner)
        elif known[0] != nbytes:  # resize_ on an existing storage: the allocator frees the block, allocates anew
            self._records[key] = (nbytes, known[1], known[2])
            self._record_free(key)
            self._record_alloc(key, storage.nbytes())
            self._grow(nbytes - known[0], (known[2], known[1]))

    def track_all(self, tensors, category: str | None = None, module: str | None = None) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self.track(tensor, category, module)

    def tag(self, tensor: torch.Tensor, category: str, module: str) -> None:
        """Say what an already counted storage is (a gradient, an optimizer state)."""
        key = id(tensor.untyped_storage())
        known = self._records.get(key)
        if known is None:
            self.track(tensor, category, module)
            return
        nbytes, old_category, old_module = known
        if (old_category, old_module) == (category, module):
            return
        self._records[key] = (nbytes, category, module)
        self._add_owner((old_module, old_category), -nbytes)
        self._add_owner((module, category), nbytes)

    def _current_category(self) -> str:
        if self.recomputing:
            return ACTIVATIONS  # checkpointing recomputes a layer's forward during backward
        return _PHASE_CATEGORY.get(self.phase, TEMPORARIES)

    def _current_module(self) -> str:
        if self.module != UNATTRIBUTED:
            return self.module
        return f"({self.phase})"

    def _add_owner(self, owner: tuple[str, str], delta: int) -> None:
        total = self._live_by_owner.get(owner, 0) + delta
        if total:
            self._live_by_owner[owner] = total
        else:
            self._live_by_owner.pop(owner, None)

    def _snapshot(self) -> Snapshot:
        return Snapshot(total_bytes=self.live_bytes, by_owner=dict(self._live_by_owner))

    def _refresh_snapshots(self) -> None:
        # Snapshots are taken lazily, just before the first release after a new peak, so a run of allocations
        # copies the owner table once rather than once per allocation.
        if self._peak_stale:
            self.peak = self._snapshot()
            self._peak_stale = False
        if self._phase_stale:
            self.phase_snapshots[self.phase] = self._snapshot()
            self._phase_stale = False

    def _grow(self, delta: int, owner: tuple[str, str]) -> None:
        if delta < 0:
            self._refresh_snapshots()
        self.live_bytes += delta
        self._add_owner(owner, delta)
        if self.live_bytes > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.live_bytes
            self._phase_stale = True
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_phase = self.phase
            self._peak_stale = True

    def _record_alloc(self, key: int, nbytes: int) -> None:
        if nbytes:
            serial = len(self.events)
            self._serials[key] = serial
            self.events.append(("alloc", serial, nbytes, self._stream_index(), self.phase, self._current_module()))

    def _stream_index(self) -> int:
        """Which stream the allocation is made on: 0 for the default stream, then 1, 2, ... in order of first use.
        On CPU, torch.cpu.stream(s) sets what torch.cpu.current_stream() returns, so FSDP2's all-gather and
        reduce-scatter streams (device-agnostic code) are seen as on CUDA."""
        stream = torch.cpu.current_stream()
        if stream is _DEFAULT_CPU_STREAM:
            return 0
        return self._streams.setdefault(id(stream), len(self._streams) + 1)

    def _record_free(self, key: int) -> None:
        serial = self._serials.pop(key, None)
        if serial is not None:
            self.events.append(("free", serial, 0, 0))

    def _release(self, key: int) -> None:
        record = self._records.pop(key, None)
        if record is None:
            return
        self._record_free(key)
        self._refresh_snapshots()
        nbytes, category, module = record
        self.live_bytes -= nbytes
        self._add_owner((module, category), -nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.accumulating and func is torch.ops.aten.add.Tensor and not kwargs and accumulates_in_place(*args):
            # torch/csrc/autograd/input_buffer.cpp accumulate: `old_var.add_(var)` when can_accumulate_inplace(old_var)
            # (a dense tensor the buffer holds the last reference to). A fake tensor is "subclass-like", so the engine
            # takes `old_var + var` instead, an allocation a GPU does not make: the in-place add is what runs here.
            return torch.ops.aten.add_.Tensor(*args)
        shape = _matmul_shape(func, args) if self.skip_matmul_arithmetic else None
        if shape is not None and not kwargs:
            out = torch.empty(shape, dtype=args[-1].dtype, device=args[-1].device)
        else:
            out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out
