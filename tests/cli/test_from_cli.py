"""`--from FILE` on the commands: the file's model, method and options, flags over the file, and the keys that
change memory but are not modelled shown on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from vramplan.cli.app import main

CONFIGS = Path(__file__).parents[1] / "fixtures" / "configs"


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_estimate_reads_model_method_and_options_from_the_file(capsys):
    code, out, err = run(["estimate", "--from", str(CONFIGS / "axolotl-unknown-key.yml"), "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["model"]["id"] == "llama-3.2-1b"
    assert data["setup"]["method"] == "lora" and data["setup"]["stack"] == "axolotl"
    assert (data["setup"]["batch_size"], data["setup"]["seq_len"], data["setup"]["lora"]["rank"]) == (4, 2048, 16)


def test_flags_override_the_file(capsys):
    code, out, _ = run(["estimate", "--from", str(CONFIGS / "axolotl-unknown-key.yml"), "--batch-size", "1",
                        "--lora-rank", "8", "--format", "json"], capsys)
    assert code == 0
    setup = json.loads(out)["setup"]
    assert (setup["batch_size"], setup["lora"]["rank"], setup["seq_len"]) == (1, 8, 2048)


def test_memory_changing_keys_that_are_not_modelled_are_reported_on_stderr(capsys):
    code, _, err = run(["check", "--from", str(CONFIGS / "axolotl-unknown-key.yml"), "--gpu", "h100-sxm5-80gb"],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "--accept-unmodelled" in err and "lora_modules_to_save" in err
    code, out, err = run(["check", "--from", str(CONFIGS / "axolotl-unknown-key.yml"), "--gpu", "h100-sxm5-80gb",
                          "--accept-unmodelled"], capsys)
    assert code == 0 and "NOT MODELLED" in out
    notes = [line for line in err.splitlines() if line.startswith("vramplan: note:")]
    assert any("lora_modules_to_save" in line for line in notes)
    assert any("tiled_mlp" in line for line in notes)


def test_a_config_that_names_no_model_needs_model(capsys):
    code, out, err = run(["estimate", "--from", str(CONFIGS / "deepspeed-zero3-offload.json")], capsys)
    assert code == 2 and out == "" and "--model" in err and err.count("\n") == 1
    code, out, err = run(["estimate", "--from", str(CONFIGS / "deepspeed-zero3-offload.json"), "--model", "8b",
                          "--method", "full", "--format", "json"], capsys)
    assert code == 0, err
    setup = json.loads(out)["setup"]
    assert setup["strategy"] == "zero3" and setup["offload"] != "none"


def test_a_missing_file_is_one_line_exit_2(capsys):
    code, out, err = run(["check", "--from", "no-such-config.yml", "--gpu", "h100-sxm5-80gb"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "no-such-config.yml" in err


def test_missing_model_without_from_is_a_usage_error(capsys):
    code, _, err = run(["estimate", "--method", "lora"], capsys)
    assert code == 2 and "--model" in err
