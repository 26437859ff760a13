"""The probe matrix for an H100/H200 machine: real training steps, measured peaks, one JSON line per probe.

    PYTHONUNBUFFERED=1 python scripts/gpu_probe_matrix.py --budget 420 --out $OUT
    python scripts/gpu_probe_matrix.py --cpu --out /tmp/probes      # the same driver on small configs (CI)

At least 24 probes across full/LoRA/QLoRA, checkpointing on and off, AdamW, 8-bit AdamW and paged 8-bit AdamW,
three architectures (llama, qwen2 with tied embeddings, qwen3), and batch and sequence sweeps, ordered from cheap to
costly, each pattern across all three models. The script enforces its own time budget: a probe is started only when
the time left exceeds what the last one took, and the ones not run are recorded as skipped. An OOM is a recorded
result.

After them, TRL 1.16's own trainers (vramplan/measure/probe_trl.py): DPO, KTO and GRPO (transformers generation, every
completion run to full length) with LoRA on the same three models at moderate sizes. `--objective-budget` seconds of
the budget are kept for them (the SFT probes stop starting early enough); `--only sft|objectives` runs one part.

The device machine has no network and no bitsandbytes, pydantic or trl: carry their wheels in the working tree
(`.whl/` is git-ignored; name it in `carry`) and install them there before the script runs:

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \\
        bitsandbytes pydantic pydantic-core annotated-types typing-inspection trl==1.16.0
    # on the device: pip install --no-deps --no-index .whl/*.whl
    # (trl needs datasets>=4.7 and its own dependencies, pyarrow, dill, multiprocess, xxhash, fsspec, pandas: carry
    # those wheels too where the device's environment lacks them; without trl the objective probes are skipped)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GPU_MODELS = ("llama-3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b")
CPU_MODELS = tuple(str(REPO / "validation" / "configs" / f"{name}.json")
                   for name in ("tiny-llama", "tiny-qwen2-tied", "tiny-qwen3"))


def matrix(models: tuple[str, ...], cpu: bool) -> list[tuple[str, str, dict]]:
    """(model, method, options) for every probe: patterns from cheap to costly, each across every model, so a
    tight budget still covers all three architectures."""
    scale = 8 if cpu else 1  # sequences on the CPU are 8x shorter
    patterns = [
        ("lora", {"batch_size": 1, "seq_len": 2048 // scale}),
        ("qlora", {"batch_size": 1, "seq_len": 2048 // scale}),
        ("full", {"batch_size": 1, "seq_len": 2048 // scale, "gradient_checkpointing": True}),
        ("full", {"batch_size": 2, "seq_len": 1024 // scale, "optimizer": "adamw-8bit"}),
        ("lora", {"batch_size": 4, "seq_len": 2048 // scale, "gradient_checkpointing": False}),
        ("lora", {"batch_size": 8, "seq_len": 1024 // scale, "optimizer": "paged-adamw-8bit"}),
        ("qlora", {"batch_size": 2, "seq_len": 4096 // scale, "optimizer": "adamw-8bit"}),
        ("qlora", {"batch_size": 1, "seq_len": 8192 // scale, "gradient_checkpointing": False}),
    ]
    return [(model, method, dict(options)) for method, options in patterns for model in models]


def objective_matrix(models: tuple[str, ...], cpu: bool) -> list[tuple[str, str, dict]]:
    """(model, method, options) for TRL's DPO, KTO, ORPO and GRPO trainers with LoRA (probe_trl.py), each pattern across
    every model; on the CPU sequences are 8x shorter."""
    scale = 8 if cpu else 1
    patterns = [
        ("lora", {"objective": "dpo", "batch_size": 2, "seq_len": 1024 // scale, "prompt_len": 256 // scale}),
        ("lora", {"objective": "kto", "batch_size": 4, "seq_len": 1024 // scale, "prompt_len": 256 // scale}),
        ("lora", {"objective": "orpo", "batch_size": 2, "seq_len": 1024 // scale}),
        ("lora", {"objective": "grpo", "batch_size": 8, "num_generations": 4, "prompt_len": 128 // scale,
                  "completion_len": 128 // scale}),
        ("lora", {"objective": "grpo", "batch_size": 4, "num_generations": 4, "steps_per_generation": 2,
                  "beta": 0.04, "prompt_len": 128 // scale, "completion_len": 256 // scale}),
    ]
    return [(model, method, dict(options)) for method, options in patterns for model in models]


def _trl_missing() -> str:
    """Why TRL's trainers cannot run here ("" when they can)."""
    import importlib.util

    missing = [name for name in ("trl", "datasets") if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed (see this script's header)" if missing else ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole matrix")
    parser.add_argument("--objective-budget", type=float, default=180.0,
                        help="seconds of the budget kept for the TRL objective probes")
    parser.add_argument("--only", choices=("sft", "objectives"), default=None, help="run one part of the matrix")
    parser.add_argument("--out", type=Path, default=REPO / "validation" / "measurements")
    parser.add_argument("--cpu", action="store_true", help="small configs on the CPU (checks the driver)")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many probes")
    parser.add_argument("--steps", type=int, default=3)
    options = parser.parse_args()
    started = time.monotonic()

    import torch

    from vramplan.measure.probe import append_jsonl, measurement_file

    cpu = options.cpu or not torch.cuda.is_available()
    models = CPU_MODELS if cpu else GPU_MODELS
    probes = ([] if options.only == "objectives" else matrix(models, cpu)) + \
        ([] if options.only == "sft" else objective_matrix(models, cpu))
    probes = probes[: options.limit]
    device = "cpu" if cpu else "cuda"
    gpu = "cpu" if cpu else torch.cuda.get_device_name(0)
    path = measurement_file(options.out, gpu)
    objectives = any("objective" in probe_options for _, _, probe_options in probes)
    trl_missing = _trl_missing() if objectives else ""
    last = 0.0
    done = skipped = 0
    for number, (model, method, probe_options) in enumerate(probes, start=1):
        objective = "objective" in probe_options
        reserve = 0.0 if objective or not objectives else options.objective_budget
        left = options.budget - (time.monotonic() - started) - reserve
        if left < max(last * 1.2, 5.0) or (objective and trl_missing):
            skipped += 1
            reason = trl_missing if objective and trl_missing else "time budget"
            print(json.dumps({"skipped": f"{model} {method} {probe_options}", "reason": reason}), flush=True)
            continue
        if cpu and probe_options.get("optimizer") == "paged-adamw-8bit":
            skipped += 1  # paged optimizers need CUDA managed memory
            continue
        begun = time.monotonic()
        try:
            record = _probe(number, model, method, probe_options, options, device, cpu)
        except Exception as err:  # noqa: BLE001 - one failing probe must not stop the matrix
            print(json.dumps({"failed": f"{model} {method} {probe_options}", "error": repr(err)[:300]}), flush=True)
            continue
        append_jsonl(path, record)
        last = time.monotonic() - begun
        done += 1
        print(json.dumps({"n": number, "id": record.id, "status": record.status,
                          "allocated": record.max_memory_allocated,
                          "estimate": record.estimate["peak_allocated_bytes"], "reserved": record.max_memory_reserved,
                          "replayed_reserved": record.replayed_peak_reserved, "seconds": round(last, 1)}),
              flush=True)
    print(json.dumps({"probes": len(probes), "done": done, "skipped": skipped, "file": str(path),
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)
    return 0


def _probe(number: int, model: str, method: str, probe_options: dict, options, device: str, cpu: bool):
    """One probe's record: TRL's trainer for an objective, else the plain step with the allocator's history recorded
    and replayed on a GPU (vramplan/allocator/snapshot.py)."""
    from vramplan.models.catalog import resolve_model
    from vramplan.training import resolve_setup

    setup = resolve_setup(method, **probe_options)
    if "objective" in probe_options:
        from vramplan.measure.probe_trl import run_trl_probe

        return run_trl_probe(resolve_model(model), setup, steps=options.steps, device=device, options=probe_options)
    from vramplan.measure.probe import run_probe

    snapshot = None if cpu else options.out / "snapshots" / f"{number:02d}-{model}-{method}.pickle"
    return run_probe(resolve_model(model), setup, steps=options.steps, device=device, options=probe_options,
                     snapshot=snapshot)


if __name__ == "__main__":
    raise SystemExit(main())
