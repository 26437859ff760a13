"""A recorded allocator history (torch.cuda.memory._snapshot's format) replayed and compared segment by segment."""

from vramplan.allocator.snapshot import compare_snapshot, requests_of

MIB = 2**20


def _snapshot(trace, segments):
    return {"device_traces": [trace], "segments": segments}


def test_a_recorded_history_that_the_rules_reproduce():
    """What a GPU records for: 5 MiB (a 20 MiB segment), 30 MiB (its own), free the 5 MiB, 7 MiB (reuses the 20 MiB
    segment): the replay holds the same two segments and the same peak."""
    trace = [
        {"action": "segment_alloc", "addr": 1000, "size": 20 * MIB, "stream": 0},
        {"action": "alloc", "addr": 1000, "size": 5 * MIB, "stream": 0},
        {"action": "segment_alloc", "addr": 9000, "size": 30 * MIB, "stream": 0},
        {"action": "alloc", "addr": 9000, "size": 30 * MIB, "stream": 0},
        {"action": "free_requested", "addr": 1000, "size": 5 * MIB, "stream": 0},
        {"action": "free_completed", "addr": 1000, "size": 5 * MIB, "stream": 0},
        {"action": "alloc", "addr": 1000, "size": 7 * MIB, "stream": 0},
    ]
    segments = [{"device": 0, "total_size": 20 * MIB}, {"device": 0, "total_size": 30 * MIB}]
    result = compare_snapshot(_snapshot(trace, segments))
    assert result.recorded_peak_reserved_bytes == result.replayed_peak_reserved_bytes == 50 * MIB
    assert result.segments_match and result.requests == 3 and result.reserved_error == 0


def test_a_difference_is_reported_not_hidden():
    """A recording whose allocator did something else (here: a 40 MiB segment where the rules take 30) shows as a
    reserved error and mismatched segments."""
    trace = [{"action": "segment_alloc", "addr": 1, "size": 40 * MIB, "stream": 0},
             {"action": "alloc", "addr": 1, "size": 30 * MIB, "stream": 0}]
    result = compare_snapshot(_snapshot(trace, [{"device": 0, "total_size": 40 * MIB}]))
    assert result.reserved_error == -0.25 and not result.segments_match


def test_frees_map_to_the_allocation_at_that_address():
    trace = [{"action": "alloc", "addr": 7, "size": 512, "stream": 0},
             {"action": "free_completed", "addr": 7, "size": 512, "stream": 0},
             {"action": "alloc", "addr": 7, "size": 1024, "stream": 3}]
    assert requests_of(trace) == [("alloc", 0, 512, 0), ("free", 0, 0, 0), ("alloc", 2, 1024, 3)]
