"""The steady-state replay of a traced step: the warm-up's cache dropped, the live tensors packed, the step twice."""

from vramplan.allocator.caching import replay, replay_steady_step, steady_step_events

MIB = 2**20


def test_the_step_runs_twice_from_the_live_tensors():
    """A weight made before the step, a gradient the warm-up left and the step frees (zero_grad) then makes again:
    the second pass frees the first pass's gradient in its place, as the next real step would."""
    events = [("alloc", 1, 30 * MIB, 0), ("alloc", 2, 12 * MIB, 0),  # weight, previous gradient
              ("alloc", 3, 50 * MIB, 0), ("free", 3, 0, 0),  # a warm-up temporary: its cache is dropped
              ("reset", 0, 0, 0),
              ("free", 2, 0, 0), ("alloc", 4, 5 * MIB, 0), ("alloc", 5, 12 * MIB, 0), ("free", 4, 0, 0)]
    steady = steady_step_events(events)
    assert steady[:3] == [("alloc", 1, 30 * MIB, 0), ("alloc", 2, 12 * MIB, 0), ("reset", 0, 0, 0)]
    assert steady[3 + 4] == ("steady", 0, 0, 0)
    second = steady[3 + 4 + 1:]
    assert second == [("free", 5, 0, 0), ("alloc", 10, 5 * MIB, 0), ("alloc", 11, 12 * MIB, 0), ("free", 10, 0, 0)]
    # Pass 1: the 5 MiB request splits the freed 12 MiB gradient block, so the new gradient takes a 12 MiB segment;
    # pass 2 reuses both. The warm-up's 50 MiB segment is not there; a plain replay keeps it.
    assert replay_steady_step(events).peak_reserved_bytes == (30 + 12 + 12) * MIB
    assert replay(events).peak_reserved_bytes == (30 + 12 + 50) * MIB
