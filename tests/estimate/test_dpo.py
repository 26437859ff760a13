"""The DPO estimate (vramplan/estimate/compose/dpo.py) against TRL's own DPO step traced on fake tensors
(vramplan/measure/trl_dpo.py): full, LoRA and QLoRA, with and without checkpointing, several prompt lengths and
families, per phase and in total."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tests.estimate.trace_checks import assert_peaks_within, assert_phases_within  # noqa: E402
from vramplan.api import estimate  # noqa: E402
from vramplan.measure.trl_dpo import trace_dpo_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

# (model, method, pairs, seq_len, prompt_len, checkpointing[, precompute_ref_log_probs])
CASES = [
    ("validation/configs/tiny-llama.json", "lora", 2, 256, 128, False),
    ("validation/configs/tiny-llama.json", "lora", 2, 256, 128, True),
    ("validation/configs/tiny-llama.json", "full", 2, 256, 128, False),
    ("validation/configs/tiny-llama.json", "full", 4, 128, 32, True),
    ("validation/configs/tiny-llama.json", "qlora", 2, 256, 128, True),
    ("validation/configs/tiny-llama.json", "qlora", 2, 256, 128, False),
    ("validation/configs/tiny-llama.json", "lora", 1, 512, 64, False),
    ("validation/configs/tiny-qwen3.json", "lora", 2, 256, 128, False),
    ("validation/configs/tiny-qwen3.json", "full", 2, 256, 100, True),
    ("validation/configs/tiny-mistral.json", "lora", 2, 256, 128, True),
    ("validation/configs/tiny-mistral.json", "qlora", 2, 256, 200, False),
    ("llama-3.2-1b", "lora", 2, 1024, 512, True),
    ("qwen2.5-0.5b", "full", 2, 1024, 256, True),
    ("llama-3.2-1b", "full", 1, 2048, 1024, False),
    ("validation/configs/tiny-llama.json", "full", 2, 256, 128, True, True),
    ("validation/configs/tiny-qwen3.json", "lora", 2, 256, 64, False, True),
]


def _run(case):
    model, method, pairs, seq_len, prompt_len, checkpointing, *precompute = case
    options = dict(batch_size=pairs, seq_len=seq_len, gradient_checkpointing=checkpointing, objective="dpo",
                   prompt_len=prompt_len, precompute_ref=bool(precompute and precompute[0]))
    resolved = resolve_model(model)
    trace = trace_dpo_step(resolved.config, resolve_setup(method, **options), prompt_len=prompt_len)
    return trace, estimate(model, method, **options)


@pytest.fixture(scope="module")
def results():
    return [(case, *_run(case)) for case in CASES]


def test_estimate_within_two_percent_median_five_max_of_the_trace(results):
    assert_peaks_within(results)


def test_every_phase_within_eight_percent(results):
    assert_phases_within(results, rel=0.08)


def test_reference_model_only_for_full_fine_tuning(results):
    for case, _, est in results:
        reference = est.phases[-1].components["reference_model"]
        if case[1] == "full" and case[6:] != (True,):  # precompute_ref_log_probs: no reference model
            assert reference == est.phases[-1].components["weights"]
        else:
            assert reference == 0


def test_precomputed_reference_saves_the_copy_and_its_forward(results):
    by_case = {case: (trace, est) for case, trace, est in results}
    online = by_case[("validation/configs/tiny-llama.json", "full", 4, 128, 32, True)][1]
    assert online.phases[-1].components["reference_model"] > 0
    trace, est = by_case[("validation/configs/tiny-llama.json", "full", 2, 256, 128, True, True)]
    assert est.phases[-1].components["reference_model"] == 0
    assert trace.phases[0].categories["parameters"] < 1.1 * trace.total_params * 2  # the policy's bf16 weights alone


def test_dpo_defaults_are_trls_and_rows_double():
    setup = resolve_setup("lora", objective="dpo")
    assert (setup.batch_size, setup.seq_len, setup.gradient_checkpointing) == (8, 1024, True)
    assert setup.rows == 16 and setup.labelled_tokens == 16 * 1023
    assert resolve_setup("lora", objective="dpo", prompt_len=512).labelled_tokens == 16 * 512
