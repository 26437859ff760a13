"""A replay of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, DeviceCachingAllocator), rule
by rule, for a stream of allocations and frees: what the GPU would have reserved, how fragmented it is, and whether
the stream runs out of memory on a card of a given size.

Modelled: the small (<= 1 MiB) and large pools; `round_size` (512-byte blocks, `roundup_power2_divisions`);
`get_allocation_size` (2 MiB small segments, 20 MiB segments for 1-10 MiB requests, 2 MiB rounding above); best-fit
search by (stream, size, address) (`get_free_block`, with the `max_split_size` oversize rules); `should_split`;
merging on free (`free_block`, `try_merge_blocks`); and under a capacity, what `malloc` does before it raises:
`release_available_cached_blocks` (with `max_split_size`), then `release_cached_blocks` (every unsplit cached
segment) and one retry. Not modelled yet: `expandable_segments:True`, `garbage_collection_threshold` (it acts only
with a memory fraction set), cross-stream events (`record_stream`), CUDA graph pools.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field

from pydantic import BaseModel

# CUDACachingAllocator.cpp constants (the values of torch 2.x).
K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1_048_576  # kSmallSize: the largest "small" allocation, 1 MiB
K_SMALL_BUFFER = 2_097_152  # kSmallBuffer: small allocations are packed in 2 MiB segments
K_LARGE_BUFFER = 20_971_520  # kLargeBuffer: allocations between 1 and 10 MiB may use a 20 MiB segment
K_MIN_LARGE_ALLOC = 10_485_760  # kMinLargeAlloc: from 10 MiB, a segment of the request's own (rounded) size
K_ROUND_LARGE = 2_097_152  # kRoundLarge: large segments are rounded up to 2 MiB


class AllocatorConfig(BaseModel):
    """The PYTORCH_CUDA_ALLOC_CONF settings the replay honours (c10/cuda/CUDAAllocatorConfig)."""

    max_split_size: int | None = None  # max_split_size_mb in bytes; None: unlimited (the default)
    roundup_power2_divisions: int = 0  # 0 or 1: off (the default)


class ReplayResult(BaseModel):
    peak_allocated_bytes: int  # the largest sum of live blocks (block sizes, as torch's allocated_bytes counts them)
    peak_reserved_bytes: int  # the largest sum of segments, as max_memory_reserved
    fragmentation_at_peak_bytes: int  # reserved - allocated at the allocated peak: cached, unused
    largest_free_block_at_peak_bytes: int  # the largest cached block at the allocated peak
    segments_at_peak: int  # segments held at the allocated peak
    oom: bool  # the stream could not be served within the capacity, even after freeing the cache
    oom_at: int | None = None  # index of the allocation that failed


@dataclass(eq=False)
class _Block:
    stream: int
    size: int
    ptr: int
    small: bool
    allocated: bool = False
    prev: _Block | None = None
    next: _Block | None = None
    serial: int = field(default_factory=itertools.count().__next__)

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.stream, self.size, self.ptr, self.serial)

    @property
    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


def round_size(size: int, config: AllocatorConfig = AllocatorConfig()) -> int:
    """`round_size`: at least 512 bytes, a multiple of 512, or the next power-of-two division when configured."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    divisions = config.roundup_power2_divisions
    if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
        return _roundup_power2_next_division(size, divisions)
    return K_MIN_BLOCK_SIZE * math.ceil(size / K_MIN_BLOCK_SIZE)


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    """`roundup_power2_next_division`: the next of `divisions` equal steps between two powers of two."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded = size & ~(step - 1)
    return size if rounded == size else rounded + step


def allocation_size(size: int) -> int:
    """`get_allocation_size`: the segment cudaMalloc'd for a (rounded) request no cached block serves."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * math.ceil(size / K_ROUND_LARGE)


class CachingAllocator:
    """One device's caching allocator; `capacity_bytes` is what cudaMalloc may hand out in all (None: unlimited)."""

    def __init__(self, config: AllocatorConfig = AllocatorConfig(), capacity_bytes: int | None = None):
        self.config = config
        self.capacity = capacity_bytes
        self.pools: dict[bool, list[tuple]] = {True: [], False: []}  # small?: sorted keys of free blocks
        self.free_by_key: dict[tuple, _Block] = {}
        self.reserved = 0
        self.allocated = 0
        self.segments = 0
        self._next_ptr = itertools.count(1)

    # --- the pools -----------------------------------------------------------------------------------------------

    def _insert(self, block: _Block) -> None:
        bisect.insort(self.pools[block.small], block.key)
        self.free_by_key[block.key] = block

    def _remove(self, block: _Block) -> None:
        keys = self.pools[block.small]
        del keys[bisect.bisect_left(keys, block.key)]
        del self.free_by_key[block.key]

    def _max_split(self) -> float:
        return math.inf if self.config.max_split_size is None else self.config.max_split_size

    # --- malloc and free ---------------------------------------------------------------------------------------

    def malloc(self, requested: int, stream: int = 0) -> _Block | None:
        """The block serving a request, or None when the device is out of memory (as malloc raises)."""
        size = round_size(requested, self.config)
        small = size <= K_SMALL_SIZE
        block = self._get_free_block(size, small, stream)
        if block is None:
            block = (self._alloc_block(size, small, stream)
                     or (self._release_available_cached_blocks(size, small, stream)
                         and self._alloc_block(size, small, stream))
                     or (self._release_cached_blocks() and self._alloc_block(size, small, stream)))
            if not block:
                return None
        if self._should_split(block, size):
            rest = _Block(stream, block.size - size, block.ptr + size, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert(rest)
        block.allocated = True
        self.allocated += block.size
        return block

    def free(self, block: _Block) -> None:
        """`free_block`: back to its pool, merged with free neighbours of its segment."""
        block.allocated = False
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove(neighbour)
                if neighbour is block.prev:
                    block.ptr, block.prev = neighbour.ptr, neighbour.prev
                    if block.prev is not None:
                        block.prev.next = block
                else:
                    block.next = neighbour.next
                    if block.next is not None:
                        block.next.prev = block
                block.size += neighbour.size
        self._insert(block)

    def _get_free_block(self, size: int, small: bool, stream: int) -> _Block | None:
        """Best fit: the smallest cached block of the stream at least `size` (lowest address on ties), except an
        oversize block for a normal request, or one more than 20 MiB over an oversize request."""
        keys = self.pools[small]
        at = bisect.bisect_left(keys, (stream, size, -1, -1))
        if at == len(keys) or keys[at][0] != stream:
            return None
        block = self.free_by_key[keys[at]]
        max_split = self._max_split()
        if size < max_split <= block.size:
            return None
        if size >= max_split and block.size >= size + K_LARGE_BUFFER:
            return None
        self._remove(block)
        return block

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self._max_split() and remaining > K_SMALL_SIZE

    def _alloc_block(self, size: int, small: bool, stream: int) -> _Block | None:
        """cudaMalloc of a new segment, within the capacity."""
        segment = allocation_size(size)
        if self.capacity is not None and self.reserved + segment > self.capacity:
            return None
        self.reserved += segment
        self.segments += 1
        return _Block(stream, segment, next(self._next_ptr) << 40, small)

    def _release_block(self, block: _Block) -> None:
        self._remove(block)
        self.reserved -= block.size
        self.segments -= 1

    def _release_available_cached_blocks(self, size: int, small: bool, stream: int) -> bool:
        """With max_split_size set: free one cached oversize block big enough, or several, largest first."""
        if self.config.max_split_size is None:
            return False
        keys = self.pools[small]
        target = max(size, self.config.max_split_size)
        at = bisect.bisect_left(keys, (stream, target, -1, -1))
        if at < len(keys) and keys[at][0] == stream:
            self._release_block(self.free_by_key[keys[at]])
            return True
        released, at = 0, at - 1
        while at >= 0 and released < target:
            key = keys[at]
            if key[0] != stream or key[1] < self.config.max_split_size:
                break
            released += key[1]
            self._release_block(self.free_by_key[key])
            at -= 1
        return released >= target

    def _release_cached_blocks(self) -> bool:
        """`release_cached_blocks`: every cached segment that is not split, from both pools."""
        for small in (True, False):
            for key in list(self.pools[small]):
                block = self.free_by_key[key]
                if not block.is_split:
                    self._release_block(block)
        return True

    def largest_free_block(self, stream: int = 0) -> int:
        """The largest cached block of `stream` (the pools are sorted by stream, then size)."""
        sizes = []
        for keys in self.pools.values():
            at = bisect.bisect_left(keys, (stream + 1, -1, -1, -1)) - 1
            if at >= 0 and keys[at][0] == stream:
                sizes.append(keys[at][1])
        return max(sizes, default=0)


def replay(events: list[tuple[str, int, int]], config: AllocatorConfig = AllocatorConfig(),
           capacity_bytes: int | None = None) -> ReplayResult:
    """Replay `events`, each ("alloc", id, bytes), ("free", id, 0) or ("reset", 0, 0), through the allocator. The
    peaks count from the last reset, as torch.cuda.reset_peak_memory_stats makes them: the current figures."""
    allocator = CachingAllocator(config, capacity_bytes)
    live: dict[int, _Block] = {}
    peak = {"allocated": 0, "reserved": 0, "fragmentation": 0, "largest": 0, "segments": 0}

    def at_allocated_peak() -> None:
        peak.update(allocated=allocator.allocated, fragmentation=allocator.reserved - allocator.allocated,
                    largest=allocator.largest_free_block(), segments=allocator.segments)

    def result(oom_at: int | None = None) -> ReplayResult:
        return ReplayResult(peak_allocated_bytes=peak["allocated"], peak_reserved_bytes=peak["reserved"],
                            fragmentation_at_peak_bytes=peak["fragmentation"],
                            largest_free_block_at_peak_bytes=peak["largest"], segments_at_peak=peak["segments"],
                            oom=oom_at is not None, oom_at=oom_at)

    for index, (action, tensor, nbytes) in enumerate(events):
        if action == "free":
            allocator.free(live.pop(tensor))
        elif action == "reset":  # the peaks start over at the current figures
            at_allocated_peak()
            peak["reserved"] = allocator.reserved
        else:
            block = allocator.malloc(nbytes)
            if block is None:
                return result(oom_at=index)
            live[tensor] = block
            peak["reserved"] = max(peak["reserved"], allocator.reserved)
            if allocator.allocated > peak["allocated"]:
                at_allocated_peak()
    return result()
