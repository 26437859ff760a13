"""A replay of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, DeviceCachingAllocator), rule
by rule, for a stream of allocations and frees: what the GPU would have reserved, how fragmented it is, and whether
the stream runs out of memory on a card of a given size.

Modelled: the small (<= 1 MiB) and large pools, one per CUDA stream (a block freed on one stream serves only
requests on that stream); `round_size` (512-byte blocks, `roundup_power2_divisions`); `get_allocation_size` (2 MiB
small segments, 20 MiB segments for 1-10 MiB requests, 2 MiB rounding above); best-fit search by (stream, size,
address) (`get_free_block`, with the `max_split_size` oversize rules); `should_split`; merging on free (`free_block`,
`try_merge_blocks`); `expandable_segments:True` (`find_expandable_block`, `try_allocate_expandable_block`,
`map_block`, `unmap_block`: one growing segment per stream and pool, mapped in 2 MiB / 20 MiB pages, every block
split); and under a capacity, what `malloc` does before it raises: `garbage_collect_cached_blocks` (only with a
memory fraction, as torch), `release_available_cached_blocks` (with `max_split_size`), then `release_cached_blocks`
(every unsplit cached segment; free pages of expandable segments unmapped) and one retry.
Not modelled: cross-stream use (`record_stream`, events that delay a free), CUDA graph pools, IPC.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel

# CUDACachingAllocator.cpp constants (the values of torch 2.x).
K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1_048_576  # kSmallSize: the largest "small" allocation, 1 MiB
K_SMALL_BUFFER = 2_097_152  # kSmallBuffer: small allocations are packed in 2 MiB segments
K_LARGE_BUFFER = 20_971_520  # kLargeBuffer: allocations between 1 and 10 MiB may use a 20 MiB segment
K_MIN_LARGE_ALLOC = 10_485_760  # kMinLargeAlloc: from 10 MiB, a segment of the request's own (rounded) size
K_ROUND_LARGE = 2_097_152  # kRoundLarge: large segments are rounded up to 2 MiB
# find_expandable_block: `segment_size = pool->is_small ? kSmallBuffer : kLargeBuffer`, the page an expandable
# segment maps at a time; its virtual range is ExpandableSegment's `totalGlobalMem + totalGlobalMem / 8`.
EXPANDABLE_VIRTUAL_BYTES_UNLIMITED = 1 << 50
# Where the replay places segments: far apart, and a multiple of both page sizes, so pages align as in the segment.
SEGMENT_SPACING = K_LARGE_BUFFER << 26

# An event of the stream: ("alloc", id, bytes[, stream]), ("free", id, 0[, stream]) or ("reset", 0, 0).
Event = tuple
# An event as a trace records it (measure/livebytes.py): ("alloc", id, bytes, stream, phase, module),
# ("free", id, 0, 0) or ("reset", 0, 0, 0).
TracedEvent = tuple[str, int, int, int] | tuple[str, int, int, int, str, str]


class AllocatorConfig(BaseModel):
    """The PYTORCH_CUDA_ALLOC_CONF settings the replay honours (c10/cuda/CUDAAllocatorConfig)."""

    max_split_size: int | None = None  # max_split_size_mb in bytes; None: unlimited (the default)
    roundup_power2_divisions: int = 0  # 0 or 1: off (the default)
    expandable_segments: bool = False
    garbage_collection_threshold: float = 0.0  # acts only with a memory fraction, as in torch
    # set_per_process_memory_fraction / per_process_memory_fraction: the allocator's own limit, a share of the
    # capacity (torch's `set_fraction`, `allowed_memory_maximum`); None: no fraction set (the default)
    per_process_memory_fraction: float | None = None
    max_non_split_rounding: int = K_LARGE_BUFFER  # max_non_split_rounding_mb: how far over an oversize request


class ReplayResult(BaseModel):
    peak_allocated_bytes: int  # the largest sum of live blocks (block sizes, as torch's allocated_bytes counts them)
    peak_reserved_bytes: int  # the largest sum of segments (mapped pages when expandable), as max_memory_reserved
    fragmentation_at_peak_bytes: int  # reserved - allocated at the allocated peak: cached, unused
    largest_free_block_at_peak_bytes: int  # the largest cached block at the allocated peak
    segments_at_peak: int  # segments held at the allocated peak
    oom: bool  # the stream could not be served within the capacity, even after freeing the cache
    oom_at: int | None = None  # index of the allocation that failed
    streams: int = 1  # CUDA streams the allocations came from


@dataclass(eq=False)
class _Block:
    stream: int
    size: int
    ptr: int
    small: bool
    allocated: bool = False
    prev: _Block | None = None
    next: _Block | None = None
    mapped: bool = True
    expandable: bool = False
    gc_base: int = 0  # the pool's get_free_block count when the block was cached (Block::gc_count_base)
    serial: int = field(default_factory=itertools.count().__next__)

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.stream, self.size, self.ptr, self.serial)

    @property
    def address_key(self) -> tuple[int, int, int]:
        return (self.stream, self.ptr, self.serial)

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


def page_size(small: bool) -> int:
    """The page an expandable segment of the pool maps at a time (find_expandable_block's segment_size)."""
    return K_SMALL_BUFFER if small else K_LARGE_BUFFER


class CachingAllocator:
    """One device's caching allocator; `capacity_bytes` is what cudaMalloc may hand out in all (None: unlimited).
    With `per_process_memory_fraction` the allocator's limit is that share of the capacity, and only then does
    `garbage_collection_threshold` act (torch's `set_fraction`)."""

    def __init__(self, config: AllocatorConfig = AllocatorConfig(), capacity_bytes: int | None = None):
        self.config = config
        fraction = config.per_process_memory_fraction
        self.fraction_limit = None if fraction is None or capacity_bytes is None else int(fraction * capacity_bytes)
        self.capacity = capacity_bytes if self.fraction_limit is None else min(capacity_bytes, self.fraction_limit)
        self.pools: dict[bool, list[tuple]] = {True: [], False: []}  # small?: sorted keys of free mapped blocks
        self.free_by_key: dict[tuple, _Block] = {}
        self.unmapped: dict[bool, list[tuple]] = {True: [], False: []}  # small?: address keys of unmapped blocks
        self.unmapped_by_key: dict[tuple, _Block] = {}
        self.get_free_block_calls = {True: 0, False: 0}  # BlockPool::get_free_blocks_call_count
        self.reserved = 0
        self.allocated = 0
        self.segments = 0
        self.segment_sizes: Counter[int] = Counter()  # cudaMalloc'd segments held, by size (not expandable ones)
        self._next_ptr = itertools.count(1)

    # --- the pools -----------------------------------------------------------------------------------------------

    def _insert(self, block: _Block) -> None:
        if not block.mapped:
            bisect.insort(self.unmapped[block.small], block.address_key)
            self.unmapped_by_key[block.address_key] = block
            return
        block.gc_base = self.get_free_block_calls[block.small]
        bisect.insort(self.pools[block.small], block.key)
        self.free_by_key[block.key] = block

    def _remove(self, block: _Block) -> None:
        if not block.mapped:
            keys = self.unmapped[block.small]
            del keys[bisect.bisect_left(keys, block.address_key)]
            del self.unmapped_by_key[block.address_key]
            return
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
            self._garbage_collect_cached_blocks()
            block = (self._alloc_block(size, small, stream)
                     or (self._release_available_cached_blocks(size, small, stream)
                         and self._alloc_block(size, small, stream))
                     or (self._release_cached_blocks() and self._alloc_block(size, small, stream)))
            if not block:
                return None
        if self._should_split(block, size):
            rest = _Block(stream, block.size - size, block.ptr + size, small, prev=block, next=block.next,
                          expandable=block.expandable)
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
        self._merge_neighbours(block)
        self._insert(block)

    def _merge_neighbours(self, block: _Block) -> None:
        """`try_merge_blocks` with both neighbours: free ones in the same state (mapped or not) join `block`."""
        for neighbour in (block.prev, block.next):
            if neighbour is None or neighbour.allocated or neighbour.mapped != block.mapped:
                continue
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

    def _get_free_block(self, size: int, small: bool, stream: int) -> _Block | None:
        """Best fit: the smallest cached block of the stream at least `size` (lowest address on ties), except an
        oversize block for a normal request, or one more than max_non_split_rounding (20 MiB) over an oversize
        request. With expandable segments a block at a segment's growing end counts as the size it can grow to, so
        a later block that is smaller by that measure is taken instead."""
        self.get_free_block_calls[small] += 1
        keys = self.pools[small]
        at = bisect.bisect_left(keys, (stream, size, -1, -1))
        if at == len(keys) or keys[at][0] != stream:
            return None
        if self.config.expandable_segments:
            while (at + 1 < len(keys) and keys[at + 1][0] == stream
                   and self._expandable_size(self.free_by_key[keys[at + 1]])
                   < self._expandable_size(self.free_by_key[keys[at]])):
                at += 1
        block = self.free_by_key[keys[at]]
        max_split = self._max_split()
        if size < max_split <= block.size:
            return None
        if size >= max_split and block.size >= size + self.config.max_non_split_rounding:
            return None
        self._remove(block)
        return block

    @staticmethod
    def _expandable_size(block: _Block) -> int:
        """get_free_block's `expandable_size`: a block followed by unmapped space counts that space too."""
        grows = block.next is not None and not block.next.mapped
        return block.size + (block.next.size if grows else 0)

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.config.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self._max_split() and remaining > K_SMALL_SIZE

    def _fits(self, nbytes: int) -> bool:
        return self.capacity is None or self.reserved + nbytes <= self.capacity

    def _alloc_block(self, size: int, small: bool, stream: int) -> _Block | None:
        """cudaMalloc of a new segment (or, with expandable segments, more mapped pages), within the capacity."""
        if self.config.expandable_segments:
            return self._try_allocate_expandable_block(size, small, stream)
        segment = allocation_size(size)
        if not self._fits(segment):
            return None
        self.reserved += segment
        self.segments += 1
        self.segment_sizes[segment] += 1
        return _Block(stream, segment, next(self._next_ptr) * SEGMENT_SPACING, small)

    # --- expandable segments -----------------------------------------------------------------------------------

    def _find_expandable_block(self, size: int, small: bool, stream: int) -> _Block:
        """`find_expandable_block`: the lowest-address unmapped range of the stream (with the free mapped block just
        before it) that has room for `size`, or a new segment's whole virtual range."""
        keys = self.unmapped[small]
        at = bisect.bisect_left(keys, (stream, -1, -1))
        while at < len(keys) and keys[at][0] == stream:
            candidate = self.unmapped_by_key[keys[at]]
            before = candidate.prev
            if before is not None and not before.allocated and before.mapped:
                candidate = before
            room, block = 0, candidate
            while room < size and block is not None and not block.allocated:
                room, block = room + block.size, block.next
            if room >= size:
                return candidate
            at += 1
        virtual = EXPANDABLE_VIRTUAL_BYTES_UNLIMITED if self.capacity is None else self.capacity + self.capacity // 8
        virtual = max(1, math.ceil(virtual / page_size(small))) * page_size(small)
        block = _Block(stream, virtual, next(self._next_ptr) * SEGMENT_SPACING, small, mapped=False, expandable=True)
        self.segments += 1
        self._insert(block)
        return block

    def _map_block(self, block: _Block, size: int) -> bool:
        """`map_block`: map whole pages from the start of an unmapped block; the rest stays unmapped."""
        page = page_size(block.small)
        mapped = min(block.size, math.ceil(size / page) * page)
        if not self._fits(mapped):
            return False
        self._remove(block)
        if mapped < block.size:
            rest = _Block(block.stream, block.size - mapped, block.ptr + mapped, block.small, prev=block,
                          next=block.next, mapped=False, expandable=True)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            self._insert(rest)
        block.size, block.mapped = mapped, True
        self.reserved += mapped
        self._merge_neighbours(block)
        self._insert(block)
        return True

    def _try_allocate_expandable_block(self, size: int, small: bool, stream: int) -> _Block | None:
        """`try_allocate_expandable_block`: map enough of the candidate's range, merging into one free block."""
        candidate = self._find_expandable_block(size, small, stream)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            if following is None or following.mapped:  # the segment's whole virtual range is too small
                return None
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = following  # map_block merged the free candidate into it
        self._remove(candidate)
        return candidate

    def _unmap_block(self, block: _Block) -> None:
        """`unmap_block`: give back the whole pages inside a free block; partial pages at its ends stay cached."""
        page = page_size(block.small)
        start = math.ceil(block.ptr / page) * page
        end = (block.ptr + block.size) // page * page
        if end <= start:
            return
        self._remove(block)
        if start > block.ptr:
            before = _Block(block.stream, start - block.ptr, block.ptr, block.small, prev=block.prev, next=block,
                            expandable=True)
            if block.prev is not None:
                block.prev.next = before
            block.prev = before
            self._insert(before)
        if block.ptr + block.size > end:
            after = _Block(block.stream, block.ptr + block.size - end, end, block.small, prev=block,
                           next=block.next, expandable=True)
            if block.next is not None:
                block.next.prev = after
            block.next = after
            self._insert(after)
        block.ptr, block.size, block.mapped = start, end - start, False
        self.reserved -= end - start
        self._merge_neighbours(block)
        self._insert(block)

    # --- giving memory back ------------------------------------------------------------------------------------

    def _release_block(self, block: _Block) -> None:
        self._remove(block)
        self.reserved -= block.size
        self.segments -= 1
        self.segment_sizes[block.size] -= 1
        if not self.segment_sizes[block.size]:
            del self.segment_sizes[block.size]

    def _garbage_collect_cached_blocks(self) -> None:
        """`garbage_collect_cached_blocks`, with a memory fraction set: above threshold x fraction, free unsplit
        cached large blocks at least as old as the average (by get_free_block calls since cached), until under."""
        threshold = self.config.garbage_collection_threshold
        if threshold <= 0 or self.fraction_limit is None:
            return
        limit = int(threshold * self.fraction_limit)
        if self.reserved <= limit:
            return
        target, reclaimed = self.reserved - limit, 0
        calls = self.get_free_block_calls[False]
        freeable = [self.free_by_key[key] for key in self.pools[False]
                    if not self.free_by_key[key].is_split and not self.free_by_key[key].expandable]
        total_age = sum(calls - block.gc_base for block in freeable)
        freed = True
        while reclaimed < target and freed and freeable:
            age_threshold = total_age / len(freeable)
            freed = False
            for block in list(freeable):
                age = calls - block.gc_base
                if age >= age_threshold:
                    freed = True
                    reclaimed += block.size
                    total_age -= age
                    freeable.remove(block)
                    self._release_block(block)

    def _release_available_cached_blocks(self, size: int, small: bool, stream: int) -> bool:
        """With max_split_size set: free one cached oversize block big enough, or several, largest first."""
        if self.config.max_split_size is None or self.config.expandable_segments:
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
        """`release_cached_blocks` (release_blocks per pool): every cached segment that is not split; the free pages
        of expandable segments unmapped."""
        for small in (True, False):
            for key in list(self.pools[small]):
                block = self.free_by_key.get(key)
                if block is None:
                    continue
                if block.expandable:
                    self._unmap_block(block)
                elif not block.is_split:
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


def replay(events: list[Event], config: AllocatorConfig = AllocatorConfig(),
           capacity_bytes: int | None = None) -> ReplayResult:
    """Replay `events`, each ("alloc", id, bytes[, stream, ...]), ("free", id, 0[, stream]), ("reset", 0, 0) or
    ("steady", 0, 0) through the allocator. The peaks count from the last reset, as
    torch.cuda.reset_peak_memory_stats makes them; after "steady" the allocated peak and the figures at it are
    taken again (the steady pass of `steady_step_events`), the reserved peak kept."""
    allocator = CachingAllocator(config, capacity_bytes)
    live: dict[int, _Block] = {}
    streams: set[int] = {0}
    peak = {"allocated": 0, "reserved": 0, "fragmentation": 0, "largest": 0, "segments": 0}

    def at_allocated_peak() -> None:
        peak.update(allocated=allocator.allocated, fragmentation=allocator.reserved - allocator.allocated,
                    largest=max(allocator.largest_free_block(s) for s in streams), segments=allocator.segments)

    def result(oom_at: int | None = None) -> ReplayResult:
        return ReplayResult(peak_allocated_bytes=peak["allocated"], peak_reserved_bytes=peak["reserved"],
                            fragmentation_at_peak_bytes=peak["fragmentation"],
                            largest_free_block_at_peak_bytes=peak["largest"], segments_at_peak=peak["segments"],
                            oom=oom_at is not None, oom_at=oom_at, streams=len(streams))

    for index, event in enumerate(events):
        action, tensor, nbytes = event[0], event[1], event[2]
        if action == "free":
            allocator.free(live.pop(tensor))
        elif action == "reset":  # the peaks start over at the current figures
            at_allocated_peak()
            peak["reserved"] = allocator.reserved
        elif action == "steady":  # the figures at the allocated peak are the steady pass's (reserved keeps its peak)
            at_allocated_peak()
        else:
            stream = event[3] if len(event) > 3 else 0
            streams.add(stream)
            block = allocator.malloc(nbytes, stream)
            if block is None:
                return result(oom_at=index)
            live[tensor] = block
            peak["reserved"] = max(peak["reserved"], allocator.reserved)
            if allocator.allocated > peak["allocated"]:
                at_allocated_peak()
    return result()


def steady_step_events(events: list[Event]) -> list[Event]:
    """The measured step (the events after the last reset) as the allocator sees it in a long run: the tensors
    alive at its start packed into a fresh allocator in the order they were made, then the step twice.

    Why: a traced step's warm-up is a shortcut (the optimizer states made by one step on zero gradients, FSDP's
    shards placed directly), not the previous training step whose cache a real step inherits. So the cache the
    warm-up left is dropped, the first pass builds the step's own cache, and the second pass starts from it as
    every later step does. In the second pass a tensor the step frees but did not make (a gradient of the
    previous step) is matched to one the first pass left alive, by size, oldest first; the peaks cover both."""
    start = max((i for i, event in enumerate(events) if event[0] == "reset"), default=-1)
    alive: dict[int, tuple] = {}
    for event in events[:start + 1]:
        if event[0] == "alloc":
            alive[event[1]] = event
        elif event[0] == "free":
            alive.pop(event[1], None)
    step = events[start + 1:]
    packed = [alive[ident] for ident in sorted(alive)]
    made_in_step: dict[int, tuple] = {}
    for event in step:
        if event[0] == "alloc":
            made_in_step[event[1]] = event
        elif event[0] == "free":
            made_in_step.pop(event[1], None)
    left_alive: dict[int, list[int]] = {}  # size: ids the first pass left alive, oldest first
    for ident in sorted(made_in_step):
        left_alive.setdefault(made_in_step[ident][2], []).append(ident)
    offset = max((event[1] for event in events), default=0) + 1
    second: list[Event] = []
    for event in step:
        kind, ident = event[0], event[1]
        if kind == "alloc":
            second.append((kind, ident + offset, *event[2:]))
        elif kind == "free":
            if ident in alive:  # made before the step: in steady state, the previous step's copy
                nbytes = alive[ident][2]
                earlier = left_alive.get(nbytes)
                if earlier:
                    second.append((kind, earlier.pop(0), *event[2:]))
            else:
                second.append((kind, ident + offset, *event[2:]))
    return [*packed, ("reset", 0, 0, 0), *step, ("steady", 0, 0, 0), *second]


def replay_steady_step(events: list[Event], config: AllocatorConfig = AllocatorConfig(),
                       capacity_bytes: int | None = None) -> ReplayResult:
    """`replay` of `steady_step_events`: what max_memory_reserved shows once a run is past its first steps (the
    peaks count from the step's start, the packed tensors included)."""
    return replay(steady_step_events(events), config, capacity_bytes)
