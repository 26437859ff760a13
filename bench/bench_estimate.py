"""Cold-start wall time: `vramplan estimate --model 70b --method qlora` against answering the same sizing
question by building Llama-3.1-70B on the meta device with transformers + accelerate.

Each run is a fresh Python process (cold start, as a user or a launch script sees it). Prints medians of N runs
and their ratio. Usage: python bench/bench_estimate.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "vramplan" / "models" / "catalog" / "llama-3.1-70b.toml"

VRAMPLAN = [sys.executable, "-m", "vramplan", "estimate", "--model", "70b", "--method", "qlora", "--format", "json"]
ACCELERATE = [
    sys.executable,
    "-c",
    "import tomllib, transformers\n"
    "from accelerate import init_empty_weights\n"
    "from accelerate.utils import calculate_maximum_sizes\n"
    f"config = tomllib.load(open({str(CONFIG)!r}, 'rb'))['config']\n"
    "with init_empty_weights():\n"
    "    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))\n"
    "print(calculate_maximum_sizes(model))\n",
]


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    wall_seconds(VRAMPLAN)  # warm the OS file cache once for both
    wall_seconds(ACCELERATE)
    ours = [wall_seconds(VRAMPLAN) for _ in range(runs)]
    theirs = [wall_seconds(ACCELERATE) for _ in range(runs)]
    result = {
        "runs": runs,
        "vramplan_estimate_median_s": round(statistics.median(ours), 3),
        "vramplan_estimate_min_s": round(min(ours), 3),
        "meta_device_build_median_s": round(statistics.median(theirs), 3),
        "meta_device_build_min_s": round(min(theirs), 3),
        "ratio_median": round(statistics.median(theirs) / statistics.median(ours), 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
