"""The probe matrix for an H100/H200 machine: real training steps, measured peaks, one JSON line per probe.

    PYTHONUNBUFFERED=1 python scripts/gpu_probe_matrix.py --budget 420 --out $OUT
    python scripts/gpu_probe_matrix.py --cpu --out /tmp/probes      # the same driver on small configs (CI)

At least 24 probes across full/LoRA/QLoRA, checkpointing on and off, AdamW, 8-bit AdamW and paged 8-bit AdamW,
three architectures (llama, qwen2 with tied embeddings, qwen3), and batch and sequence sweeps, ordered from cheap to
costly, each pattern across all three models. The script enforces its own time budget: a probe is started only when the time left exceeds what the
last one took, and the ones not run are recorded as skipped. An OOM is a recorded result.
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole matrix")
    parser.add_argument("--out", type=Path, default=REPO / "validation" / "measurements")
    parser.add_argument("--cpu", action="store_true", help="small configs on the CPU (checks the driver)")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many probes")
    parser.add_argument("--steps", type=int, default=3)
    options = parser.parse_args()
    started = time.monotonic()

    import torch

    from vramplan.measure.probe import append_jsonl, measurement_file, run_probe
    from vramplan.models.catalog import resolve_model
    from vramplan.training import resolve_setup

    cpu = options.cpu or not torch.cuda.is_available()
    probes = matrix(CPU_MODELS if cpu else GPU_MODELS, cpu)[: options.limit]
    device = "cpu" if cpu else "cuda"
    gpu = "cpu" if cpu else torch.cuda.get_device_name(0)
    path = measurement_file(options.out, gpu)
    last = 0.0
    done = skipped = 0
    for number, (model, method, probe_options) in enumerate(probes, start=1):
        left = options.budget - (time.monotonic() - started)
        if left < max(last * 1.2, 5.0):
            skipped += 1
            print(json.dumps({"skipped": f"{model} {method} {probe_options}", "reason": "time budget"}), flush=True)
            continue
        if cpu and probe_options.get("optimizer") == "paged-adamw-8bit":
            skipped += 1  # paged optimizers need CUDA managed memory
            continue
        begun = time.monotonic()
        try:
            # On a GPU every probe also records the allocator's history and replays it (vramplan/allocator/snapshot.py).
            snapshot = None if cpu else options.out / "snapshots" / f"{number:02d}-{model}-{method}.pickle"
            record = run_probe(resolve_model(model), resolve_setup(method, **probe_options), steps=options.steps,
                               device=device, options=probe_options, snapshot=snapshot)
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


if __name__ == "__main__":
    raise SystemExit(main())
