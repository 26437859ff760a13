"""Tables (pandas), CSV files and a PNG chart of the validation results. Imports pandas/matplotlib lazily."""

from __future__ import annotations

from pathlib import Path

from vramplan.result import COMPARED_GROUPS
from vramplan.validate.measured import MeasuredScore
from vramplan.validate.score import (
    TARGET_MAX_ABS_ERROR,
    TARGET_MEDIAN_ABS_ERROR,
    CaseResult,
    Summary,
    group_column,
)

GIB = 1024**3
# CaseResult's dict fields: flattened into columns per group (the components stay in the JSON).
_NESTED_FIELDS = {"estimate_components", "trace_components", "estimate_groups", "trace_groups", "group_errors"}


def matrix_frame(results: list[CaseResult]):
    """One row per case; each compared group gets flat columns <group>_estimate_bytes, _trace_bytes, _error(_pct)."""
    import pandas as pd

    frame = pd.DataFrame([result.model_dump(exclude=_NESTED_FIELDS) for result in results])
    frame["estimate_gib"] = frame["estimate_bytes"] / GIB
    frame["trace_gib"] = frame["trace_bytes"] / GIB
    frame["error_pct"] = 100 * frame["error"]
    for group in COMPARED_GROUPS:
        stem = group_column(group)
        frame[f"{stem}_estimate_bytes"] = [result.estimate_groups[group] for result in results]
        frame[f"{stem}_trace_bytes"] = [result.trace_groups[group] for result in results]
        frame[f"{stem}_error"] = [result.group_errors[group] for result in results]
        frame[f"{stem}_error_pct"] = 100 * frame[f"{stem}_error"]
    return frame


def measured_frame(scores: list[MeasuredScore]):
    import pandas as pd

    frame = pd.DataFrame([score.model_dump() for score in scores])
    frame["measured_gib"] = frame["measured_bytes"] / GIB
    frame["estimate_gib"] = frame["estimate_bytes"] / GIB
    frame["error_pct"] = 100 * frame["error"]
    return frame


def matrix_table_text(frame) -> str:
    """The cases, with each group's error as a % of the trace's peak (at the trace's peak phase)."""
    columns = ["id", "estimate_gib", "trace_gib", "error_pct", "estimate_phase", "trace_phase"]
    columns += [f"{group_column(group)}_error_pct" for group in COMPARED_GROUPS]
    return frame[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}")


def measured_table_text(frame) -> str:
    columns = ["id", "metric", "gpu", "measured_gib", "estimate_gib", "error_pct", "tolerance", "within_tolerance"]
    return frame[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}")


def summary_text(summary: Summary) -> str:
    target = f"median <= {100 * TARGET_MEDIAN_ABS_ERROR:g}%, max <= {100 * TARGET_MAX_ABS_ERROR:g}%"
    lines = [
        f"{summary.cases} cases: median |error| {100 * summary.median_abs_error:.2f}%, "
        f"max |error| {100 * summary.max_abs_error:.2f}% ({summary.worst_case}), "
        f"worst under-estimate {100 * summary.worst_under_estimate:.2f}%; "
        f"target ({target}, the total and each group) {'met' if summary.meets_target else 'NOT met'}",
        "per group, as a share of the trace's peak at its peak phase:",
    ]
    lines += [
        f"  {group_column(group)}: median |error| {100 * median:.2f}%, max |error| "
        f"{100 * summary.group_max_abs_error[group]:.2f}% ({summary.group_worst_case[group]})"
        for group, median in summary.group_median_abs_error.items()
    ]
    return "\n".join(lines)


def write_matrix_outputs(frame, out: Path) -> list[Path]:
    """matrix.csv and matrix.png (estimate vs trace, log-log, with the +-5% band) under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "matrix.csv"
    frame.drop(columns=["options"]).assign(options=frame["options"].map(str)).to_csv(csv_path, index=False)
    figure, (axis, errors) = plt.subplots(1, 2, figsize=(13, 5.5))
    for method, group in frame.groupby("method"):
        axis.scatter(group["trace_gib"], group["estimate_gib"], label=method, s=24)
        errors.scatter(group["trace_gib"], group["error_pct"], label=method, s=24)
    low = min(frame["trace_gib"].min(), frame["estimate_gib"].min()) * 0.8
    high = max(frame["trace_gib"].max(), frame["estimate_gib"].max()) * 1.25
    line = [low, high]
    axis.plot(line, line, color="black", linewidth=0.8, label="estimate = trace")
    axis.fill_between(line, [v * 0.95 for v in line], [v * 1.05 for v in line], color="grey", alpha=0.2,
                      label="+-5%")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("traced peak allocated (GiB, real HF step on fake tensors)")
    axis.set_ylabel("estimated peak allocated (GiB)")
    axis.set_title("vramplan estimate vs trace")
    axis.legend()
    for limit, style in ((2, ":"), (5, "--")):
        for sign in (1, -1):
            errors.axhline(sign * limit, color="grey", linestyle=style, linewidth=0.8)
    errors.axhline(0, color="black", linewidth=0.8)
    errors.set_xscale("log")
    errors.set_ylim(-6, 6)
    errors.set_xlabel("traced peak allocated (GiB)")
    errors.set_ylabel("error (%) = (estimate - trace) / trace")
    errors.set_title("relative error per case (targets: median 2%, max 5%)")
    png_path = out / "matrix.png"
    figure.savefig(png_path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return [csv_path, png_path]


def write_measured_outputs(frame, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    frame.to_csv(path, index=False)
    return [path]
