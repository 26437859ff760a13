"""The caching-allocator replay against the rules of c10/cuda/CUDACachingAllocator.cpp, case by case, each worked by
hand from the source (the function each one exercises is named)."""

import pytest

from vramplan.allocator.caching import (
    K_LARGE_BUFFER,
    K_SMALL_BUFFER,
    AllocatorConfig,
    CachingAllocator,
    allocation_size,
    replay,
    round_size,
)

MIB = 2**20


def test_round_size_is_512_byte_blocks():
    assert [round_size(n) for n in (1, 511, 512, 513, 1000, 1024)] == [512, 512, 512, 1024, 1024, 1024]


def _power2_div(size: int, divisions: int) -> int:
    """An independent statement of roundup_power2_divisions, as torch's test_cuda.py test_allocator_settings
    computes the expected size: the next of `divisions` equal steps between the powers of two around `size`."""
    upper = 1
    while upper < size:
        upper *= 2
    if upper == size:
        return size
    step = upper // 2 // divisions
    rounded = upper // 2
    while rounded < size:
        rounded += step
    return rounded


@pytest.mark.parametrize("size", [4 * 21 * MIB, 3 * MIB + 5, 1_234_567, 100_001, 2**30])
@pytest.mark.parametrize("divisions", [2, 4, 8])
def test_roundup_power2_divisions(size, divisions):
    assert round_size(size, AllocatorConfig(roundup_power2_divisions=divisions)) == _power2_div(size, divisions)


def test_segment_sizes():
    """get_allocation_size: 2 MiB for small requests, 20 MiB for 1-10 MiB, the request rounded to 2 MiB above."""
    assert allocation_size(1024) == K_SMALL_BUFFER and allocation_size(MIB) == K_SMALL_BUFFER
    assert allocation_size(MIB + 512) == K_LARGE_BUFFER and allocation_size(10 * MIB - 512) == K_LARGE_BUFFER
    assert allocation_size(10 * MIB) == 10 * MIB and allocation_size(11 * MIB + 1) == 12 * MIB


def test_small_requests_share_a_2_mib_segment_and_merge_back():
    """Small blocks split whenever 512 bytes or more remain (should_split) and merge with free neighbours
    (free_block / try_merge_blocks)."""
    allocator = CachingAllocator()
    a, b, c = (allocator.malloc(1000) for _ in range(3))
    assert (allocator.reserved, allocator.allocated, allocator.segments) == (K_SMALL_BUFFER, 3 * 1024, 1)
    allocator.free(b)
    allocator.free(a)
    assert allocator.largest_free_block() == K_SMALL_BUFFER - 3 * 1024  # the tail; a+b make a 2 KiB hole
    allocator.free(c)
    assert allocator.largest_free_block() == K_SMALL_BUFFER and allocator.allocated == 0


def test_medium_requests_split_a_20_mib_segment():
    events = [("alloc", 1, 5 * MIB), ("alloc", 2, 5 * MIB)]
    result = replay(events)
    assert result.peak_reserved_bytes == K_LARGE_BUFFER and result.peak_allocated_bytes == 10 * MIB


def test_large_block_is_not_split_when_at_most_1_mib_would_remain():
    """should_split (large pool): only when more than kSmallSize (1 MiB) remains; the whole block is allocated."""
    allocator = CachingAllocator()
    allocator.free(allocator.malloc(12 * MIB))
    block = allocator.malloc(11 * MIB)
    assert (block.size, allocator.allocated, allocator.reserved) == (12 * MIB, 12 * MIB, 12 * MIB)
    allocator.free(block)
    allocator.free(allocator.malloc(14 * MIB))  # a new 14 MiB segment: the cached 12 MiB block is too small
    block = allocator.malloc(12 * MIB + 512)  # best fit is the 14 MiB block; 2 MiB - 512 bytes remain: split
    assert (block.size, allocator.allocated) == (12 * MIB + 512, 12 * MIB + 512)


def test_a_hole_too_small_for_the_next_request_costs_a_new_segment():
    """Best fit by size (get_free_block): a freed 6 MiB hole cannot serve 7 MiB, so a second 20 MiB segment is
    allocated while 6 MiB sits free: fragmentation."""
    events = [("alloc", 1, 6 * MIB), ("alloc", 2, 6 * MIB), ("alloc", 3, 8 * MIB), ("free", 1, 0),
              ("alloc", 4, 7 * MIB)]
    result = replay(events)
    assert result.peak_reserved_bytes == 2 * K_LARGE_BUFFER
    assert result.fragmentation_at_peak_bytes == 2 * K_LARGE_BUFFER - (6 + 8 + 7) * MIB
    assert result.largest_free_block_at_peak_bytes == K_LARGE_BUFFER - 7 * MIB


def test_out_of_memory_frees_the_cache_and_retries():
    """malloc: when cudaMalloc fails, release_cached_blocks frees unsplit cached segments and alloc_block retries."""
    events = [("alloc", 1, 12 * MIB), ("free", 1, 0), ("alloc", 2, 20 * MIB)]
    assert replay(events, capacity_bytes=40 * MIB).peak_reserved_bytes == 32 * MIB  # room: the cache is kept
    tight = replay(events, capacity_bytes=30 * MIB)
    assert not tight.oom and tight.peak_reserved_bytes == 20 * MIB  # the 12 MiB segment was given back first
    assert replay([("alloc", 1, 12 * MIB), ("alloc", 2, 12 * MIB)], capacity_bytes=20 * MIB).oom_at == 1


def test_max_split_size_keeps_oversize_blocks_whole():
    """get_free_block: with max_split_size, an oversize cached block does not serve a normal request."""
    events = [("alloc", 1, 40 * MIB), ("free", 1, 0), ("alloc", 2, 10 * MIB)]
    assert replay(events).peak_reserved_bytes == 40 * MIB  # split from the cached 40 MiB block
    limited = replay(events, AllocatorConfig(max_split_size=16 * MIB))
    assert limited.peak_reserved_bytes == 50 * MIB  # a fresh 10 MiB segment beside it


def test_oversize_request_takes_a_cached_block_within_20_mib():
    """get_free_block: an oversize request reuses a cached block less than kLargeBuffer larger, unsplit."""
    config = AllocatorConfig(max_split_size=16 * MIB)
    close = replay([("alloc", 1, 40 * MIB), ("free", 1, 0), ("alloc", 2, 30 * MIB)], config)
    far = replay([("alloc", 1, 60 * MIB), ("free", 1, 0), ("alloc", 2, 30 * MIB)], config)
    assert (close.peak_reserved_bytes, close.peak_allocated_bytes) == (40 * MIB, 40 * MIB)
    assert far.peak_reserved_bytes == 90 * MIB


def test_a_split_segment_is_never_given_back():
    """release_cached_blocks frees only unsplit segments: the free 15 MiB tail of a 20 MiB segment whose head is in
    use stays reserved, so a 25 MiB request (a 26 MiB segment) does not fit in 40 MiB."""
    events = [("alloc", 1, 5 * MIB), ("alloc", 2, 25 * MIB)]
    assert replay(events, capacity_bytes=40 * MIB).oom_at == 1
    assert not replay(events, capacity_bytes=46 * MIB).oom
