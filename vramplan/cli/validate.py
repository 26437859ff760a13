"""`vramplan validate`: score the estimator against traces (the matrix) and against GPU measurements."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vramplan.cli.render import check_format, emit_json_document

MatrixOpt = Annotated[Path, typer.Option("--matrix", help="Validation matrix (TOML).")]
Subset = Annotated[str, typer.Option("--subset", help="ci (fast, small configs) | full | all | none")]
CaseOpt = Annotated[Optional[list[str]], typer.Option("--case", help="Run only this case id (repeatable).")]
Out = Annotated[Path, typer.Option("--out", help="Folder for the CSV files and the PNG chart.")]
Measurements = Annotated[
    Optional[Path], typer.Option("--measurements", help="Folder of probe .jsonl files to score against.")
]
Published = Annotated[
    Optional[Path], typer.Option("--published", help="published_measurements.tsv (needs --mapping).")
]
Mapping = Annotated[Optional[Path], typer.Option("--mapping", help="TOML mapping published rows to setups.")]
Format = Annotated[str, typer.Option("--format", help="table | json")]


def validate_command(
    matrix: MatrixOpt = Path("validation/matrix.toml"),
    subset: Subset = "ci",
    case: CaseOpt = None,
    out: Out = Path("validation/results"),
    measurements: Measurements = None,
    published: Published = None,
    mapping: Mapping = None,
    fmt: Format = "table",
) -> None:
    """Run the matrix through estimate and trace; score estimates against measured GPU peaks."""
    from vramplan.errors import UsageError, require_extra

    check_format(fmt)
    if (published is None) != (mapping is None):
        raise UsageError("--published and --mapping go together")
    require_extra("report", "pandas", "matplotlib")
    from vramplan.validate import report
    from vramplan.validate.matrix import load_matrix, select_cases
    from vramplan.validate.measured import load_probe_files, load_published, score_measured
    from vramplan.validate.score import score_cases, summarise

    document: dict = {}
    sections: list[str] = []
    if subset != "none" or case:
        cases = select_cases(load_matrix(matrix), subset, case)
        results, skipped = score_cases(cases, _progress(len(cases)))
        document["matrix"] = {"results": [r.model_dump() for r in results],
                              "skipped": [s.model_dump() for s in skipped]}
        if results:
            frame = report.matrix_frame(results)
            summary = summarise(results)
            files = report.write_matrix_outputs(frame, out)
            document["matrix"]["summary"] = summary.model_dump()
            sections += [report.matrix_table_text(frame), report.summary_text(summary)]
            sections.append("wrote " + ", ".join(map(str, files)))
        if skipped:
            reasons = sorted({s.reason for s in skipped})
            sections.append(f"skipped {len(skipped)} of {len(cases)} cases (not scored): " + "; ".join(reasons))
    for name, peaks in _measured_sources(measurements, published, mapping, load_probe_files, load_published):
        if not peaks:
            sections.append(f"{name}: no measurements found")
            continue
        scores = score_measured(peaks)
        frame = report.measured_frame(scores)
        files = report.write_measured_outputs(frame, out, name)
        document[name] = [score.model_dump() for score in scores]
        sections += [f"{name} (error = (estimate - measured) / measured):", report.measured_table_text(frame)]
        sections.append("wrote " + ", ".join(map(str, files)))
    if measurements is not None:
        _calibration(measurements, document, sections)
    if not document and not sections:
        raise UsageError("nothing to validate: give a --subset, --case, --measurements or --published")
    if fmt == "json":
        emit_json_document(document, "validate")
    else:
        sys.stdout.write("\n\n".join(sections) + "\n")


def _calibration(measurements, document: dict, sections: list[str]) -> None:
    """The CUDA context and allocator slack fitted per GPU from the probe files, into the document and the text."""
    from vramplan.validate.calibrate import calibrate, read_probe_records

    fitted = calibrate(read_probe_records(measurements))
    document["calibration"] = [row.model_dump() for row in fitted]
    if fitted:
        lines = [f"calibration per GPU ({fitted[0].method}):"]
        for row in fitted:
            context = "?" if row.cuda_context_bytes is None else f"{row.cuda_context_bytes / 2**20:.0f} MiB"
            slack = "?" if row.reserved_slack_fraction is None else f"{100 * row.reserved_slack_fraction:.1f}%"
            lines.append(f"  {row.gpu}: {row.probes} probes, CUDA context {context}, reserved slack {slack}")
        sections.append("\n".join(lines))


def _measured_sources(measurements, published, mapping, load_probe_files, load_published):
    if measurements is not None:
        def warn(where: str) -> None:
            sys.stderr.write(f"vramplan: warning: {where}: not a JSON line (a probe cut off mid-write?), skipped\n")

        yield "measurements", load_probe_files(measurements, warn)
    if published is not None:
        yield "published", load_published(published, mapping)


def _progress(total: int):
    """One stderr line per case as it finishes (stdout keeps the result, JSON included)."""
    count = 0

    def report_case(outcome) -> None:
        nonlocal count
        count += 1
        if hasattr(outcome, "reason"):
            sys.stderr.write(f"[{count}/{total}] {outcome.id}: skipped ({outcome.reason})\n")
        else:
            sys.stderr.write(f"[{count}/{total}] {outcome.id}: {100 * outcome.error:+.2f}% "
                             f"({outcome.trace_seconds:.0f} s)\n")
        sys.stderr.flush()

    return report_case
