"""Run DeepSpeed ZeRO for real on CPU and record rank 0's live tensor bytes per phase.

    DS_BUILD_OPS=0 pip install --no-deps --no-build-isolation --target /tmp/dssite deepspeed==0.19.8
    pip install --target /tmp/dssite hjson ninja py-cpuinfo msgpack einops
    DS_ACCELERATOR=cpu PYTHONPATH=/tmp/dssite:. python scripts/trace_deepspeed.py [--out CSV]

DeepSpeed does not run under fake tensors (its flat buffers and partitions are real tensor code), so each case is a
small random-init model with real tensors: `world` processes over gloo with DeepSpeed's CPU accelerator, the model
in bf16 as HF Trainer's bf16 gives it to the engine, the ZeRO settings HF Trainer fills for "auto"
(transformers/integrations/deepspeed.py: reduce_bucket_size = hidden^2, stage3_prefetch_bucket_size = 0.9 hidden^2,
stage3_param_persistence_threshold = 10 hidden) and DeepSpeed's AdamW (torch_adam: the CPU accelerator has no
FusedAdam). One step warms up (optimizer states, DeepSpeed's buffers); the second is measured by vramplan's
LiveBytesTracker, with dropout as CUDA runs it. Rank 0's peaks go to validation/results/deepspeed_cpu.csv, which
tests/estimate/test_deepspeed_traced.py holds the estimate to.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import sys
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "validation" / "configs" / "tiny-llama-fsdp.json"
CASES = [  # (stage, method, world, batch, seq)
    (1, "full", 2, 2, 256), (2, "full", 2, 2, 256), (3, "full", 2, 2, 256), (2, "full", 4, 2, 256),
    (3, "full", 4, 2, 256), (2, "lora", 2, 2, 256), (3, "lora", 2, 2, 256), (1, "lora", 4, 2, 256),
]
COLUMNS = ("id", "stage", "method", "world", "batch_size", "seq_len", "peak_bytes", "peak_phase", "forward_bytes",
           "backward_bytes", "optimizer_bytes", "idle_bytes", "deepspeed")


def _rank(rank: int, world: int, stage: int, method: str, batch: int, seq: int, port: int, answer: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import deepspeed
    import transformers

    from vramplan.measure.cuda_paths import dropout_as_on_cuda
    from vramplan.measure.livebytes import LiveBytesTracker

    deepspeed.init_distributed(dist_backend="gloo")
    raw = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    config = transformers.AutoConfig.for_model(**raw)
    config.use_cache = False
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.train()
    if method == "lora":  # vramplan's hf preset: rank 16, all-linear, dropout 0.05
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                           target_modules="all-linear"))
    hidden = config.hidden_size
    zero = {"stage": stage, "reduce_bucket_size": hidden * hidden}
    if stage == 3:
        zero |= {"stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                 "stage3_param_persistence_threshold": 10 * hidden}
    ds_config = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
                 "bf16": {"enabled": True}, "zero_optimization": zero, "gradient_clipping": 1.0,
                 "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, config=ds_config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    tracker = LiveBytesTracker(skip_matmul_arithmetic=True)

    def step() -> None:
        tracker.set_phase("forward")
        loss = engine(input_ids=ids, labels=ids).loss
        tracker.set_phase("backward")
        engine.backward(loss)
        del loss
        tracker.set_phase("optimizer")
        engine.step()
        tracker.set_phase("idle")

    step()  # warm-up
    gc.collect()
    with dropout_as_on_cuda(), tracker:
        for obj in gc.get_objects():  # everything alive now: weights, partitions, states, buffers
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                tracker.track(obj)
        tracker.set_phase("idle")
        tracker.reset_peak()
        step()
        tracker.finish()
    if rank == 0:
        phases = {phase: sum(snapshot.by_owner.values()) for phase, snapshot in tracker.phase_snapshots.items()}
        Path(answer).write_text(json.dumps({"peak": tracker.peak_bytes, "phase": tracker.peak_phase, **phases}))


def trace_case(stage: int, method: str, world: int, batch: int, seq: int, port: int) -> dict:
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        answer = str(Path(folder) / "rank0.json")
        mp.spawn(_rank, args=(world, stage, method, batch, seq, port, answer), nprocs=world)
        return json.loads(Path(answer).read_text())


def main() -> None:
    import deepspeed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("validation/results/deepspeed_cpu.csv"))
    args = parser.parse_args()
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for index, (stage, method, world, batch, seq) in enumerate(CASES):
            result = trace_case(stage, method, world, batch, seq, port=29600 + index)
            case_id = f"tiny-llama-fsdp-zero{stage}-{world}-{method}"
            writer.writerow({"id": case_id, "stage": stage, "method": method, "world": world, "batch_size": batch,
                             "seq_len": seq, "peak_bytes": result["peak"], "peak_phase": result["phase"],
                             "forward_bytes": result.get("forward", 0), "backward_bytes": result.get("backward", 0),
                             "optimizer_bytes": result.get("optimizer", 0), "idle_bytes": result.get("idle", 0),
                             "deepspeed": deepspeed.__version__})
            handle.flush()
            print(f"[{index + 1}/{len(CASES)}] {case_id}: {result['peak']} bytes ({result['phase']})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
