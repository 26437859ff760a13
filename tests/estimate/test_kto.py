"""The KTO estimate (vramplan/estimate/compose/kto.py) against TRL's own KTO step traced on fake tensors
(vramplan/measure/trl_kto.py): full, LoRA and QLoRA, with and without checkpointing, the reference online or
precomputed, several families, per phase and in total."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tests.estimate.trace_checks import (  # noqa: E402
    assert_peaks_within,
    assert_phases_within,
    assert_reference_copy,
)
from vramplan.api import estimate  # noqa: E402
from vramplan.measure.trl_kto import trace_kto_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

LLAMA, QWEN3, MISTRAL = (f"validation/configs/tiny-{name}.json" for name in ("llama", "qwen3", "mistral"))
# (model, method, rows, seq_len, prompt_len, checkpointing[, precompute_ref_log_probs])
CASES = [
    (LLAMA, "lora", 4, 256, 128, True),
    (LLAMA, "full", 4, 256, 128, True),
    (LLAMA, "qlora", 4, 256, 64, False),
    (LLAMA, "full", 2, 512, 100, False),
    (LLAMA, "lora", 4, 256, 128, True, True),
    (QWEN3, "lora", 2, 256, 128, False),
    (QWEN3, "full", 4, 128, 32, True, True),
    (MISTRAL, "qlora", 4, 256, 200, True),
    ("qwen2.5-0.5b", "lora", 2, 512, 256, True),
]


def _run(case):
    model, method, rows, seq_len, prompt_len, checkpointing, *precompute = case
    options = dict(objective="kto", batch_size=rows, seq_len=seq_len, prompt_len=prompt_len,
                   gradient_checkpointing=checkpointing, precompute_ref=bool(precompute and precompute[0]))
    trace = trace_kto_step(resolve_model(model).config, resolve_setup(method, **options))
    return trace, estimate(model, method, **options)


@pytest.fixture(scope="module")
def results():
    return [(case, *_run(case)) for case in CASES]


def test_estimate_within_two_percent_median_five_max_of_the_trace(results):
    assert_peaks_within(results)


def test_every_phase_within_five_percent(results):
    assert_phases_within(results, rel=0.05)


def test_reference_copy_only_for_full_fine_tuning_without_precomputed_log_probs(results):
    assert_reference_copy(results, lambda case: case[1] == "full" and case[6:] != (True,))


def test_cli_traces_and_estimates_kto(capsys):
    from vramplan.cli.app import main

    args = ["--model", LLAMA, "--method", "lora", "--objective", "kto", "--batch-size", "2", "--seq-len", "128",
            "--prompt-len", "64"]
    assert main(["trace", *args]) == 0
    assert "KTO: TRL 1.16's KTOTrainer._compute_loss" in capsys.readouterr().out
    assert main(["estimate", *args]) == 0
    assert "objective: KTO, TRL 1.16 KTOTrainer" in capsys.readouterr().out
