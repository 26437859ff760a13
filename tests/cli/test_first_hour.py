"""The first hour of a new user (issue 13): each workflow that broke, run as the user ran it."""

import json
import shlex
from pathlib import Path

import pytest

from vramplan.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
NVML = ROOT / "tests" / "fixtures" / "nvml"


def run(args, capsys, monkeypatch=None, columns=None):
    if monkeypatch is not None and columns is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# 1. A TRL SFT config (SFTConfig JSON + adapter_config.json) --------------------------------------------------------

def _trl_run(tmp_path: Path, **extra) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    args = {"model_name_or_path": "meta-llama/Llama-3.1-8B", "max_length": 2048, "per_device_train_batch_size": 2,
            "bf16": True, "gradient_checkpointing": True, "learning_rate": 2e-4, "output_dir": "out", **extra}
    (folder / "training_args.json").write_text(json.dumps(args))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
         "task_type": "CAUSAL_LM"}))
    return folder


@pytest.mark.parametrize("extra", [{}, {"loss_type": "nll"}, {"loss_type": "chunked_nll"}], ids=str)
def test_trl_sft_config_estimates_with_its_loss_stated(tmp_path, capsys, extra):
    code, out, err = run(["estimate", "--from", str(_trl_run(tmp_path, **extra)) + "/", "--batch-size", "8",
                          "--format", "json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["setup"]["stack"] == "hf" and document["setup"]["loss"] == "standard"
    assert any("TRL SFT loss" in line and "upper bound" in line for line in document["assumptions"])


def test_axolotl_chunked_cross_entropy_estimates(tmp_path, capsys):
    config = tmp_path / "axolotl.yml"
    config.write_text("base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nmicro_batch_size: 1\nsequence_len: 2048\n"
                      "chunked_cross_entropy: true\nbf16: true\ngradient_checkpointing: true\n")
    code, out, err = run(["estimate", "--from", str(config), "--format", "json"], capsys)
    assert code == 0, err
    assert any("chunked_cross_entropy" in line for line in json.loads(out)["assumptions"])


# 2. Suggestions are commands: pasted, they give the verdict they promise --------------------------------------------

SUGGESTING = [
    pytest.param(["check", "--model", "70b", "--method", "lora", "--gpu", "h100-sxm5-80gb"], id="check-70b-lora"),
    pytest.param(["check", "--model", "8b", "--method", "full", "--gpu", "4090"], id="check-8b-full"),
    pytest.param(["check", "--model", "8b", "--method", "lora", "--batch-size", "2", "--nvml-recording",
                  str(NVML / "rtx4090-busy.json")], id="check-local-busy"),
    pytest.param(["check", "--model", "mixtral-8x7b", "--method", "qlora", "--gpu", "rtx-4090"], id="check-kbit"),
    pytest.param(["check", "--model", "405b", "--method", "full", "--gpus", "8", "--strategy", "fsdp", "--gpu",
                  "h100-sxm5-80gb"], id="check-nodes"),
    pytest.param(["check", "--model", "8b", "--method", "lora", "--batch-size", "8", "--seq-len", "4096",
                  "--no-gradient-checkpointing", "--gpu", "rtx-a6000"], id="check-ckpt-batch"),
    pytest.param(["fit", "--gpu", "12GB", "--model", "8b", "--method", "lora"], id="fit-12gb"),
    pytest.param(["plan", "--model", "405b", "--method", "full", "--max-nodes", "1"], id="plan-405b"),
]


@pytest.mark.parametrize("args", SUGGESTING)
def test_every_suggestion_pasted_gives_what_it_promised(args, capsys):
    code, out, err = run([*args, "--format", "json"], capsys)
    assert code == 3, err
    document = json.loads(out)
    suggestions = document["suggestions"]
    commands = document.get("commands") or [s["command"] for s in suggestions]
    assert suggestions and len(commands) == len(suggestions)
    for suggestion, command in zip(suggestions, commands):
        words = shlex.split(command)
        assert words[0] == "vramplan" and all(flag in words for flag in suggestion["flags"] if flag.startswith("--"))
        pasted_code, pasted_out, pasted_err = run([*words[1:], "--format", "json"], capsys)
        assert pasted_code == (0 if suggestion["fits"] else 3), (command, pasted_err)
        pasted = json.loads(pasted_out)
        if pasted["kind"] == "check":
            assert pasted["estimate"]["device_bytes"] == suggestion["needed_bytes"], command


def test_suggestion_kinds_are_all_exercised(capsys):
    """The scenarios above cover every kind of change the suggester makes."""
    seen = set()
    for param in SUGGESTING:
        run([*param.values[0], "--format", "json"], capsys)
    for param in SUGGESTING:
        main([*param.values[0], "--format", "json"])
        document = json.loads(capsys.readouterr().out)
        for suggestion in document["suggestions"]:
            seen.update(key for key in suggestion["changes"])
            if suggestion["change"].startswith("together:"):
                seen.add("together")
    assert {"kbit_prep", "gradient_checkpointing", "method", "optimizer", "nodes", "loss", "seq_len", "batch_size",
            "gpus", "together"} <= seen


def test_gpus_means_a_count_everywhere(capsys):
    code, _, err = run(["check", "--model", "8b", "--gpus", "0,1", "--nvml-recording",
                        str(NVML / "h100x8-idle.json")], capsys)
    assert code == 2 and err.count("\n") == 1 and "--devices 0,1" in err
    code, _, err = run(["check", "--model", "8b", "--method", "qlora", "--devices", "0,1", "--nvml-recording",
                        str(NVML / "h100x8-idle.json")], capsys)
    assert code == 2 and "--strategy" in err and err.count("\n") == 1
    code, out, _ = run(["check", "--model", "8b", "--method", "qlora", "--devices", "0,1", "--strategy", "ddp",
                        "--nvml-recording", str(NVML / "h100x8-idle.json"), "--format", "json"], capsys)
    document = json.loads(out)
    assert code == 0 and [gpu["index"] for gpu in document["gpus"]] == [0, 1]
    assert document["estimate"]["setup"]["gpus"] == 2  # the GPUs named are the job's ranks


# 3. probe without a GPU --------------------------------------------------------------------------------------------

def test_probe_without_cuda_exits_4_at_once(capsys, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, out, err = run(["probe", "--model", "8b", "--method", "qlora", "--out", str(tmp_path)], capsys)
    assert code == 4 and out == "" and err.count("\n") == 1 and "--device cpu" in err
    code, _, err = run(["probe", "--model", "70b", "--method", "full", "--device", "cpu", "--out", str(tmp_path)],
                       capsys)
    assert code == 2 and "host's available memory" in err and err.count("\n") == 1


def test_probe_stages_are_reported():
    from vramplan.measure.probe import refuse_large_cpu_probe

    refuse_large_cpu_probe(2**30, available_bytes=4 * 2**30)  # a quarter of RAM: allowed
    with pytest.raises(Exception, match="available memory"):
        refuse_large_cpu_probe(3 * 2**30, available_bytes=4 * 2**30)


# 4. validate with an extra missing ---------------------------------------------------------------------------------

def test_validate_skips_and_counts_cases_whose_extra_is_missing(capsys, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchtune" else real(name, *a))
    code, out, err = run(["validate", "--subset", "none", "--case", "tiny-llama-lora", "--case",
                          "tt-tiny-llama-lora", "--out", str(tmp_path), "--format", "json"], capsys)
    assert code == 0, err
    matrix = json.loads(out)["matrix"]
    assert [r["id"] for r in matrix["results"]] == ["tiny-llama-lora"]
    assert [s["id"] for s in matrix["skipped"]] == ["tt-tiny-llama-lora"] and "torchtune" in matrix["skipped"][0]["reason"]
    assert "[1/2] tiny-llama-lora" in err and "[2/2] tt-tiny-llama-lora: skipped" in err
    assert any(tmp_path.iterdir())  # what ran was written


# 5. A --from key that changes memory and is not modelled -----------------------------------------------------------

def test_a_preference_stage_is_refused_by_every_command(tmp_path, capsys):
    # a DPO job is not an SFT job: no command answers it, --accept-unmodelled or not (issue 18)
    config = tmp_path / "lf.yaml"
    config.write_text("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: dpo\nfinetuning_type: lora\n")
    for args in (["estimate"], ["check", "--gpu", "h100-sxm5-80gb", "--accept-unmodelled"], ["plan"],
                 ["fit", "--gpu", "h100-sxm5-80gb"]):
        code, out, err = run([args[0], "--from", str(config), *args[1:]], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and "stage: dpo" in err


@pytest.mark.parametrize("key", ["use_unsloth: true"])
def test_unmodelled_llama_factory_keys_stop_check(tmp_path, capsys, key):
    config = tmp_path / "lf.yaml"
    config.write_text("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: sft\ndo_train: true\n"
                      "finetuning_type: lora\nlora_target: all\ncutoff_len: 1024\nper_device_train_batch_size: 1\n"
                      "bf16: true\n".replace("stage: sft\n", "") + key + "\n")
    code, out, err = run(["check", "--from", str(config), "--gpu", "h100-sxm5-80gb"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "--accept-unmodelled" in err
    for command in ("fit", "plan"):
        args = [command, "--from", str(config)] + (["--gpu", "h100-sxm5-80gb"] if command == "fit" else [])
        assert run(args, capsys)[0] == 2
    code, out, _ = run(["check", "--from", str(config), "--gpu", "h100-sxm5-80gb", "--accept-unmodelled"], capsys)
    assert code == 0 and "NOT MODELLED" in out
    code, out, _ = run(["estimate", "--from", str(config), "--format", "json"], capsys)
    assert code == 0 and any(line.startswith("NOT MODELLED") for line in json.loads(out)["assumptions"])


# 6. Defaults and help agree ---------------------------------------------------------------------------------------

def test_help_states_the_defaults_the_answers_use(capsys):
    from vramplan.api import estimate

    code, out, _ = run(["estimate", "--help"], capsys)
    assert code == 0
    used = estimate("8b", "lora").setup.optimizer.value
    help_text = " ".join(out.split())
    assert f"adamw-fused for every stack" in help_text and used == "adamw-fused"
    assert "[default: adamw]" not in help_text


def test_headroom_default_is_one_figure():
    import typer

    from vramplan.cli.app import app

    command = typer.main.get_command(app)
    defaults = {name: next(p.default for p in command.commands[name].params if p.name == "headroom")
                for name in ("check", "fit", "plan")}
    assert set(defaults.values()) == {"10%"}, defaults


def test_models_lists_what_estimate_answers(capsys):
    from vramplan.api import estimate
    from vramplan.errors import NotModelledError

    code, out, _ = run(["models", "--format", "json"], capsys)
    rows = json.loads(out)["items"]
    for row in rows:
        if row["estimable"]:
            estimate(row["id"], "lora")
        else:
            with pytest.raises(NotModelledError):
                estimate(row["id"], "lora")
    assert any(not row["estimable"] for row in rows)


# 7. No table cuts a value a user needs ----------------------------------------------------------------------------

@pytest.mark.parametrize("columns", [80, 100])
def test_plan_and_models_never_cut_values(capsys, monkeypatch, columns):
    code, out, _ = run(["plan", "--model", "8b", "--method", "lora", "--format", "json"], capsys)
    options = json.loads(out)["options"][:15]
    code, out, _ = run(["plan", "--model", "8b", "--method", "lora"], capsys, monkeypatch, columns)
    assert code == 0 and "…" not in out and "..." not in out
    for option in options:
        assert option["id"] in out and f"{option['cost_usd']:,.2f}" in out
    rows = [line for line in out.splitlines() if any(o["id"] in line for o in options) and ": " not in line]
    assert rows and max(len(line) for line in rows) <= columns
    code, out, _ = run(["models"], capsys, monkeypatch, columns)
    assert "…" not in out
    code, listing, _ = run(["models", "--format", "json"], capsys)
    code, out, _ = run(["models"], capsys, monkeypatch, columns)
    for row in json.loads(listing)["items"]:
        assert row["id"] in out


# 8. fit takes sizes, fuzzy names and the local GPU; values are rounded to ones people use -------------------------

@pytest.mark.parametrize("gpu", ["24GB", "4090", "RTX 4090", "rtx-4090", "NVIDIA GeForce RTX 4090"])
def test_fit_accepts_sizes_and_names(capsys, gpu):
    code, out, err = run(["fit", "--gpu", gpu, "--model", "8b", "--method", "qlora", "--format", "json"], capsys)
    assert code == 0, err
    target = json.loads(out)["gpu"]
    assert target["id"] == ("24GB" if gpu == "24GB" else "rtx-4090")
    assert target["memory_bytes"] == (24 * 10**9 if gpu == "24GB" else 25757220864)


def test_fit_ambiguous_or_unknown_names_suggest(capsys):
    code, _, err = run(["fit", "--gpu", "h100", "--model", "8b"], capsys)
    assert code == 2 and "h100-sxm5-80gb" in err and "h100-pcie-80gb" in err and err.count("\n") == 1
    code, _, err = run(["fit", "--gpu", "rtx4090", "--model", "8b"], capsys)
    assert code == 2 and "did you mean rtx-4090" in err


def test_fit_against_the_local_gpu(capsys):
    code, out, err = run(["fit", "--model", "1b", "--method", "qlora", "--nvml-recording",
                          str(NVML / "rtx4090-busy.json"), "--format", "json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["gpu"]["source"] == "local"
    free = 24564 * 2**20 - 9216 * 2**20  # the recording: total less the other process
    assert document["usable_bytes"] <= free


@pytest.mark.parametrize("solve, check", [
    ("seq-len", lambda value: value % 256 == 0),
    ("lora-rank", lambda value: value & (value - 1) == 0),
])
def test_fit_rounds_to_values_people_use_and_shows_the_exact_limit(capsys, solve, check):
    code, out, _ = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora", "--solve", solve,
                        "--format", "json"], capsys)
    document = json.loads(out)
    assert code == 0 and check(document["value"]) and document["exact_value"] >= document["value"]
    code, out, _ = run(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora", "--solve", solve], capsys)
    if document["exact_value"] != document["value"]:
        assert f"exact limit {document['exact_value']:,}" in out


def test_unknown_model_gets_did_you_mean(capsys):
    code, _, err = run(["estimate", "--model", "llama3-8b"], capsys)
    assert code == 2 and "did you mean" in err and "llama-3" in err and err.count("\n") == 1


# 9. Completion and versioned JSON ----------------------------------------------------------------------------------

def test_shell_completion_is_on(capsys, monkeypatch):
    import subprocess
    import sys

    code, out, _ = run(["--help"], capsys)
    assert "--install-completion" in out
    env = {"_VRAMPLAN_COMPLETE": "complete_bash", "COMP_WORDS": "vramplan estimate --model llama-3.1-7",
           "COMP_CWORD": "3"}
    import os

    done = subprocess.run([sys.executable, "-m", "vramplan"], env={**os.environ, **env}, capture_output=True,
                          text=True, check=False)
    assert done.stdout.split() == ["llama-3.1-70b"]
