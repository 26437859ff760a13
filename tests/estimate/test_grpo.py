"""The GRPO estimate (vramplan/estimate/compose/grpo.py) against TRL's own GRPO step traced on fake tensors with
transformers' own `generate` (vramplan/measure/trl_grpo.py): full, LoRA and QLoRA, with and without a reference
model (beta), several generation batches, prompt and completion lengths, precisions and families, per phase (the
generation phase included) and in total."""

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
from vramplan.measure.trl_grpo import trace_grpo_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

LLAMA, QWEN3, MISTRAL = (f"validation/configs/tiny-{name}.json" for name in ("llama", "qwen3", "mistral"))
# (model, method, batch, prompt_len, completion_len, beta, steps_per_generation, num_generations[, extra options])
CASES = [
    (LLAMA, "lora", 2, 64, 32, 0.0, 1, 2),
    (LLAMA, "lora", 4, 16, 256, 0.0, 2, 4),
    (LLAMA, "lora", 2, 300, 32, 0.04, 1, 2),
    (LLAMA, "full", 2, 64, 32, 0.04, 2, 2),
    (LLAMA, "full", 2, 300, 32, 0.0, 1, 2, {"gradient_checkpointing": False}),
    (LLAMA, "full", 2, 64, 128, 0.0, 1, 2, {"precision": "bf16-mixed"}),
    (LLAMA, "qlora", 2, 64, 32, 0.0, 1, 2),
    (LLAMA, "lora", 2, 64, 64, 0.1, 1, 2, {"precision": "bf16-mixed"}),
    (QWEN3, "qlora", 2, 64, 32, 0.04, 1, 2),
    (QWEN3, "lora", 4, 128, 64, 0.0, 1, 4),
    (QWEN3, "full", 2, 32, 96, 0.04, 1, 2),
    (MISTRAL, "lora", 4, 32, 64, 0.1, 1, 2, {"gradient_checkpointing": False}),
    (MISTRAL, "qlora", 2, 300, 32, 0.0, 1, 2),
    ("llama-3.2-1b", "lora", 2, 256, 64, 0.0, 2, 4),
    ("qwen2.5-0.5b", "full", 2, 128, 64, 0.04, 1, 2),
    ("qwen2.5-0.5b", "qlora", 4, 64, 32, 0.0, 1, 4),
]


def options(case) -> dict:
    _, _, batch, prompt, completion, beta, steps, generations, *extra = case
    return dict(objective="grpo", batch_size=batch, prompt_len=prompt, completion_len=completion, beta=beta,
                steps_per_generation=steps, num_generations=generations, **(extra[0] if extra else {}))


def _run(case):
    model, method = case[:2]
    trace = trace_grpo_step(resolve_model(model).config, resolve_setup(method, **options(case)))
    return trace, estimate(model, method, **options(case))


@pytest.fixture(scope="module")
def results():
    return [(case, *_run(case)) for case in CASES]


def test_estimate_within_two_percent_median_five_max_of_the_trace(results):
    assert_peaks_within(results)


def test_every_phase_within_five_percent(results):
    assert_phases_within(results, rel=0.05, required=("generation",))


def test_reference_model_only_for_full_fine_tuning_with_beta(results):
    assert_reference_copy(results, lambda case: case[1] == "full" and case[5] > 0)


def test_generation_holds_the_kv_cache_of_the_whole_batch():
    # Llama-3.2-1B: 16 layers x (8 kv heads x 64) x 2 (keys, values) x 2 bytes = 32 KiB per token; 16 completions
    # of 64 + 1984 tokens: the last decoding step is the phase's peak
    est = estimate("llama-3.2-1b", "lora", objective="grpo", batch_size=8, steps_per_generation=2,
                   prompt_len=64, completion_len=1984)
    generation = next(p for p in est.phases if p.phase == "generation")
    per_token = 16 * 8 * 64 * 2 * 2
    assert generation.components["kv_cache"] >= 16 * (2048 - 1) * per_token
    assert generation.components["kv_cache"] < 16 * 2048 * per_token * 1.05
