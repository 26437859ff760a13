"""Score the throughput model against published training runs (validation/throughput/cases.toml).

Writes validation/results/throughput.csv and prints the Markdown table of validation/RESULTS.md's "Training
throughput" section, with the medians and the time range the report quotes (TIME_RANGE in
vramplan/hardware/throughput.py). Run: python scripts/validate_throughput.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from vramplan.hardware.catalog import load_hardware
from vramplan.validate.throughput import load_cases, predict, summarise

OUT = Path(__file__).resolve().parents[1] / "validation" / "results" / "throughput.csv"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    catalog = load_hardware()
    results = [predict(case, catalog) for case in load_cases()]
    summary = summarise(results)
    with OUT.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "model", "method", "gpu", "gpus", "measured_tokens_per_s", "predicted_tokens_per_s",
                         "time_error", "ideal_share", "excluded", "refused"])
        for r in results:
            c = r.case
            error = "" if r.time_error is None else f"{r.time_error:.4f}"
            share = "" if r.ideal_share is None else f"{r.ideal_share:.4f}"
            writer.writerow([c.id, c.model, c.method, c.gpu, c.gpus, c.measured_tokens_per_s,
                             "" if r.predicted_tokens_per_s is None else f"{r.predicted_tokens_per_s:.1f}", error, share,
                             c.excluded, r.refused])
    print("| id | setup (as published) | GPU | measured tok/s | predicted tok/s | time error | note |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for r in results:
        c = r.case
        error = "-" if r.time_error is None else f"{r.time_error:+.0%}"
        note = (f"left out of the median: {c.excluded}" if c.excluded else
                f"refused: {r.refused}" if r.refused else c.assumed)
        gpu = f"{c.gpus} x {c.gpu}" if c.gpus > 1 else c.gpu
        print(f"| {c.id} | {c.setup} | {gpu} | {c.measured_tokens_per_s:,.0f} | {_number(r.predicted_tokens_per_s)} "
              f"| {error} | {note.replace('|', '/')} |")
    scored = [r for r in results if r.time_error is not None and not r.case.excluded]
    print()
    print(f"{len(scored)} cases scored: median |time error| {summary.median_abs_time_error:.1%}; measured / ideal "
          f"median {summary.median_ideal_share:.3f} (STACK_EFFICIENCY); measured / predicted time, 10th to 90th "
          f"percentile: {summary.time_ratio_low:.2f} to {summary.time_ratio_high:.2f} (TIME_RANGE)")


if __name__ == "__main__":
    main()
