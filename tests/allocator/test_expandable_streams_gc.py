"""Expandable segments, per-stream pools and garbage collection in the caching-allocator replay, each case worked
by hand from c10/cuda/CUDACachingAllocator.cpp (the function each exercises is named)."""

from vramplan.allocator.caching import K_LARGE_BUFFER, AllocatorConfig, CachingAllocator, replay

MIB = 2**20
EXPANDABLE = AllocatorConfig(expandable_segments=True)


def test_expandable_segment_grows_by_20_mib_pages_from_its_free_tail():
    """try_allocate_expandable_block: 5 MiB maps one 20 MiB page (the rest stays cached: should_split splits every
    block); 30 MiB then maps only what the free 15 MiB tail lacks, one more page: 40 MiB, where separate segments
    would hold 20 + 30."""
    events = [("alloc", 1, 5 * MIB), ("alloc", 2, 30 * MIB)]
    assert replay(events).peak_reserved_bytes == 50 * MIB
    expandable = replay(events, EXPANDABLE)
    assert expandable.peak_reserved_bytes == 40 * MIB and expandable.peak_allocated_bytes == 35 * MIB
    assert expandable.segments_at_peak == 1


def test_expandable_best_fit_passes_over_the_growing_tail():
    """get_free_block with expandable segments: the free tail (followed by unmapped space) counts as the size it can
    grow to, so a 14 MiB request takes the 16 MiB hole rather than the 15 MiB tail."""
    allocator = CachingAllocator(EXPANDABLE)
    x = allocator.malloc(16 * MIB)
    allocator.malloc(4 * MIB)  # fills the first page exactly
    allocator.malloc(5 * MIB)  # a second page: 5 MiB used, 15 MiB free at the tail
    allocator.free(x)
    w = allocator.malloc(14 * MIB)
    assert w.ptr == x.ptr and allocator.reserved == 2 * K_LARGE_BUFFER
    assert allocator.largest_free_block() == 15 * MIB


def test_expandable_under_a_capacity_unmaps_free_pages_and_retries():
    """release_cached_blocks unmaps the whole free pages of an expandable segment (unmap_block); a 50 MiB request
    needs three 20 MiB pages, so it fits in 60 MiB and not in 59."""
    events = [("alloc", 1, 30 * MIB), ("free", 1, 0), ("alloc", 2, 50 * MIB)]
    fits = replay(events, EXPANDABLE, capacity_bytes=60 * MIB)
    assert not fits.oom and fits.peak_reserved_bytes == 60 * MIB
    assert replay(events, EXPANDABLE, capacity_bytes=59 * MIB).oom_at == 2


def test_a_block_freed_on_one_stream_serves_only_that_stream():
    """Pools are keyed by stream (get_free_block searches (stream, size)): a 5 MiB block cached by a side stream
    does not serve the default stream, which takes a second 20 MiB segment."""
    same = replay([("alloc", 1, 5 * MIB, 1), ("free", 1, 0, 0), ("alloc", 2, 5 * MIB, 1)])
    other = replay([("alloc", 1, 5 * MIB, 1), ("free", 1, 0, 0), ("alloc", 2, 5 * MIB, 0)])
    assert same.peak_reserved_bytes == K_LARGE_BUFFER
    assert other.peak_reserved_bytes == 2 * K_LARGE_BUFFER and other.streams == 2


def test_garbage_collection_frees_old_cached_blocks_above_the_threshold():
    """garbage_collect_cached_blocks (only with a memory fraction): above threshold x fraction, unsplit cached large
    blocks at least as old as the average are freed before a new segment is allocated."""
    events = [("alloc", 1, 30 * MIB), ("alloc", 2, 30 * MIB), ("free", 1, 0), ("free", 2, 0), ("alloc", 3, 50 * MIB)]
    fraction = AllocatorConfig(garbage_collection_threshold=0.25, per_process_memory_fraction=1.0)
    assert replay(events, capacity_bytes=200 * MIB).peak_reserved_bytes == 110 * MIB
    collected = replay(events, fraction, capacity_bytes=200 * MIB)
    assert collected.peak_reserved_bytes == 60 * MIB  # the peak before the collection
    no_fraction = AllocatorConfig(garbage_collection_threshold=0.25)  # torch collects only with a fraction set
    assert replay(events, no_fraction, capacity_bytes=200 * MIB).peak_reserved_bytes == 110 * MIB
    allocator = CachingAllocator(fraction, capacity_bytes=200 * MIB)
    for block in [allocator.malloc(30 * MIB), allocator.malloc(30 * MIB)]:
        allocator.free(block)
    allocator.malloc(50 * MIB)
    assert allocator.reserved == 50 * MIB
    unlimited = CachingAllocator(fraction)  # no capacity: no fraction of it, no collection
    for block in [unlimited.malloc(30 * MIB), unlimited.malloc(30 * MIB)]:
        unlimited.free(block)
    unlimited.malloc(50 * MIB)
    assert unlimited.reserved == 110 * MIB
