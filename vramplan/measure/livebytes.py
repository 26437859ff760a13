"""Count the bytes of live tensor storage while real (or fake) PyTorch code runs.

A TorchDispatchMode sees every tensor an operator returns; each new storage is
registered with a finalizer, so the live total falls when autograd or Python
frees it. The running maximum is what `torch.cuda.max_memory_allocated` reports
for the same code on a GPU, once sizes are rounded like the CUDA caching
allocator rounds them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize = 512, every block is a multiple of it.
CUDA_ALLOCATION_GRANULE_BYTES = 512


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
class LiveBytesTracker(TorchDispatchMode):
    """Live storage bytes, their peak, and the phase in which the peak happened."""

    live_bytes: int = 0
    peak_bytes: int = 0
    phase: str = "setup"
    peak_phase: str = "setup"
    phase_peaks: dict[str, int] = field(default_factory=dict)
    # Return uninitialised outputs for mm/addmm/bmm: same allocation, no arithmetic (bf16 GEMMs are very slow on
    # CPUs without bf16 units, and a memory count never reads the values).
    skip_matmul_arithmetic: bool = False
    _sizes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes
        self.peak_phase = self.phase
        self.phase_peaks = {}

    def track(self, tensor: torch.Tensor) -> None:
        """Count the storage behind `tensor` (once, however many views share it)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        nbytes = cuda_block_bytes(storage.nbytes())
        known = self._sizes.get(key)
        if known is None:
            self._sizes[key] = nbytes
            weakref.finalize(storage, self._release, key)
            self._grow(nbytes)
        elif known != nbytes:  # resize_ on an existing storage
            self._sizes[key] = nbytes
            self._grow(nbytes - known)

    def track_all(self, tensors) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self.track(tensor)

    def _grow(self, delta: int) -> None:
        self.live_bytes += delta
        phase_peak = self.phase_peaks.get(self.phase, 0)
        if self.live_bytes > phase_peak:
            self.phase_peaks[self.phase] = self.live_bytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_phase = self.phase

    def _release(self, key: int) -> None:
        nbytes = self._sizes.pop(key, 0)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shape = _matmul_shape(func, args) if self.skip_matmul_arithmetic else None
        if shape is not None and not kwargs:
            out = torch.empty(shape, dtype=args[-1].dtype, device=args[-1].device)
        else:
            out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out
