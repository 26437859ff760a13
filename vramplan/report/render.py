"""Write a Report as a self-contained HTML page (charts embedded) and its Markdown twin (charts beside it)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vramplan.report.build import GB, Report
from vramplan.units import gib

COMPONENT_ORDER = ("weights", "lora_adapters", "gradients", "optimizer_states", "optimizer_temporaries",
                   "activations", "logits_loss", "autocast_weight_copies")
CHART_NAMES = ("memory.png", "cost_time.png")


def _memory_chart(report: Report) -> bytes:
    """Stacked bars: each job's peak phase split into components, in GiB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 1.2 + 0.7 * len(report.jobs)))
    names = [job.name for job in report.jobs]
    left = [0.0] * len(names)
    for component in COMPONENT_ORDER:
        values = [gib(job.estimate.components.get(component, 0)) for job in report.jobs]
        if any(values):
            axis.barh(names, values, left=left, label=component.replace("_", " "))
            left = [a + b for a, b in zip(left, values)]
    runtime = [gib(job.estimate.device_bytes - job.estimate.peak_allocated_bytes) for job in report.jobs]
    axis.barh(names, runtime, left=left, label="allocator + CUDA context", color="lightgrey")
    axis.set_xlabel("GiB per GPU at the peak (device)")
    axis.invert_yaxis()
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("Where each job's memory goes")
    return _png(figure)


def _cost_time_chart(report: Report) -> bytes:
    """Every option that runs all jobs: total hours against total cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    shown = [c for c in report.candidates if c.cost_usd is not None and c.hours is not None]
    if not shown:
        axis.text(0.5, 0.5, "no priced option runs every job", ha="center", va="center")
        axis.set_axis_off()
        return _png(figure)
    for kind, marker in (("gpu", "o"), ("system", "s")):
        points = [c for c in shown if c.kind == kind]
        axis.scatter([c.hours for c in points], [c.cost_usd for c in points], marker=marker,
                     label="GPU (bought)" if kind == "gpu" else "system (bought or rented)")
    labelled: set[tuple[float, float]] = set()
    for candidate in shown[:10]:  # the cheapest; one label per point where options coincide
        point = (round(candidate.hours, 1), round(candidate.cost_usd, 0))
        if point not in labelled:
            labelled.add(point)
            axis.annotate(candidate.id, (candidate.hours, candidate.cost_usd), fontsize=7, xytext=(4, 2),
                          textcoords="offset points")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("total hours for all jobs")
    axis.set_ylabel("total cost (USD)")
    axis.set_title("Options that run every job: time against cost")
    axis.legend(fontsize=8)
    return _png(figure)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def _hours(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} h"


def _sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, paragraphs, table rows with the header first) for both renderings."""
    a = report.assumptions
    recommended = report.recommended
    if recommended is None:
        advice = ["No single catalog option runs every job with the requested headroom and a price; see "
                  "the per-job sections."]
    else:
        nodes = f" ({recommended.most_nodes} of them for the largest job)" if recommended.most_nodes > 1 else ""
        where = f"one {recommended.gpu}" if recommended.kind == "gpu" else f"its {recommended.gpu} GPUs"
        advice = [f"Buy or rent: {recommended.name} ({recommended.id}){nodes}. It runs every job on {where} "
                  f"with at least {gib(recommended.smallest_headroom_bytes):.1f} GiB per GPU "
                  f"to spare, in {_hours(recommended.hours)} for {_money(recommended.cost_usd)} in all.",
                  "Layout per job: " + "; ".join(recommended.layouts) + ".",
                  f"Cost basis of one job: {recommended.cost_basis}."]
    sections = [("Recommendation", advice, [])]
    rows = [["option", "kind", "GPU", "layout per job", "host RAM per node", "comm share", "total hours",
             "total cost", "smallest headroom"]]
    for candidate in report.candidates[:20]:
        gpu = candidate.gpu + (" (ROCm: listed, not recommended)" if candidate.rocm else "")
        share = candidate.largest_communication_share
        rows.append([candidate.id, candidate.kind, gpu, "; ".join(candidate.layouts),
                     f"{gib(candidate.host_bytes_per_node):,.0f} GiB" if candidate.host_bytes_per_node else "-",
                     "-" if share is None else f"up to {share:.0%}", _hours(candidate.hours),
                     _money(candidate.cost_usd), f"{gib(candidate.smallest_headroom_bytes):.1f} GiB"])
    sections.append(("Options that run every job", [f"{len(report.candidates)} options; the 20 cheapest:"], rows))
    job_rows = [["job", "model", "method", "batch x seq", "peak phase", "per-GPU need", "tokens", "options"]]
    for job in report.jobs:
        setup = job.estimate.setup
        job_rows.append([job.name, job.estimate.model.name, setup.method.value,
                         f"{setup.batch_size} x {setup.seq_len}", job.estimate.peak_phase,
                         f"{gib(job.estimate.device_bytes):.2f} GiB", f"{job.plan.training_tokens:,}",
                         str(len(job.plan.options))])
    sections.append(("Jobs", ["Per-GPU need is what nvidia-smi would show: the estimate's peak plus allocator "
                              "reserve and CUDA context."], job_rows))
    rule_rows = [["model", "method", "rule of thumb", "vramplan (b1 x 2048)", "smallest single GPU"]]
    for rule in report.rules:
        rule_rows.append([rule.model, rule.method, rule.rule, f"{rule.vramplan_bytes / GB:.1f} GB",
                          rule.smallest_gpu or "none: needs several GPUs"])
    sections.append(("Rules of thumb beside vramplan",
                     ["The seed guide's table next to vramplan's estimate for the same model and method at batch 1, "
                      "sequence 2048 (GB = 10^9 bytes, as the guide writes). Where the guide's hardware holds more "
                      "than the estimate, the rule leaves headroom; where it holds less, the run would not fit."],
                     rule_rows))
    sections.append(("Assumptions", [
        f"Speed: {a.utilisation:.0%} of each GPU's dense BF16 tensor rate on the step's matmul FLOPs.",
        f"Purchases are spread over {a.amortisation_years:g} years of use, plus energy at TDP x hours at "
        f"{a.energy_usd_per_kwh} USD/kWh. Cloud instances are priced at the catalog's hourly price, whose date is "
        "in the catalog (vramplan catalog show ID). Host, chassis and power costs are left out of bare GPUs.",
        f"Memory headroom kept free on every GPU: {a.headroom:.0%}.",
        "A multi-GPU system runs each job on all its GPUs with the fastest strategy that fits (DDP, ZeRO 1-3, FSDP2, "
        "device_map), else with host-RAM offload checked against the system's RAM, else on several nodes of it "
        f"(up to {a.max_nodes}, where the catalog gives its network bandwidth); cloud prices and purchases scale "
        "with the nodes used.",
        "Communication: ring collectives over NVLink, PCIe x16 or the network, not overlapped with compute, so "
        "times are upper bounds; the CPU optimizer step under offload is not timed.",
        f"Made with vramplan on {report.made_on.isoformat()}."], []))
    return sections


def _html_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" for _ in rows[0]) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; } th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def write_report(report: Report, out: Path) -> list[Path]:
    """report.html (self-contained) and report.md with its PNG charts, under `out`."""
    charts = dict(zip(CHART_NAMES, (_memory_chart(report), _cost_time_chart(report))))
    out.mkdir(parents=True, exist_ok=True)
    for name, data in charts.items():
        (out / name).write_bytes(data)
    sections = _sections(report)
    title = html.escape(report.title)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
             f"<style>{STYLE}</style></head><body><h1>{title}</h1>"]
    md = [f"# {report.title}", ""]
    for heading, paragraphs, rows in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in paragraphs]
        parts.append(_html_table(rows))
        md += [f"## {heading}", "", *[f"{text}\n" for text in paragraphs], _md_table(rows), ""]
        if heading == "Jobs":
            for name, alt in (("memory.png", "Memory breakdown per job"), ("cost_time.png", "Time against cost")):
                encoded = base64.b64encode(charts[name]).decode("ascii")
                parts.append(f"<p><img src=\"data:image/png;base64,{encoded}\" alt=\"{alt}\"></p>")
                md += [f"![{alt}]({name})", ""]
    parts.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("".join(parts), encoding="utf-8")
    md_path.write_text("\n".join(md), encoding="utf-8")
    return [html_path, md_path, *(out / name for name in CHART_NAMES)]
