"""Cold start, side by side: `vramplan estimate --model 70b --method qlora` against fitcheck-llm answering the same
question (`fitcheck meta-llama/Llama-3.1-70B --qlora --json`), each a fresh process, interleaved run by run.

fitcheck reads config.json from the Hub; with no network here, the same config (from vramplan's catalog record) is
placed in a private HF cache and both tools run with HF_HUB_OFFLINE=1. Install fitcheck in its own venv first:

    python -m venv /tmp/fitcheck-venv && /tmp/fitcheck-venv/bin/pip install fitcheck-llm==0.3.1
    python bench/bench_cold_start.py --fitcheck /tmp/fitcheck-venv/bin/fitcheck --runs 20 [--json]

Both print their default table (or, with --json, their JSON). Prints medians, p90s and the ratio of medians as JSON. `--importtime` also prints the slowest imports of one
vramplan run (python -X importtime).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "vramplan" / "models" / "catalog" / "llama-3.1-70b.toml"
REPO_ID = "meta-llama/Llama-3.1-70B"


def offline_hf_home() -> Path:
    """An HF cache holding only the 70B's config.json, as huggingface_hub lays it out."""
    home = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    model = home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = model / "snapshots" / "bench"
    snapshot.mkdir(parents=True)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text("bench")
    config = tomllib.loads(RECORD.read_text())["config"]
    config.setdefault("architectures", ["LlamaForCausalLM"])
    (snapshot / "config.json").write_text(json.dumps(config))
    return home


def installed_vramplan(work: Path) -> str:
    """vramplan as a user gets it: the wheel built from this checkout, installed with its core dependencies (at
    CI's pinned versions) into a fresh venv, where pip compiles it as it does for any package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(REPO)],
                   check=True)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    wheel = next((work / "dist").glob("vramplan-*.whl"))
    subprocess.run([str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c",
                    str(REPO / ".ci" / "constraints.txt"), str(wheel)], check=True)
    return str(work / "venv" / "bin" / "vramplan")


def _compiled_checkout() -> str:
    """This checkout's editable install, compiled first (pip compiles installed packages; this environment sets
    PYTHONDONTWRITEBYTECODE, which would otherwise recompile vramplan on every run)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "vramplan")], check=True)
    return str(Path(sys.executable).parent / "vramplan")


def wall_seconds(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, cwd=REPO, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # fitcheck exits 1 for "does not fit the default 4090": still an answer
        raise SystemExit(f"{command[0]} failed: {done.stderr.decode()[-500:]}")
    return seconds


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_s": round(statistics.median(ordered), 3), "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
            "min_s": round(ordered[0], 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--fitcheck", default=shutil.which("fitcheck"), help="path to fitcheck-llm's `fitcheck`")
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--json", action="store_true", help="both tools' JSON output instead of their tables")
    parser.add_argument("--editable", action="store_true",
                        help="time this checkout's editable install instead of the wheel installed in a fresh venv")
    args = parser.parse_args()
    if not args.fitcheck:
        raise SystemExit("fitcheck-llm not found: see this script's docstring")
    home = offline_hf_home()
    work = Path(tempfile.mkdtemp(prefix="bench-wheel-"))
    executable = installed_vramplan(work) if not args.editable else _compiled_checkout()
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # Each tool's default output (a table), as a user types it; --json for the JSON of both.
    json_flags = (["--format", "json"], ["--json"]) if args.json else ([], [])
    vramplan = [executable, "estimate", "--model", "70b", "--method", "qlora",
                *json_flags[0]]
    fitcheck = [args.fitcheck, REPO_ID, "--qlora", *json_flags[1]]
    for command in (vramplan, fitcheck):  # warm the OS file cache
        wall_seconds(command, env)
    ours, theirs = [], []
    for _ in range(args.runs):
        ours.append(wall_seconds(vramplan, env))
        theirs.append(wall_seconds(fitcheck, env))
    result = {"runs": args.runs, "vramplan_estimate": summary(ours), "fitcheck_llm": summary(theirs),
              "ratio_of_medians": round(statistics.median(ours) / statistics.median(theirs), 2)}
    print(json.dumps(result, indent=2))
    if args.importtime:
        python = str(Path(executable).parent / "python")
        done = subprocess.run([python, "-X", "importtime", "-m", "vramplan", *vramplan[1:]],
                              capture_output=True, text=True, cwd=REPO, env=env, check=True)
        rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")][1:]
        rows.sort(key=lambda row: -int(row[0].split(":")[1]))
        for row in rows[:15]:
            print(f"{int(row[0].split(':')[1]) / 1000:7.1f} ms self {int(row[1]) / 1000:7.1f} ms cumulative {row[2]}")
    shutil.rmtree(home)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
