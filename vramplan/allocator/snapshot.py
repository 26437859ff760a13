"""A GPU's own allocator history (`torch.cuda.memory._record_memory_history` + `_snapshot()`) replayed through the
simulation, segment by segment: the conformance check a lent GPU makes (`vramplan probe --snapshot`).

The snapshot's `device_traces` list each allocator action in order (torch/cuda/memory.py `_snapshot`; the
TraceEntry actions of c10/cuda/CUDACachingAllocator.h): `alloc` and `free_completed` are the program's requests,
`segment_alloc` / `segment_free` (and `segment_map` / `segment_unmap` with expandable segments) what the allocator
did with the device. The requests become the replay's events; the device actions give the recorded reserved
memory to compare with the replay's, and `segments` the segments held at the end.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from vramplan.allocator.caching import AllocatorConfig, CachingAllocator

GROWS = {"segment_alloc", "segment_map"}
SHRINKS = {"segment_free", "segment_unmap"}


class SnapshotComparison(BaseModel):
    recorded_peak_reserved_bytes: int  # the largest sum of segments the device trace shows
    replayed_peak_reserved_bytes: int
    recorded_segments: dict[int, int]  # segment size: how many, held at the snapshot
    replayed_segments: dict[int, int]
    requests: int  # allocations replayed

    @property
    def reserved_error(self) -> float:
        recorded = self.recorded_peak_reserved_bytes
        return (self.replayed_peak_reserved_bytes - recorded) / recorded if recorded else 0.0

    @property
    def segments_match(self) -> bool:
        return self.recorded_segments == self.replayed_segments


def requests_of(trace: list[dict[str, Any]]) -> list[tuple[str, int, int, int]]:
    """The program's allocations and frees in a device trace, as replay events (an address freed and allocated
    again is a new tensor)."""
    events: list[tuple[str, int, int, int]] = []
    live: dict[int, int] = {}
    for entry in trace:
        action = entry["action"]
        if action == "alloc":
            live[entry["addr"]] = len(events)
            events.append(("alloc", len(events), int(entry["size"]), int(entry.get("stream", 0))))
        elif action == "free_completed" and entry["addr"] in live:
            events.append(("free", live.pop(entry["addr"]), 0, 0))
    return events


def recorded_peak_reserved(trace: list[dict[str, Any]]) -> int:
    reserved = peak = 0
    for entry in trace:
        if entry["action"] in GROWS:
            reserved += int(entry["size"])
        elif entry["action"] in SHRINKS:
            reserved -= int(entry["size"])
        peak = max(peak, reserved)
    return peak


def compare_snapshot(snapshot: dict[str, Any], config: AllocatorConfig = AllocatorConfig(),
                     device: int = 0) -> SnapshotComparison:
    """Replay a snapshot's recorded requests and compare reserved memory and the segments held at the end. The
    recording must have started on an empty allocator (before the model was built)."""
    trace = snapshot["device_traces"][device]
    events = requests_of(trace)
    allocator = CachingAllocator(config)
    live, peak = {}, 0
    for action, ident, nbytes, stream in events:
        if action == "alloc":
            live[ident] = allocator.malloc(nbytes, stream)
            peak = max(peak, allocator.reserved)
        else:
            allocator.free(live.pop(ident))
    recorded = Counter(int(s["total_size"]) for s in snapshot.get("segments", []) if s.get("device", 0) == device)
    return SnapshotComparison(recorded_peak_reserved_bytes=recorded_peak_reserved(trace),
                              replayed_peak_reserved_bytes=peak, recorded_segments=dict(recorded),
                              replayed_segments=dict(allocator.segment_sizes),
                              requests=sum(1 for e in events if e[0] == "alloc"))
