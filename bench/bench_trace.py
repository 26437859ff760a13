"""Wall time and memory of `vramplan trace` on big models: the real HF training step on fake tensors.

Issue 3 asks for a 70B LoRA step (batch 1, sequence 2048, gradient checkpointing) in under 60 s on the project's
2-core machines, without real memory. Each run is a fresh process (`/usr/bin/time -v` gives its peak RSS).
Usage: python bench/bench_trace.py [--runs 3] [--case 70b-lora ...]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "70b-lora": ["--model", "70b", "--method", "lora", "--batch-size", "1", "--seq-len", "2048",
                 "--gradient-checkpointing"],
    "70b-qlora": ["--model", "70b", "--method", "qlora", "--batch-size", "1", "--seq-len", "2048"],
    "8b-full": ["--model", "8b", "--method", "full", "--batch-size", "1", "--seq-len", "2048",
                "--gradient-checkpointing"],
}


def run_once(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, seconds the trace itself reports, peak RSS in GiB) of one fresh `vramplan trace`."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "vramplan", "trace", *args, "--format", "json"]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return wall, json.loads(done.stdout)["trace_seconds"], rss_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    options = parser.parse_args()
    for name in options.case or ["70b-lora"]:
        runs = [run_once(CASES[name]) for _ in range(options.runs)]
        walls, traces, rss = zip(*runs)
        print(f"{name}: wall median {statistics.median(walls):.1f} s (min {min(walls):.1f}), "
              f"trace median {statistics.median(traces):.1f} s, peak RSS median {statistics.median(rss):.2f} GiB")


if __name__ == "__main__":
    main()
