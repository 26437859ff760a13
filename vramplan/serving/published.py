"""Score vramplan's serving estimate against KV capacities that vLLM logged in public issues
(validation/serving/published_kv_capacity.toml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from vramplan.serving.engines import GIB
from vramplan.serving.formats import WeightFormat
from vramplan.serving.kv_cache import KvDtype, kv_layout

# The claim the end-to-end tolerance encodes: the non-KV terms (weights, activations, non-torch memory, CUDA graphs)
# are right to within 3% of the requested memory; as a share of the KV cache that is 0.03 x requested / KV.
NON_KV_TOLERANCE_OF_REQUESTED = 0.03
# kv-only rows: GiB printed to 0.01, blocks floored, and under TP the smallest rank sets the blocks.
KV_ONLY_TOLERANCE = 0.02


class PublishedRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str
    model: str
    gpu: str
    vllm_version: str
    engine: str
    mode: Literal["end-to-end", "kv-only"]
    tensor_parallel: int
    weights: WeightFormat
    kv_dtype: KvDtype
    gpu_memory_utilization: float
    max_model_len: int
    reported_kv_gib: float
    reported_blocks: int | None = None
    reported_tokens: int
    in_scope: bool
    notes: str = ""


class RowScore(BaseModel):
    id: str
    mode: str
    in_scope: bool
    reported_tokens: int
    estimated_tokens: int
    error: float  # (estimate - reported) / reported
    tolerance: float
    within: bool
    reported_kv_bytes: int
    estimated_kv_bytes: int | None  # end-to-end only


def load_rows(path: Path) -> list[PublishedRow]:
    from vramplan.tomlfile import read_toml

    rows = [PublishedRow(**row) for row in read_toml(path)["row"]]
    ids = [row.id for row in rows]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: duplicate row ids")
    return rows


def _kv_only(row: PublishedRow) -> RowScore:
    from vramplan.models.catalog import resolve_model
    from vramplan.serving.capacity import kv_capacity
    from vramplan.serving.sizing import engine_rule

    rule = engine_rule(row.engine)
    spec = resolve_model(row.model).spec
    layout = kv_layout(spec, row.kv_dtype, row.tensor_parallel, hybrid=rule.hybrid_kv)
    kv_bytes = round(row.reported_kv_gib * GIB)
    capacity = kv_capacity(rule, layout, kv_bytes, row.max_model_len, 2**20, 0)
    return _score(row, capacity.reported_tokens, KV_ONLY_TOLERANCE, kv_bytes, None)


def _end_to_end(row: PublishedRow) -> RowScore:
    from vramplan.serving.sizing import ServeOptions, plan_serving

    options = ServeOptions(weights=row.weights, kv_dtype=row.kv_dtype, tensor_parallel=row.tensor_parallel,
                           gpu_memory_utilization=row.gpu_memory_utilization, max_model_len=row.max_model_len,
                           engine=row.engine)
    plan = plan_serving(row.model, row.gpu, options)
    kv_bytes = round(row.reported_kv_gib * GIB)
    tolerance = NON_KV_TOLERANCE_OF_REQUESTED * plan.budget.requested_bytes / kv_bytes
    return _score(row, plan.capacity.reported_tokens, tolerance, kv_bytes, plan.budget.kv_bytes)


def _score(row: PublishedRow, estimate: int, tolerance: float, kv_bytes: int, estimated_kv: int | None) -> RowScore:
    error = (estimate - row.reported_tokens) / row.reported_tokens
    return RowScore(id=row.id, mode=row.mode, in_scope=row.in_scope, reported_tokens=row.reported_tokens,
                    estimated_tokens=estimate, error=error, tolerance=tolerance, within=abs(error) <= tolerance,
                    reported_kv_bytes=kv_bytes, estimated_kv_bytes=estimated_kv)


def score_row(row: PublishedRow) -> RowScore:
    return _kv_only(row) if row.mode == "kv-only" else _end_to_end(row)


INTRO = (
    "`vramplan serve-size` against the \"GPU KV cache size\" (or \"# GPU blocks\") that vLLM printed in public\n"
    "issues (validation/serving/published_kv_capacity.toml; scored by tests/serving/test_published.py). error =\n"
    "(estimate - reported) / reported, in tokens. end-to-end rows size the whole budget; kv-only rows turn the log's\n"
    "own available KV memory into tokens. Nothing was fitted to these rows. Regenerate the table with\n"
    "`python -m vramplan.serving.published`."
)


def results_markdown(rows: list[PublishedRow], scores: list[RowScore]) -> str:
    """The section for validation/RESULTS.md."""
    lines = ["## Serving: vLLM KV-cache capacity against published logs (serve-size)", "", INTRO, "",
             "| row | mode | vLLM | reported tokens | estimate | error | tolerance | within |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_id = {row.id: row for row in rows}
    for score in scores:
        row = by_id[score.id]
        within = ("yes" if score.within else "NO") + ("" if score.in_scope else " (out of scope)")
        lines.append(f"| [{score.id}]({row.source.split(' ')[0]}) | {score.mode} | {row.engine} | "
                     f"{score.reported_tokens:,} | {score.estimated_tokens:,} | {score.error:+.1%} | "
                     f"{score.tolerance:.1%} | {within} |")
    for score in scores:
        if score.estimated_kv_bytes is not None:
            lines.append(f"\n{score.id}: KV memory estimated {score.estimated_kv_bytes / GIB:.2f} GiB, "
                         f"logged {score.reported_kv_bytes / GIB:.2f} GiB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m vramplan.serving.published > the table of validation/serving/RESULTS.md
    table = Path(__file__).resolve().parents[2] / "validation" / "serving" / "published_kv_capacity.toml"
    published = load_rows(table)
    print(results_markdown(published, [score_row(row) for row in published]), end="")
