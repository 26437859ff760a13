"""TRL's GRPO step traced on fake tensors with transformers' own generate (vramplan/measure/trl_grpo.py): the
generation phase holds the KV cache and no gradients, the reference copy exists only for full fine-tuning with
beta > 0, and the CLI traces, estimates, checks and fits GRPO, refusing what it does not model."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from vramplan.measure.trl_grpo import trace_grpo_step  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

CONFIG_PATH = Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json"
CONFIG = json.loads(CONFIG_PATH.read_text())


def _trace(method, **options):
    setup = resolve_setup(method, objective="grpo", num_generations=2, **options)
    return trace_grpo_step(CONFIG, setup)


def test_generation_holds_the_cache_and_no_gradients():
    short, long = (_trace("lora", batch_size=2, prompt_len=16, completion_len=length) for length in (32, 512))
    for trace in (short, long):
        generation = next(p for p in trace.phases if p.phase == "generation")
        assert generation.categories["gradients"] == 0
    # keys and values of 4 layers x (2 kv heads x 32) in bf16 for each of 2 rows: 1 KiB per position
    per_token = 4 * 2 * 2 * 32 * 2 * 2
    grown = (next(p for p in long.phases if p.phase == "generation").peak_bytes
             - next(p for p in short.phases if p.phase == "generation").peak_bytes)
    assert grown >= (512 - 32) * per_token


def test_reference_copy_only_with_beta_under_full_fine_tuning():
    weights = CONFIG["vocab_size"] * CONFIG["hidden_size"] * 2 * 2  # embeddings and lm_head, bf16
    without = _trace("full", batch_size=2, prompt_len=16, completion_len=16, beta=0.0)
    with_beta = _trace("full", batch_size=2, prompt_len=16, completion_len=16, beta=0.04)
    extra = with_beta.phases[0].categories["parameters"] - without.phases[0].categories["parameters"]
    assert extra >= weights


def test_setup_is_grpo_only():
    with pytest.raises(ValueError, match="objective grpo"):
        trace_grpo_step(CONFIG, resolve_setup("lora", batch_size=1, seq_len=64))


def test_cli_traces_estimates_checks_and_fits_grpo(capsys):
    from vramplan.cli.app import main

    args = ["--model", str(CONFIG_PATH), "--method", "lora", "--objective", "grpo", "--batch-size", "2",
            "--num-generations", "2", "--prompt-len", "32", "--completion-len", "32"]
    assert main(["trace", *args]) == 0
    assert "GRPO: TRL 1.16's GRPOTrainer" in capsys.readouterr().out
    assert main(["estimate", *args]) == 0
    out = capsys.readouterr().out
    assert "objective: GRPO, TRL 1.16 GRPOTrainer" in out and "generation" in out
    assert main(["check", "--gpu", "24GB", *args]) == 0
    capsys.readouterr()
    assert main(["fit", "--gpu", "24GB", "--solve", "completion-len", *args, "--format", "json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["value"] >= 1024
    assert main(["fit", "--gpu", "24GB", "--solve", "num-generations", *args, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] >= 2


@pytest.mark.parametrize("flags, message", [
    (["--generation", "vllm-gpu"], "choose transformers, vllm-colocate, vllm-server"),
    (["--num-generations", "3"], "divisible by --num-generations 3"),
    (["--num-generations", "1"], "at least 2"),
    (["--seq-len", "512"], "--seq-len does not apply"),
    (["--gpus", "2", "--strategy", "ddp"], "one GPU"),
])
def test_cli_refuses_what_grpo_does_not_model(capsys, flags, message):
    from vramplan.cli.app import main

    args = ["estimate", "--model", str(CONFIG_PATH), "--method", "lora", "--objective", "grpo", "--batch-size", "2",
            "--num-generations", "2"]
    # a later flag wins for --num-generations
    assert main([*args, *flags]) == 2
    assert message in capsys.readouterr().err


def test_grpo_flags_need_the_grpo_objective(capsys):
    from vramplan.cli.app import main

    assert main(["estimate", "--model", "8b", "--completion-len", "256"]) == 2
    assert "applies to --objective grpo" in capsys.readouterr().err
