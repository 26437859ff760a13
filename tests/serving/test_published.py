"""vramplan's serving estimate against KV capacities vLLM logged in public issues
(validation/serving/published_kv_capacity.toml; tolerances and their reasons are stated there)."""

from pathlib import Path

import pytest

from vramplan.serving.engines import GIB
from vramplan.serving.kv_cache import kv_layout
from vramplan.serving.published import load_rows, results_markdown, score_row

TABLE = Path(__file__).resolve().parents[2] / "validation" / "serving" / "published_kv_capacity.toml"
ROWS = load_rows(TABLE)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_published_capacity(row):
    score = score_row(row)
    if not row.in_scope:
        pytest.skip(f"reported, not asserted: error {score.error:+.1%} ({row.notes})")
    assert score.within, f"{row.id}: estimate {score.estimated_tokens:,} vs {row.reported_tokens:,} tokens " \
                         f"({score.error:+.1%}, tolerance {score.tolerance:.1%})"


def test_rows_cover_what_the_brief_asked_for():
    ids = {row.id for row in ROWS}
    assert {"vllm-10517-llama31-8b-rtx3090-20k", "vllm-21348-qwen3-235b-fp8-4xh100-kv",
            "vllm-25350-fp8-kv-100k-kv"} <= ids
    assert all(row.source.startswith("https://") for row in ROWS)


def test_fp8_error_text_matches_vllms_in_issue_25350():
    """Same issue, max_model_len 221000 with 5.59 GiB available: vLLM said 10.12 GiB needed and an estimated maximum
    model length of 122080; the 0.01 GiB rounding of 5.59 allows one block (16 tokens) either way."""
    from vramplan.models.catalog import resolve_model
    from vramplan.serving.capacity import kv_capacity
    from vramplan.serving.engines import VLLM_0_10

    layout = kv_layout(resolve_model("qwen3-30b-a3b").spec, "fp8")
    capacity = kv_capacity(VLLM_0_10, layout, round(5.59 * GIB), 221000, 1024, 0)
    assert f"{capacity.sequence_bytes / GIB:.2f}" == "10.12" and not capacity.fits_one_sequence
    assert abs(capacity.estimated_max_model_len - 122080) <= 16


def test_results_section_lists_every_row():
    text = results_markdown(ROWS, [score_row(row) for row in ROWS])
    assert all(row.id in text for row in ROWS) and "| row | mode |" in text
