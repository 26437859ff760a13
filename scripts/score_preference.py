"""Score published DPO/GRPO memory figures against vramplan's estimate.

Reads validation/preference/published_preference_memory.tsv (the published figures) and
validation/preference/scoring.toml (per row: the vramplan options that reproduce the setup, each with why, or the
reason the row cannot be scored), prints the Markdown report and writes validation/preference/RESULTS.md.
Nothing is fitted: the estimate is vramplan.api.estimate as it stands. No torch, no tracing.

Run from the repo root: python scripts/score_preference.py [--check]
(--check writes nothing and exits 1 when RESULTS.md differs from what the script would write.)
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from vramplan.api import estimate
from vramplan.tomlfile import read_toml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "validation" / "preference"
TSV = HERE / "published_preference_memory.tsv"
MAPPING = HERE / "scoring.toml"
RESULTS = HERE / "RESULTS.md"

GIB = 2**30
WIDTH = 120  # prose lines of RESULTS.md (table rows stay one line each)
UNIT_BYTES = {"MiB": 2**20, "GiB": 2**30, "GB": 10**9}  # "G" alone is ambiguous: the mapping must say
AMBIGUOUS_UNITS = {"GB", "G"}  # people write GB for 2^30 (nvidia-smi users) as often as for 10^9
QUANTITY = re.compile(r"(\d+(?:\.\d+)?)\s*(MiB|GiB|GB|G)\b")

# mem_metric in the TSV -> (Estimate field, what we say about it)
METRICS = {
    "nvidia-smi": ("device_bytes", "nvidia-smi -> device_bytes"),
    "torch allocated": ("peak_allocated_bytes", "max_memory_allocated -> peak_allocated_bytes"),
    "torch reserved": ("peak_reserved_bytes", "max_memory_reserved -> peak_reserved_bytes"),
    "unknown": ("device_bytes", "metric unknown: compared with device_bytes"),
}


@dataclass(frozen=True)
class RowScore:
    """One TSV row: scored (error set), bound-checked (bound_verdict set) or not scored (reason set)."""

    id: str
    setup: str
    published_text: str
    metric_note: str = ""
    published_bytes: int | None = None
    ours_bytes: int | None = None
    error: float | None = None
    reason: str | None = None
    bound_verdict: str | None = None
    caveats: list[str] = field(default_factory=list)
    assumptions: dict[str, str] = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)
    alternatives: list[str] = field(default_factory=list)


def read_rows(path: Path = TSV) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_mapping(path: Path = MAPPING) -> dict:
    return read_toml(path)


def check_mapping(rows: list[dict[str, str]], mapping: dict) -> None:
    """Every TSV id has an entry; scorable entries justify every option; the rest give a reason."""
    ids = [row["id"] for row in rows]
    entries = {key: value for key, value in mapping.items() if key.startswith("PF")}
    if missing := [i for i in ids if i not in entries]:
        raise ValueError(f"{MAPPING.name}: no entry for {', '.join(missing)}")
    if extra := sorted(set(entries) - set(ids)):
        raise ValueError(f"{MAPPING.name}: entries for ids not in the TSV: {', '.join(extra)}")
    for row_id, entry in entries.items():
        if not entry.get("scorable") and not entry.get("reason"):
            raise ValueError(f"{row_id}: scorable = false needs a reason")
        if entry.get("scorable") or "bound" in entry:
            unexplained = set(entry["options"]) - set(entry.get("why", {}))
            if unexplained:
                raise ValueError(f"{row_id}: options without a why line: {', '.join(sorted(unexplained))}")


def published_bytes(text: str, unit_means: str | None = None) -> int:
    """The first quantity in `text` in bytes. MiB/GiB are binary; GB/G need `unit_means` ("GiB" or "GB")."""
    match = QUANTITY.search(text)
    if match is None:
        raise ValueError(f"no memory quantity in {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit in AMBIGUOUS_UNITS:
        if unit_means is None:
            raise ValueError(f"{text!r}: say in unit_means whether {unit} is 10^9 or 2^30 bytes")
        unit = unit_means
    return round(number * UNIT_BYTES[unit])


def setup_summary(row: dict[str, str]) -> str:
    """A one-line description of the published setup, from the TSV's own columns."""
    def short(column: str) -> str:
        return row[column].split(" (")[0]

    parts = [f"{row['objective']} {row['method']} {row['model']}", f"batch {short('batch_per_gpu')}",
             f"len {short('max_length_or_prompt+completion')}"]
    if row["objective"] == "grpo":
        parts.append(f"gen {short('generation_engine')}")
    gpus = short("n_gpus")
    parts.append(f"{gpus}{'' if 'GPU' in gpus else ' GPU'}, {short('strategy')}")
    return "; ".join(parts)


def metric_for(row: dict[str, str]) -> tuple[str, str]:
    if row["mem_metric"] not in METRICS:
        raise ValueError(f"{row['id']}: unknown mem_metric {row['mem_metric']!r}")
    return METRICS[row["mem_metric"]]


def ours(entry: dict, metric: str, overrides: dict | None = None) -> int:
    options = {**entry["options"], **(overrides or {})}
    return getattr(estimate(entry["model"], entry["method"], **options), metric)


def alternative_lines(entry: dict, metric: str, published: int) -> list[str]:
    lines = []
    for alternative in entry.get("alternatives", []):
        value = ours(entry, metric, alternative["options"])
        lines.append(f"{alternative['label']}: {value / GIB:.2f} GiB ({(value - published) / published:+.1%})")
    return lines


def bound_verdict(ours_bytes: int, bound: dict) -> str:
    """The published run needed more than bound['value']: does the estimate agree?"""
    limit = published_bytes(bound["value"])
    if ours_bytes > limit:
        return f"consistent: ours {ours_bytes / GIB:.2f} GiB exceeds the {limit / GIB:.0f} GiB the run outgrew"
    return (f"INCONSISTENT: ours {ours_bytes / GIB:.2f} GiB fits in {limit / GIB:.0f} GiB, but the run OOMed "
            f"(ours at least {(limit - ours_bytes) / limit:.0%} low)")


def score_row(row: dict[str, str], entry: dict) -> RowScore:
    base = {"id": row["id"], "setup": setup_summary(row), "published_text": row["peak_mem"],
            "caveats": entry.get("caveats", []), "assumptions": entry.get("why", {}),
            "options": entry.get("options", {})}
    metric, note = metric_for(row)
    if not entry["scorable"]:
        if "bound" not in entry:
            return RowScore(**base, reason=entry["reason"])
        value = ours(entry, metric)
        return RowScore(**base, metric_note=note, ours_bytes=value, reason=entry["reason"],
                        bound_verdict=bound_verdict(value, entry["bound"]))
    published = published_bytes(row["peak_mem"], entry.get("unit_means"))
    value = ours(entry, metric)
    return RowScore(**base, metric_note=note, published_bytes=published, ours_bytes=value,
                    error=(value - published) / published,
                    alternatives=alternative_lines(entry, metric, published))


def score_all() -> list[RowScore]:
    rows, mapping = read_rows(), read_mapping()
    check_mapping(rows, mapping)
    return [score_row(row, mapping[row["id"]]) for row in rows]


def _cell(text: str) -> str:
    return text.replace("|", "/")


def table_line(score: RowScore) -> str:
    published = score.published_text
    if score.published_bytes is not None:
        published = f"{score.published_bytes / GIB:.2f} GiB ({score.published_text})"
    ours_cell = "-" if score.ours_bytes is None else f"{score.ours_bytes / GIB:.2f} GiB"
    if score.error is not None:
        error, note = f"{score.error:+.1%}", score.metric_note
    elif score.bound_verdict is not None:
        error, note = "bound", f"not scored: {score.reason}; {score.bound_verdict}"
    else:
        error, note = "-", f"not scored: {score.reason}"
    cells = [score.id, score.setup, published, ours_cell, error, note]
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def summary_lines(scores: list[RowScore]) -> list[str]:
    scored = [s for s in scores if s.error is not None]
    bounds = [s for s in scores if s.bound_verdict is not None]
    lines = [f"- Scored {len(scored)} of {len(scores)} rows; {len(bounds)} OOM bound(s) checked, not scored."]
    if scored:
        errors = [abs(s.error) for s in scored]
        worst = max(scored, key=lambda s: abs(s.error))
        lines.append(f"- Median |error| {statistics.median(errors):.1%}; max |error| {max(errors):.1%} ({worst.id}); "
                     f"signed: {', '.join(f'{s.id} {s.error:+.1%}' for s in scored)}.")
    for s in bounds:
        lines.append(f"- {s.id}: {s.bound_verdict}.")
    return [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in lines]


def detail_lines(score: RowScore) -> list[str]:
    lines = [f"### {score.id}", ""]
    items = [f"`{key} = {value!r}`: {score.assumptions[key]}" for key, value in score.options.items()]
    items += [f"caveat: {caveat}" for caveat in score.caveats]
    items += [f"alternative, not scored: {line}" for line in score.alternatives]
    return lines + [textwrap.fill(item, WIDTH, initial_indent="- ", subsequent_indent="  ") for item in items] + [""]


def render(scores: list[RowScore], reading: list[str]) -> str:
    intro = textwrap.fill(
        "Generated by `python scripts/score_preference.py` from published_preference_memory.tsv and scoring.toml "
        "(the options and why for each row). error = (ours - published) / published, compared on the metric the "
        "row names (nvidia-smi -> device_bytes; torch allocated -> peak_allocated_bytes; unknown -> device_bytes). "
        "Published MiB/GiB are binary (2^20/2^30 bytes); all figures below are GiB. vramplan models TRL 1.16 on "
        "one GPU with transformers generate; nothing was tuned to these rows. A published GB or G (10^9 or 2^30?) "
        "needs unit_means in scoring.toml; no scored row uses one.", WIDTH)
    lines = [
        "## Preference tuning (DPO/GRPO): published memory figures against vramplan's estimate", "", intro, "",
        "| id | setup (as published) | published | ours | error | note |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    lines += [table_line(score) for score in scores]
    lines += ["", *summary_lines(scores), "", "## Options used for the rows with an estimate", ""]
    for score in scores:
        if score.ours_bytes is not None:
            lines += detail_lines(score)
    lines += ["## Reading (hand-written in scoring.toml against the numbers above)", "",
              textwrap.fill(" ".join(reading), WIDTH), ""]
    return "\n".join(lines)


def build() -> str:
    return render(score_all(), read_mapping().get("reading", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is not up to date")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        current = RESULTS.read_text() if RESULTS.exists() else ""
        if current != text:
            print(f"{RESULTS.relative_to(ROOT)} is out of date: run python scripts/score_preference.py",
                  file=sys.stderr)
            return 1
        return 0
    print(text)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
