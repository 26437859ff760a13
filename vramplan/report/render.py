"""Write a Report as a self-contained HTML page (charts embedded) and its Markdown twin (charts beside it)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vramplan.hardware.plan import hours_text, speed_assumption
from vramplan.hardware.purchase import SERVER_HOST_SHARE_OF_GPU_W, WORKSTATION_HOST_W
from vramplan.report.build import Report
from vramplan.report.rules import GB, RULE_BATCH, RULE_SEQ_LEN
from vramplan.units import gib

COMPONENT_ORDER = ("weights", "lora_adapters", "gradients", "optimizer_states", "optimizer_temporaries",
                   "activations", "logits_loss", "autocast_weight_copies")
CHART_NAMES = ("memory.png", "cost_time.png")


# Rows of the options table (the rest are in the JSON of `vramplan plan`).
OPTION_ROWS = 25
# Common card sizes (GB as marketed) drawn as reference lines on the memory chart.
CARD_SIZES_GB = (24, 48, 80, 96, 141)


def _memory_chart(report: Report) -> bytes:
    """Stacked bars: each job's peak phase split into components, in GiB, against common card sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 1.6 + 0.7 * len(report.jobs)))
    names = [job.name for job in report.jobs]
    left = [0.0] * len(names)
    for component in COMPONENT_ORDER:
        values = [gib(job.estimate.components.get(component, 0)) for job in report.jobs]
        if any(values):
            axis.barh(names, values, left=left, label=component.replace("_", " "))
            left = [a + b for a, b in zip(left, values)]
    runtime = [gib(job.estimate.device_bytes - job.estimate.peak_allocated_bytes) for job in report.jobs]
    axis.barh(names, runtime, left=left, label="allocator + CUDA context", color="lightgrey")
    totals = [a + b for a, b in zip(left, runtime)]
    for row, total in enumerate(totals):
        axis.annotate(f"{total:.1f} GiB", (total, row), xytext=(4, 0), textcoords="offset points", va="center",
                      fontsize=8)
    largest_card = CARD_SIZES_GB[-1] * GB / 2**30
    for size in CARD_SIZES_GB:
        line = size * GB / 2**30
        axis.axvline(line, color="black", linestyle=":", linewidth=0.8)
        axis.annotate(f"{size} GB", (line, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                      va="top", ha="right")
    axis.set_xlim(0, max(max(totals) * 1.15, largest_card * 1.05))
    axis.set_xlabel("GiB per GPU at the peak (device); dotted: common card sizes in GB as marketed")
    axis.invert_yaxis()
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("Where each job's memory goes (one GPU, as each job is given)")
    return _png(figure)


def _cost_time_chart(report: Report) -> bytes:
    """Every option that runs all jobs: total hours against what it costs, buying (upfront) and renting (total)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    bought = [c for c in report.candidates if c.upfront_usd is not None and c.hours is not None]
    rented = [c for c in report.candidates if c.rent_usd is not None and c.hours is not None]
    if not bought and not rented:
        axis.text(0.5, 0.5, "no priced option runs every job", ha="center", va="center")
        axis.set_axis_off()
        return _png(figure)
    axis.scatter([c.hours for c in bought], [c.upfront_usd for c in bought], marker="s", label="buy: upfront USD")
    axis.scatter([c.hours for c in rented], [c.rent_usd for c in rented], marker="o",
                 label="rent: total USD for the jobs")
    axis.set_xscale("log")
    axis.set_yscale("log")
    points = [(c, c.upfront_usd) for c in bought] + [(c, c.rent_usd) for c in rented]
    _label_points(figure, axis, [(c.id + (" (ROCm)" if c.rocm else ""), c.hours, value) for c, value in points])
    axis.set_xlabel("total hours for all jobs (step model; see the range in the table)")
    axis.set_ylabel("USD (log scale)")
    axis.set_title("Options that run every job: time against money")
    axis.legend(fontsize=8)
    return _png(figure)


# Label placement: offsets tried in turn (points) until a label overlaps no label placed before it.
LABEL_OFFSETS = ((4, 2), (4, -9), (4, 11), (4, -20), (4, 22), (-4, 2), (-4, -9), (-4, 11))
LABEL_FONT_SIZE = 7


def _label_points(figure, axis, points: list[tuple[str, float, float]]) -> None:
    """Every point labelled with its name, each label placed where it overlaps none placed before it (the last
    offset is kept when every one collides)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    placed = []
    for name, x, y in sorted(points, key=lambda point: (point[1], -point[2])):
        for dx, dy in LABEL_OFFSETS:
            text = axis.annotate(name, (x, y), fontsize=LABEL_FONT_SIZE, xytext=(dx, dy), textcoords="offset points",
                                 ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == LABEL_OFFSETS[-1]:
                placed.append(box)
                break
            text.remove()


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.0f}" if value >= 1000 or value == 0 else f"${value:,.2f}"


def _hours(value: float | None) -> str:
    return "n/a" if value is None else hours_text(value)


def _range(low: float | None, point: float | None, high: float | None) -> str:
    if point is None:
        return "n/a (speed unknown: no dense BF16 figure)"
    if low is None or high is None:
        return _hours(point)
    if high < 1:
        return f"{low * 60:.0f}-{high * 60:.0f} min"
    return f"{low:,.1f}-{high:,.1f} h"


def _runs(candidate) -> str:
    return "; ".join(f"{run.job}: {_range(run.hours_low, run.hours, run.hours_high)} ({run.layout})"
                     for run in candidate.runs)


def _recommendation(report: Report) -> list[str]:
    a = report.assumptions
    buy, rent, fastest = report.cheapest_buy, report.cheapest_rent, report.fastest
    lines = []
    if buy is None:
        lines.append("Buy: no machine in the catalog that can be bought runs every job; see the budget tiers.")
    else:
        estimated = f" (estimated from its parts: {buy.purchase_basis})" if buy.estimated_price else ""
        nodes = f" x {buy.most_nodes}" if buy.most_nodes > 1 else ""
        energy = "" if buy.yearly_energy_usd is None else (
            f", {buy.watts:,.0f} W at full load, about {_money(buy.yearly_energy_usd)} of energy a year at "
            f"{a.busy_share:.0%} busy")
        lines.append(f"Buy: {buy.name} ({buy.id}){nodes} for {_money(buy.upfront_usd)} upfront{estimated}"
                     f"{energy}. It runs every job: {_runs(buy)}.")
        if buy.host_requirements:
            lines.append(f"Host for the card: a {buy.host_requirements}.")
    if rent is None:
        lines.append("Rent: no cloud instance in the catalog runs every job at a known hourly price.")
    else:
        lines.append(f"Rent: {rent.name} ({rent.id}) for {_money(rent.rent_usd)} in rent for all the jobs together, "
                     f"{_range(rent.hours_low, rent.hours, rent.hours_high)} of renting: {_runs(rent)}.")
    be = report.break_even
    if buy is not None and rent is not None and buy.hours is None:
        lines.append(f"Break-even: not given; the speed of {buy.id} is unknown (no dense BF16 figure).")
    if be is not None and buy is not None and rent is not None:
        if be.runs is None:
            lines.append("Break-even: renting costs less than the bought machine's electricity; buying never pays.")
        else:
            reach = ("" if be.within_reach else
                     f" (more than a month has: over {a.amortisation_years:g} years the purchase does not pay)")
            lines.append(f"Break-even: buying {buy.id} beats renting {rent.id} after {be.runs:,.1f} runs of these "
                         f"jobs, or above {be.gpu_hours_per_month:,.0f} {buy.gpu} GPU-hours a month "
                         f"({be.hours_per_month:,.0f} hours of the whole machine) over a "
                         f"{a.amortisation_years:g}-year life{reach}.")
    if fastest is not None:
        cost = (f"{_money(fastest.rent_usd)} in rent" if fastest.rent_usd is not None else
                f"{_money(fastest.upfront_usd)} upfront" if fastest.upfront_usd is not None else "no price")
        lines.append(f"Fastest: {fastest.name} ({fastest.id}), "
                     f"{_range(fastest.hours_low, fastest.hours, fastest.hours_high)} for all the jobs, {cost}.")
    for unfit in report.unfit_jobs:
        lines.append(f"'{unfit.job}' fits nothing in the catalog: it needs {gib(unfit.needed_bytes):,.1f} GiB on one "
                     f"GPU and no layout of any option brings it under the headroom (the largest GPU holds "
                     f"{gib(unfit.largest_gpu_bytes):,.1f} GiB); see `vramplan plan` for what would make it fit.")
    offloaded = [run.job for pick in (buy, rent) if pick is not None for run in pick.runs if "offload" in run.layout]
    if offloaded:
        lines.append("Offloaded runs (" + ", ".join(sorted(set(offloaded))) + ") step their optimizer on the CPU, "
                     "which the times leave out: expect them to take longer than shown.")
    for big in report.big_jobs:
        rent_it = (f"; rent it instead on {big.rent_it} for {_money(big.rent_it_usd)}" if big.rent_it else "")
        lines.append(f"One job decides the purchase: without '{big.job}', {big.without_it} "
                     f"({_money(big.without_it_usd)}) runs the others{rent_it}.")
    return lines


def _option_rows(report: Report) -> list[list[str]]:
    rows = [["option", "buy (upfront)", "rent (total)", "hours, all jobs", "amortised (jobs' share)",
             "power, energy/yr", "layout per job", "smallest headroom"]]
    shown = sorted(report.candidates, key=lambda c: (c.rocm and not report.assumptions.allow_rocm,
                                                      c.upfront_usd is None, c.upfront_usd or 0.0,
                                                      c.rent_usd if c.rent_usd is not None else float("inf"), c.id))
    for c in shown[:OPTION_ROWS]:
        name = c.id + (" (ROCm: listed, not recommended)" if c.rocm and not report.assumptions.allow_rocm else "")
        buy = "-" if c.upfront_usd is None else _money(c.upfront_usd) + (" (parts)" if c.estimated_price else "")
        power = "-" if c.watts is None else f"{c.watts:,.0f} W, {_money(c.yearly_energy_usd)}"
        rows.append([name, buy, _money(c.rent_usd) if c.rent_usd is not None else "-",
                     _range(c.hours_low, c.hours, c.hours_high),
                     _money(c.amortised_usd) if c.amortised_usd is not None else "-", power,
                     "; ".join(c.layouts), f"{gib(c.smallest_headroom_bytes):.1f} GiB"])
    return rows


def _tier_rows(report: Report) -> list[list[str]]:
    rows = [["budget (upfront)", "best buy", "price", "hours for the jobs it runs", "jobs it cannot run"]]
    for tier in report.tiers:
        band = (f"{_money(tier.low_usd)}-{_money(tier.high_usd)}" if tier.high_usd is not None
                else f"{_money(tier.low_usd)} and up")
        if tier.option is None:
            rows.append([band, "nothing in the catalog at this price runs any of the jobs", "-", "-", "all"])
            continue
        rows.append([band, tier.option, _money(tier.upfront_usd), _hours(tier.hours),
                     ", ".join(tier.jobs_left) or "none"])
    return rows


def _rule_rows(report: Report) -> list[list[str]]:
    rows = [["model", "method", "rule of thumb", "vramplan: model state", "vramplan: per GPU",
             "what the rule leaves out", "smallest single GPU"]]
    for rule in report.rules:
        terms = ", ".join(f"{name.replace('_', ' ')} {gib(value):.1f}" for name, value in
                          sorted(rule.terms.items(), key=lambda item: -item[1]) if gib(value) >= 0.05)
        method = rule.method + (" (pure bf16)" if rule.method == "full" and rule.precision == "bf16" else
                                " (fp32 master weights)" if rule.precision == "bf16-mixed" else "")
        rows.append([rule.model, method, f"{rule.rule_bytes / GB:,.0f} GB ({gib(rule.rule_bytes):,.0f} GiB)",
                     f"{gib(rule.state_bytes):,.0f} GiB", f"{gib(rule.vramplan_bytes):,.1f} GiB",
                     terms + " GiB" if terms else "-", rule.smallest_gpu or "none: needs several GPUs"])
    return rows


def _serving_rows(report: Report) -> list[list[str]]:
    rows = [["serve entry", "model, context x sequences", "to", "system", "price", "TP x replicas",
             "sequences at once"]]
    for pick in report.serving:
        asked = f"{pick.model} ({pick.weights.value}, KV {pick.kv_dtype}), {pick.context:,} x {pick.concurrency:,}"
        for way, row in (("rent", pick.rent), ("buy", pick.buy)):
            if row is None:
                rows.append([pick.name, asked, way, f"nothing in the catalog to {way} serves it", "-", "-", "-"])
                continue
            price = (f"{_money(row.rent_usd_per_hour)}/h" if way == "rent" else
                     _money(row.buy_usd) + (" (parts)" if row.buy_estimated else ""))
            rows.append([pick.name, asked, way, row.system + (" (ROCm)" if row.rocm else ""), price,
                         f"{row.tensor_parallel} x {row.replicas}",
                         f"{row.total_sequences:,} ({row.sequences_per_replica:,} per replica)"])
    return rows


def _serving_section(report: Report) -> tuple[str, list[str], list[list[str]]]:
    engines = sorted({pick.engine for pick in report.serving})
    return ("Serving", [
        "For each [[serve]] entry: the cheapest catalog system to rent (per instance-hour) and to buy that serves it. "
        "A replica is one vLLM server over TP GPUs (the smallest of 1, 2, 4, 8 that holds the entry's sequences of "
        "its context); a system runs as many replicas as its GPUs allow, and sequences at once add up over them.",
        f"Memory rule: {'; '.join(engines)} (`vramplan serve-size`; without --gpu it lists every system). "
        + ("ROCm systems are sized by the same rule." if report.assumptions.allow_rocm else
           "ROCm systems are left out: the rule modelled is vLLM's CUDA one.")], _serving_rows(report))


def _sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, paragraphs, table rows with the header first) for both renderings."""
    a = report.assumptions
    sections = [("Recommendation", _recommendation(report), [])]
    sections.append(("Best buy per budget", [
        "The machine in each price band that runs the most of the jobs, then the fastest; a job it cannot run is "
        "named (rent it, or buy the next tier)."], _tier_rows(report)))
    sections.append(("Options that run every job", [
        f"{len(report.candidates)} options; the first {min(OPTION_ROWS, len(report.candidates))} shown, purchases by "
        "upfront price, then rentals by total rent. Buy is the upfront price (every node a job needs; \"(parts)\": "
        "estimated from the cards' price and a host); rent is the total for all the jobs' hours; amortised is the "
        "purchase's share for those hours (over the hours it is busy in its life) plus energy: what the jobs cost "
        "of a machine you own, not what you pay. Hours are a range: the step model's error against published runs."],
        _option_rows(report)))
    if report.serving:
        sections.append(_serving_section(report))
    job_rows = [["job", "model", "method", "batch x seq", "peak phase", "per-GPU need", "tokens", "options"]]
    for job in report.jobs:
        setup = job.estimate.setup
        job_rows.append([job.name, job.estimate.model.name, setup.method.value,
                         f"{setup.batch_size} x {setup.seq_len}", job.estimate.peak_phase,
                         f"{gib(job.estimate.device_bytes):.2f} GiB", f"{job.plan.training_tokens:,}",
                         str(len(job.plan.options))])
    sections.append(("Jobs", ["Per-GPU need is what nvidia-smi would show on one GPU: the estimate's peak plus "
                              "allocator reserve and CUDA context (a layout over several GPUs needs less per GPU)."],
                     job_rows))
    sections.append(("The rule of thumb, reproduced and corrected", [
        "Vendors size fine-tuning at 16 / 2 / 0.5 GB per billion parameters for full / LoRA / QLoRA. 16 bytes is "
        "bf16 weights and gradients plus fp32 master weights and AdamW moments; pure bf16 training holds half of "
        "that. The rule leaves out activations, logits and loss, QLoRA's k-bit preparation, allocator reserve and "
        f"the CUDA context. vramplan at batch {RULE_BATCH}, sequence {RULE_SEQ_LEN}, one GPU (GiB = 2^30 bytes, "
        "GB = 10^9)."], _rule_rows(report)))
    sections.append(("Assumptions", [
        f"Speed: {speed_assumption(a)}. Validation: validation/RESULTS.md, \"Training throughput\".",
        "Buying: whole workstations and servers at their catalog price (list, street or MSRP, dated in the catalog); "
        f"a machine without a price, or a bare consumer or workstation card, is estimated from its cards' price (MSRP "
        f"as launched, dated) plus a host: {a.host_usd:,.0f} USD for a one-card desktop (host_usd), "
        f"{a.workstation_host_usd:,.0f} USD for a 2-4 card workstation (workstation_host_usd). SXM/OAM modules and "
        "passive datacenter cards are bought inside servers only; cloud instances are rented only.",
        f"Energy: GPUs' TDP plus the host (workstation {WORKSTATION_HOST_W:.0f} W; server "
        f"{SERVER_HOST_SHARE_OF_GPU_W:.0%} of the GPUs' TDP, after DGX H100's 10.2 kW), at {a.energy_usd_per_kwh} "
        f"USD/kWh, {a.busy_share:.0%} of the year busy. Amortised: over the busy hours of {a.amortisation_years:g} "
        "years.",
        f"Memory headroom kept free on every GPU: {a.headroom:.0%}.",
        "A multi-GPU system runs each job on all its GPUs with the fastest strategy that fits (DDP, ZeRO 1-3, FSDP2, "
        "device_map), else trading time for memory (gradient checkpointing, micro-batch 1 with accumulation, 8-bit "
        "AdamW; named per job), else with host-RAM offload, else on several nodes of it "
        f"(up to {a.max_nodes}, where the catalog gives its network bandwidth).",
        "ROCm parts are listed, never recommended" + (" (allowed here by allow_rocm)." if a.allow_rocm else
                                                        " (set allow_rocm = true to let them lead)."),
        "Offload: the CPU optimizer step under offload is not timed, so offloaded runs take longer than shown.",
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
table { border-collapse: collapse; width: 100%; font-size: 0.85em; margin: 0.6em 0; }
td { overflow-wrap: anywhere; vertical-align: top; }
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
        if heading == "Jobs":  # the charts follow the jobs table
            for name, alt in (("memory.png", "Memory breakdown per job"), ("cost_time.png", "Time against cost")):
                encoded = base64.b64encode(charts[name]).decode("ascii")
                parts.append(f"<p><img src=\"data:image/png;base64,{encoded}\" alt=\"{alt}\"></p>")
                md += [f"![{alt}]({name})", ""]
    parts.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("".join(parts), encoding="utf-8")
    md_path.write_text("\n".join(md), encoding="utf-8")
    return [html_path, md_path, *(out / name for name in CHART_NAMES)]
