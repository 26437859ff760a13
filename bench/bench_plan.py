"""Cold-start wall time of `vramplan plan` over the whole hardware catalog, and of `vramplan fit`.

Each run is a fresh process, as a user or script meets the tool. Usage: python bench/bench_plan.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "plan 32b lora (full catalog)": ["plan", "--model", "32b", "--method", "lora", "--tokens", "50M", "--epochs", "2",
                                     "--format", "json"],
    "plan 70b full (memory trades, several nodes)": ["plan", "--model", "70b", "--method", "full", "--format",
                                                     "json"],
    "report examples/jobs.toml (3 jobs, HTML + charts)": ["report", "examples/jobs.toml", "--out",
                                                          "/tmp/vramplan-bench-report"],
    "fit rtx-4090 8b qlora --solve seq-len": ["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora",
                                              "--solve", "seq-len", "--format", "json"],
    "estimate 70b qlora (reference)": ["estimate", "--model", "70b", "--method", "qlora", "--format", "json"],
}


def wall_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vramplan", *args], check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    for name, args in COMMANDS.items():
        wall_seconds(args)  # warm the file cache
        times = [wall_seconds(args) for _ in range(runs)]
        print(f"{name}: median {statistics.median(times):.3f} s, min {min(times):.3f} s ({runs} runs)")


if __name__ == "__main__":
    main()
