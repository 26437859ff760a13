"""Trace every case of the validation matrix, keep its allocation stream, and replay it through the caching allocator.

    python scripts/replay_matrix.py [--subset all|ci|full] [--case ID ...] [--events DIR] [--out CSV]

Writes one row per case to validation/results/replay.csv: the trace's allocated peak, the steady-state replay's
reserved peak (`replay_steady_step`) with torch's default allocator settings and with expandable_segments:True, the fragmentation at the peak, the
streams, and the estimate's allocated and reserved figures for the same setup. With --events, each case's stream is
kept as DIR/<id>.npz (kind 0 alloc / 1 free / 2 reset, id, bytes, stream) so other settings can be replayed later
without tracing again (`--from-events`).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from vramplan.allocator.caching import AllocatorConfig, replay_steady_step
from vramplan.validate.matrix import DEFAULT_MATRIX, load_matrix, select_cases

KINDS = ("alloc", "free", "reset")
EXPANDABLE = AllocatorConfig(expandable_segments=True)
COLUMNS = ("id", "method", "strategy", "estimate_allocated", "estimate_reserved", "trace_allocated",
           "replay_allocated", "replay_reserved", "fragmentation_at_peak", "largest_free_at_peak", "streams",
           "expandable_reserved", "estimate_expandable_reserved", "events", "trace_seconds", "replay_seconds")


def save_events(path: Path, events: list[tuple], trace_allocated: int) -> None:
    rows = np.array([(KINDS.index(e[0]), e[1], e[2], e[3] if len(e) > 3 else 0) for e in events], dtype=np.int64)
    np.savez_compressed(path, events=rows, trace_allocated=np.int64(trace_allocated))


def load_events(path: Path) -> tuple[list[tuple], int]:
    saved = np.load(path)
    rows = saved["events"]
    events = [(KINDS[kind], int(ident), int(nbytes), int(stream)) for kind, ident, nbytes, stream in rows.tolist()]
    return events, int(saved["trace_allocated"])


def row_for(case, events_dir: Path | None, from_events: bool) -> dict:
    from vramplan.api import estimate, trace

    predicted = estimate(case.model, case.method, **case.options)
    cached = events_dir / f"{case.id}.npz" if events_dir else None
    if from_events and cached is not None and cached.exists():
        (events, trace_allocated), seconds = load_events(cached), 0.0
    else:
        traced = trace(case.model, case.method, **case.options)
        events, seconds, trace_allocated = traced.allocation_events(), traced.trace_seconds, traced.peak_allocated_bytes
        if cached is not None:
            save_events(cached, events, trace_allocated)
    started = time.perf_counter()
    default = replay_steady_step(events)
    expandable = replay_steady_step(events, EXPANDABLE)
    return dict(
        id=case.id, method=case.method, strategy=case.options.get("strategy", "single"),
        estimate_allocated=predicted.peak_allocated_bytes, estimate_reserved=predicted.peak_reserved_bytes,
        trace_allocated=trace_allocated,
        replay_allocated=default.peak_allocated_bytes, replay_reserved=default.peak_reserved_bytes,
        fragmentation_at_peak=default.fragmentation_at_peak_bytes,
        largest_free_at_peak=default.largest_free_block_at_peak_bytes, streams=default.streams,
        expandable_reserved=expandable.peak_reserved_bytes,
        estimate_expandable_reserved=estimate(case.model, case.method, alloc_conf="expandable_segments:True",
                                              **case.options).peak_reserved_bytes, events=len(events), trace_seconds=seconds,
        replay_seconds=round(time.perf_counter() - started, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", default="all")
    parser.add_argument("--case", action="append")
    parser.add_argument("--events", type=Path)
    parser.add_argument("--from-events", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("validation/results/replay.csv"))
    args = parser.parse_args()
    if args.events:
        args.events.mkdir(parents=True, exist_ok=True)
    cases = select_cases(load_matrix(DEFAULT_MATRIX), args.subset, args.case)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for number, case in enumerate(cases, 1):
            try:
                row = row_for(case, args.events, args.from_events)
            except Exception as err:  # a case whose extra is missing: said, and the others go on
                sys.stderr.write(f"[{number}/{len(cases)}] {case.id}: skipped: {err}\n")
                continue
            writer.writerow(row)
            handle.flush()
            sys.stderr.write(f"[{number}/{len(cases)}] {case.id}: reserved {row['replay_reserved'] / 2**30:.2f} GiB "
                             f"over allocated {row['replay_allocated'] / 2**30:.2f} GiB\n")


if __name__ == "__main__":
    main()
