"""What the GPU adds beyond live tensors: the caching allocator's reserve and the CUDA context."""

from __future__ import annotations

# MEMORY_FACTS.md "What the GPU adds": CUDA context 300-600 MB by GPU, driver and lazy loading (PyTorch issue
# 109888). Until probes measure it per GPU family (issue 5), the upper end is used, so device_bytes errs high.
CUDA_CONTEXT_BYTES = 600 * 1000**2
# c10/cuda/CUDACachingAllocator.cpp: kRoundLarge = 2 MiB (large segments are multiples of it);
# kSmallBuffer = 2 MiB (the segment small allocations are carved from).
LARGE_SEGMENT_ROUND_BYTES = 2 * 1024**2
SMALL_SEGMENT_BYTES = 2 * 1024**2


def reserved_bytes(peak_allocated: int) -> int:
    """Caching allocator reserve at the peak: allocated rounded up to whole 2 MiB segments plus one small-block
    pool. A lower bound: fragmentation slack is fitted from GPU probes in the pre-flight/probe issue."""
    rounded = -(-peak_allocated // LARGE_SEGMENT_ROUND_BYTES) * LARGE_SEGMENT_ROUND_BYTES
    return rounded + SMALL_SEGMENT_BYTES


def device_bytes(reserved: int, paged_bytes: int) -> int:
    """What nvidia-smi shows: reserved memory, the CUDA context, and managed (paged) optimizer state."""
    return reserved + CUDA_CONTEXT_BYTES + paged_bytes
