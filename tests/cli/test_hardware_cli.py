"""`vramplan catalog`, `plan` and `fit` from the command line."""

import json
import time

from vramplan.cli.app import main


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_catalog_lists_and_shows(capsys):
    code, out, _ = run(["catalog", "gpus", "--format", "json"], capsys)
    assert code == 0 and len(json.loads(out)["items"]) >= 30
    code, out, _ = run(["catalog", "systems"], capsys)
    assert code == 0 and "systems" in out
    code, out, _ = run(["catalog", "show", "h100-sxm5-80gb"], capsys)
    assert code == 0 and "85,520,809,984 B" in out and "source:" in out
    code, _, err = run(["catalog", "show", "nope"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_plan_json_sorted_by_cost_with_marks(capsys):
    code, out, err = run(["plan", "--model", "8b", "--method", "qlora", "--tokens", "50M", "--epochs", "2",
                          "--headroom", "10%", "--format", "json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["training_tokens"] == 100_000_000
    costs = [o["cost_usd"] for o in plan["options"] if o["cost_usd"] is not None]
    assert costs == sorted(costs)
    assert sum(o["cheapest"] for o in plan["options"]) == 1


def test_plan_over_the_full_catalog_is_quick(capsys):
    start = time.perf_counter()
    code, _, _ = run(["plan", "--model", "70b", "--method", "qlora", "--format", "json"], capsys)
    assert code == 0
    assert time.perf_counter() - start < 5  # the benchmark (bench/) holds the real figure; this only guards hangs


def test_plan_exit_3_with_suggestions_when_nothing_fits(capsys):
    code, out, _ = run(["plan", "--model", "405b", "--method", "full", "--max-nodes", "1"], capsys)
    assert code == 3 and "what would make it fit" in out and "QLoRA" in out
    assert "more GPUs" not in out  # plan tries every layout itself; its suggestions change the run, not the GPUs


def test_fit_batch_and_seq_len(capsys):
    code, out, _ = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora", "--format", "json"],
                       capsys)
    assert code == 0
    result = json.loads(out)
    assert result["solve"] == "batch-size" and result["value"] >= 1
    code, out, _ = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora", "--solve", "seq-len"],
                       capsys)
    assert code == 0 and "largest seq len that fits" in out


def test_fit_usage_errors(capsys):
    code, _, err = run(["fit", "--gpu", "nope", "--model", "8b"], capsys)
    assert code == 2 and "--gpu" in err
    code, _, err = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--solve", "width"], capsys)
    assert code == 2 and "--solve" in err
    code, _, err = run(["plan", "--model", "8b", "--headroom", "lots"], capsys)
    assert code == 2 and "--headroom" in err
    code, _, err = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "full", "--solve", "lora-rank"],
                       capsys)
    assert code == 2 and "lora-rank" in err


def test_plan_json_carries_the_layout(capsys):
    # 32B full fine-tuning: 16 B per parameter under FSDP2/ZeRO-3 (fp32 master, gradients, Adam) fits one 8-GPU H200 node
    code, out, _ = run(["plan", "--model", "qwen2.5-32b", "--method", "full", "--format", "json"], capsys)
    assert code == 0
    options = {o["id"]: o for o in json.loads(out)["options"]}
    h200 = options["hgx-h200-8gpu"]
    assert h200["gpus_used"] == 8 and h200["nodes"] == 1 and h200["strategy"] in ("fsdp", "zero3")
    assert 0 < h200["communication_share"] < 1 and h200["gpu_link"] == "NVLink" and h200["choice"]
    assert {"host_bytes_needed", "host_ram_bytes", "layouts_tried", "offload"} <= set(h200)
    code, out, _ = run(["plan", "--model", "70b", "--method", "full"], capsys)
    assert code == 0 and "nodes x GPUs" in out and "comm" in out and "$ cheapest for this job:" in out
    assert "B cheapest to buy:" in out and "R cheapest to rent:" in out and "buy USD" in out


def test_plan_emits_the_cheapest_options_config(tmp_path, capsys):
    code, out, _ = run(["plan", "--model", "qwen2.5-32b", "--method", "full", "--format", "json"], capsys)
    cheapest = next(o for o in json.loads(out)["options"] if o["cheapest"])
    target = tmp_path / "accelerate.yaml"
    code, _, err = run(["plan", "--model", "qwen2.5-32b", "--method", "full", "--emit", "accelerate", "--emit-to",
                        str(target)], capsys)
    processes = cheapest["gpus_used"] * cheapest["nodes"]
    assert code == 0 and "wrote" in err and f"num_processes: {processes}" in target.read_text()
    other = "deepspeed" if cheapest["strategy"].startswith("fsdp") else "fsdp"
    code, _, err = run(["plan", "--model", "qwen2.5-32b", "--method", "full", "--emit", other], capsys)
    assert code == 2 and "the cheapest option" in err and err.count("\n") == 1


def test_fit_under_a_multi_gpu_strategy(capsys):
    code, out, _ = run(["fit", "--gpu", "h100-sxm5-80gb", "--model", "70b", "--method", "lora", "--gpus", "8",
                        "--strategy", "fsdp", "--format", "json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["value"] >= 1 and result["estimate"]["setup"]["strategy"] == "fsdp"
