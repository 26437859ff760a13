"""The ORPO estimate (vramplan/estimate/compose/orpo.py, components/orpo_loss.py) against TRL's own ORPO step
traced on fake tensors (vramplan/measure/trl_orpo.py): full and LoRA, with and without checkpointing, several
families, per phase and in total; and what ORPO refuses."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tests.estimate.trace_checks import assert_peaks_within, assert_phases_within  # noqa: E402
from vramplan.api import estimate  # noqa: E402
from vramplan.errors import NotModelledError, UsageError  # noqa: E402
from vramplan.estimate.components.orpo_loss import orpo_logits_memory  # noqa: E402
from vramplan.measure.trl_orpo import trace_orpo_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

LLAMA, QWEN3, MISTRAL = (f"validation/configs/tiny-{name}.json" for name in ("llama", "qwen3", "mistral"))
# (model, method, pairs, seq_len, checkpointing[, precision])
CASES = [
    (LLAMA, "lora", 4, 256, True),
    (LLAMA, "full", 2, 256, False),
    (LLAMA, "full", 2, 256, True, "fp32"),
    (QWEN3, "lora", 2, 512, False),
    (QWEN3, "full", 4, 128, True),
    (MISTRAL, "full", 4, 128, True),
    (MISTRAL, "lora", 2, 256, False, "bf16-pure"),
    ("qwen2.5-0.5b", "lora", 2, 256, True),
]


def _options(case):
    _, _, pairs, seq_len, checkpointing, *precision = case
    options = dict(objective="orpo", batch_size=pairs, seq_len=seq_len, gradient_checkpointing=checkpointing)
    if precision:
        options["precision"] = precision[0]
    return options


def _run(case):
    model, method = case[:2]
    options = _options(case)
    trace = trace_orpo_step(resolve_model(model).config, resolve_setup(method, **options))
    return trace, estimate(model, method, **options)


@pytest.fixture(scope="module")
def results():
    return [(case, *_run(case)) for case in CASES]


def test_estimate_within_two_percent_median_five_max_of_the_trace(results):
    assert_peaks_within(results)


def test_every_phase_within_five_percent(results):
    assert_phases_within(results, rel=0.05)


def test_the_loss_terms_are_the_traced_temporaries_of_the_backward(results):
    """The backward's peak is the loss's (the logits' gradients): the trace's temporaries there are the estimate's
    logits_loss term within 1%."""
    for case, trace, est in results:
        backward = next(p for p in trace.phases if p.phase == "backward")
        estimated = next(p for p in est.phases if p.phase == "backward").components["logits_loss"]
        assert estimated == pytest.approx(backward.categories["temporaries"], rel=0.01), case


def test_the_estimate_is_the_full_logits_at_real_size():
    """Llama 3.1 8B LoRA at ORPOConfig's defaults: 8 pairs are 16 rows of 1024 tokens, whose fp32 logits (16 x 1024
    x 128,256 x 4 bytes, 7.83 GiB) are kept into backward with the chosen rows' log-softmax; the logits term is
    the largest of the step's (its rows' rule is the traced one above, at small sizes)."""
    est = estimate("8b", "lora", objective="orpo")
    logits = 16 * 1024 * 128256 * 4
    rows = resolve_setup("lora", batch_size=16, seq_len=1024)
    assert orpo_logits_memory(resolve_model("8b").spec, rows).saved_bytes >= logits
    backward = next(p for p in est.phases if p.phase == "backward").components
    assert backward["logits_loss"] == max(backward.values())


def test_no_reference_and_dropout_off():
    est = estimate("8b", "lora", objective="orpo")
    assert est.setup.rows == 16 and est.setup.lora.dropout == 0.0
    assert "reference_model" not in est.components
    assert any("disable_dropout" in line for line in est.assumptions)


@pytest.mark.parametrize("options, error", [
    (dict(method="qlora"), NotModelledError),
    (dict(prompt_len=128), UsageError),
    (dict(precompute_ref=True), UsageError),
    (dict(strategy="ddp", gpus=2), NotModelledError),
])
def test_refused(options, error):
    method = options.pop("method", "lora")
    with pytest.raises(error):
        estimate("8b", method, objective="orpo", **options)


def test_cli_traces_and_estimates_orpo(capsys):
    from vramplan.cli.app import main

    args = ["--model", LLAMA, "--method", "lora", "--objective", "orpo", "--batch-size", "2", "--seq-len", "128"]
    assert main(["trace", *args]) == 0
    assert "ORPO: TRL 1.16's experimental ORPOTrainer" in capsys.readouterr().out
    assert main(["estimate", *args]) == 0
    assert "objective: ORPO, TRL 1.16 experimental ORPOTrainer" in capsys.readouterr().out
    assert main(["estimate", *args[:4], "--method", "qlora", "--objective", "orpo"]) == 2


def test_from_reads_an_orpo_config(tmp_path, capsys):
    import json

    from vramplan.cli.app import main

    config = tmp_path / "orpo.json"
    config.write_text('{"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 2, '
                      '"max_length": 2048, "generate_during_eval": false, "bf16": true}')
    assert main(["estimate", "--from", str(config), "--method", "lora", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    setup = document["setup"]
    assert (setup["objective"], setup["batch_size"], setup["seq_len"]) == ("orpo", 2, 2048)
    assert document["peak_allocated_bytes"] == estimate("8b", "lora", objective="orpo", batch_size=2,
                                                        seq_len=2048).peak_allocated_bytes


@pytest.mark.parametrize("fields, objective, seq_len", [
    ({"generate_during_eval": False, "max_completion_length": 256}, "orpo", 1024),  # ORPOConfig's own field too
    ({"generate_during_eval": False, "max_length": None}, "orpo", 512),  # orpo_trainer.py's fallback
    ({"generate_during_eval": False, "precompute_ref_log_probs": False}, "dpo", 1024),  # TRL 0.x's DPOConfig
])
def test_from_tells_orpo_from_dpo_and_grpo(tmp_path, fields, objective, seq_len):
    import json

    from vramplan.importers import load_run_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "bf16": True, **fields}))
    options = load_run_config(config).options
    assert (options.objective, options.seq_len) == (objective, seq_len)


def test_from_refuses_cpo_and_kept_dropout(tmp_path, capsys):
    from vramplan.cli.app import main

    cpo = tmp_path / "cpo.json"
    cpo.write_text('{"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 2, '
                   '"cpo_alpha": 1.0, "generate_during_eval": false}')
    assert main(["estimate", "--from", str(cpo), "--method", "lora"]) == 2
    assert "CPO/SimPO" in capsys.readouterr().err
    kept = tmp_path / "orpo_dropout.json"
    kept.write_text('{"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 2, '
                    '"generate_during_eval": false, "disable_dropout": false}')
    assert main(["check", "--gpu", "h100-sxm5-80gb", "--from", str(kept), "--method", "lora"]) == 2
    assert "disable_dropout=False" in capsys.readouterr().err
