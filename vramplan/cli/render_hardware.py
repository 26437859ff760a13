"""Tables for the hardware commands (catalog, plan, fit). GiB = 2^30 bytes, GB = 10^9 bytes, labelled."""

from __future__ import annotations

from vramplan.cli.imported import UNMODELLED_PREFIX
from vramplan.cli.render import make_console
from vramplan.cli.tables import Column, whole_cell_table
from vramplan.units import gib

# Piped tables stay readable at 120 columns (rich would fall back to 80).
PIPED_WIDTH = 120


def _console():
    return make_console(PIPED_WIDTH)


def _price_text(prices) -> str:
    from vramplan.hardware.catalog import newest_price

    price = newest_price(prices)
    if price is None:
        return "-"
    symbol = "$" if price.currency == "USD" else f"{price.currency} "
    when = price.date.split(" ")[0]
    if price.kind == "cloud-hourly":
        return f"{symbol}{price.amount:,.2f}/h {when}"
    return f"{symbol}{price.amount:,.0f} {price.kind} {when}"


def _number(value, unit: str = "") -> str:
    return "?" if value is None else f"{value:,.0f}{unit}"


def emit_gpus(gpus) -> None:
    columns = [Column("id", 100), Column("memory GiB", 90, "right"), Column("GB/s", 60, "right"),
               Column("BF16 TFLOPS", 70, "right"), Column("FP8", 40, "right"), Column("TDP W", 30, "right"),
               Column("segment", 20), Column("price", 50)]
    rows = [[gpu.id + (" (ROCm)" if gpu.software == "rocm" else ""), f"{gib(gpu.memory_bytes):.1f}",
             _number(gpu.bandwidth_gb_s), _number(gpu.bf16_dense_tflops), _number(gpu.fp8_dense_tflops),
             _number(gpu.tdp_w), gpu.segment, _price_text(gpu.prices)]
            for gpu in sorted(gpus, key=lambda g: (-g.memory_bytes, g.id))]
    table = whole_cell_table(_console(), columns, rows, title=f"{len(gpus)} GPUs")
    console = _console()
    console.print(table)
    console.print("memory as the driver reports it where known (see `vramplan catalog show ID`); ? = not verified",
                  style="dim")


def emit_systems(systems, gpus) -> None:
    columns = [Column("id", 100), Column("kind", 40), Column("GPUs", 90), Column("GPU memory GiB", 70),
               Column("host RAM GiB", 50), Column("network Gb/s", 30), Column("price", 60)]
    rows = []
    for system in sorted(systems, key=lambda s: (s.kind, s.id)):
        ram = "?" if system.host_ram_bytes is None else f"{gib(system.host_ram_bytes):,.0f}"
        rows.append([system.id, system.kind, f"{system.gpu_count} x {system.gpu}",
                     f"{gib(gpus[system.gpu].memory_bytes):.1f} each", ram, _number(system.network_gbps),
                     _price_text(system.prices)])
    table = whole_cell_table(_console(), columns, rows, title=f"{len(systems)} systems")
    _console().print(table)


def emit_record(record, origin: str) -> None:
    console = _console()
    for name, value in record.model_dump(mode="json").items():
        if name == "prices":
            for price in value:
                console.print(f"price: {price['amount']:,} {price['currency']} {price['kind']} ({price['date']}) "
                              f"- {price['source']} {price['note']}".rstrip(), highlight=False, soft_wrap=True)
            continue
        if name in ("memory_bytes", "host_ram_bytes") and value is not None:
            value = f"{value:,} B = {gib(value):.2f} GiB"
        console.print(f"{name}: {value}", highlight=False, soft_wrap=True)
    console.print(f"file: {origin}", style="dim")


def _layout_text(option) -> str:
    rocm = " (ROCm)" if any(note.startswith("ROCm") for note in option.notes) else ""
    return f"{option.nodes} x {option.gpus_used} {option.gpu}{rocm}"


def _strategy_text(option) -> str:
    return option.strategy + (f" +{option.offload}" if option.offload != "none" else "")


# (PlanOption flag, mark in the table, what it means)
PLAN_MARKS = (("cheapest", "$", "cheapest for this job"), ("cheapest_buy", "B", "cheapest to buy"),
              ("cheapest_rent", "R", "cheapest to rent"), ("fastest", ">", "fastest"))


def _hours_text(option) -> str:
    if option.hours is None:
        return "?"
    digits = 2 if option.hours < 1 else 1
    if option.hours_low is None:
        return f"{option.hours:,.{digits}f}"
    return f"{option.hours_low:,.{digits}f}-{option.hours_high:,.{digits}f}"


def _mark_money(flag: str, option) -> str:
    if flag == "cheapest_buy" and option.purchase is not None:
        text = f"buy for {option.purchase.upfront_usd:,.0f} USD upfront ({option.purchase.basis})"
        if option.purchase.host_requirements:
            text += f"; needs a {option.purchase.host_requirements}"
        return text
    return option.cost_basis


def _share(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def emit_plan(plan, suggestions, top: int) -> None:
    from rich import box

    console = _console()
    estimate = plan.estimate
    console.print(f"{estimate.model.name}, {estimate.setup.method.value}: needs {gib(estimate.device_bytes):.2f} GiB "
                  f"on one GPU (device), {plan.training_tokens:,} training tokens, "
                  f"{plan.flops_per_token / 1e9:.1f} GFLOPs per token", highlight=False)
    if plan.options:
        numeric = ("free GiB", "host GiB", "comm", "tok/s", "hours", "buy USD", "rent USD", "job USD")
        priorities = {"": 95, "option": 100, "nodes x GPUs": 75, "strategy": 60, "free GiB": 50, "host GiB": 20,
                      "comm": 30, "tok/s": 45, "hours": 85, "buy USD": 88, "rent USD": 87, "job USD": 80}
        columns = [Column(name, priority, "right" if name in numeric else "left")
                   for name, priority in priorities.items()]
        rows = []
        for option in plan.options[:top]:
            marks = "".join(symbol for flag, symbol, _ in PLAN_MARKS if getattr(option, flag))
            host = f"{gib(option.host_bytes_needed):,.0f}" if option.host_bytes_needed else "-"
            comm = _share(option.communication_share) if option.gpus_used * option.nodes > 1 else "-"
            buy = "-" if option.purchase is None else \
                ("~" if option.purchase.estimated else "") + f"{option.purchase.upfront_usd:,.0f}"
            rent = "-" if option.rent_usd is None else f"{option.rent_usd:,.2f}"
            rows.append([
                marks, option.id, _layout_text(option), _strategy_text(option), f"{gib(option.headroom_bytes):.1f}",
                host, comm, _number(option.tokens_per_second), _hours_text(option), buy, rent,
                "?" if option.cost_usd is None else f"{option.cost_usd:,.2f}"])
        table = whole_cell_table(
            console, columns, rows, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
            title=f"{len(plan.options)} options that fit, by job cost (top {min(top, len(plan.options))})")
        console.print(table)
        console.print("buy USD: upfront price of the machine (nodes included; ~ estimated from its parts); rent USD: "
                      "total rent for the job's hours; job USD: the rent, or for a bought machine its amortised share "
                      "of the purchase plus energy (not what you pay)", style="dim", highlight=False, soft_wrap=True)
        for flag, symbol, words in PLAN_MARKS:
            chosen = next((option for option in plan.options if getattr(option, flag)), None)
            if chosen is not None:
                console.print(f"{symbol} {words}: {chosen.id}: {chosen.choice}; {_mark_money(flag, chosen)}",
                              highlight=False, soft_wrap=True)
        if not plan.assumptions.allow_rocm and any(option.rocm for option in plan.options):
            console.print("ROCm parts are listed, never marked (the estimate models the CUDA stack); --allow-rocm "
                          "lets them lead", style="dim", highlight=False, soft_wrap=True)
    else:
        most = plan.assumptions.max_nodes
        console.print("nothing in the catalog fits this job" + (f" (up to {most} nodes of a system)" if most > 1
                                                                 else " on one node"), style="bold")
    if plan.rejected:
        largest = plan.rejected[0]
        console.print(f"{len(plan.rejected)} options too small (largest rejected: {largest.gpu}, "
                      f"{gib(largest.gpu_memory_bytes):.1f} GiB; --format json lists every layout tried and why)",
                      highlight=False)
    _emit_suggestions(console, suggestions)
    from vramplan.hardware.plan import speed_assumption

    a = plan.assumptions
    console.print(f"assumptions: a system runs the job on all its GPUs with the fastest strategy that fits, else "
                  "trading time for memory (checkpointing, micro-batch 1 with accumulation, 8-bit AdamW), else with "
                  f"host-RAM offload, else on up to {a.max_nodes} nodes; {speed_assumption(a)}; communication not "
                  "overlapped with compute; CPU optimizer steps under offload not timed; "
                  f"{a.headroom:.0%} memory headroom; purchases: the machine's catalog price, else estimated from "
                  f"its cards' price (MSRP as launched) + a {a.host_usd:,.0f} USD desktop (one card) or "
                  f"{a.workstation_host_usd:,.0f} USD workstation host (~); energy at {a.energy_usd_per_kwh} USD/kWh; "
                  f"amortised over the hours busy in {a.amortisation_years:g} years ({a.busy_share:.0%} busy); "
                  "cloud at the catalog's hourly price x nodes",
                  highlight=False, soft_wrap=True, style="dim")





def _emit_suggestions(console, suggestions) -> None:
    """Each suggestion with the command that applies it (pasted, it gives the figure shown)."""
    if not suggestions:
        return
    console.print("what would make it fit, by memory saved (each line's command applies it):")
    for item, command in suggestions:
        verdict = "fits" if item.fits else "still too big"
        console.print(f"  - {item.change}: {gib(item.needed_bytes):.2f} GiB per GPU, saves "
                      f"{gib(item.saved_bytes):.2f} GiB ({verdict})", highlight=False, soft_wrap=True)
        console.print(f"      {command}", highlight=False, soft_wrap=True, markup=False)


def _layout_of(setup) -> str:
    if setup.world_size == 1 and setup.offload.value == "none":
        return ""
    nodes = f" x {setup.nodes} nodes" if setup.nodes > 1 else ""
    offload = f", offload {setup.offload.value}" if setup.offload.value != "none" else ""
    return f"; per GPU under {setup.strategy.value} on {setup.gpus} GPUs{nodes}{offload}"


def emit_fit(result, gpu, suggestions) -> None:
    console = _console()
    what = result.solve.replace("-", " ")
    if result.value is None:
        console.print(f"{gpu.name}: nothing fits, not even {what} 1 "
                      f"(usable {gib(result.usable_bytes):.2f} GiB)", highlight=False)
    else:
        estimate = result.estimate
        capped = " (the search limit)" if result.value == result.limit else ""
        exact = (f" (exact limit {result.exact_value:,}; rounded down to a value people use)"
                 if result.exact_value not in (None, result.value) else "")
        console.print(f"{gpu.name}: largest {what} that fits: {result.value:,}{capped}{exact}", highlight=False)
        console.print(f"  needs {gib(estimate.device_bytes):.2f} GiB of {gib(result.usable_bytes):.2f} GiB usable "
                      f"({gib(gpu.memory_bytes):.2f} GiB total); batch {estimate.setup.batch_size} x sequence "
                      f"{estimate.setup.seq_len}" + (f", rank {estimate.setup.lora.rank}" if estimate.setup.lora
                                                     else "") + _layout_of(estimate.setup), highlight=False)
    console.print(f"  bisection over a monotone estimate: {result.estimates_run} estimate(s) run", style="dim")
    _emit_suggestions(console, suggestions)


def emit_verdict(verdict, commands: list[str]) -> None:
    from rich.table import Table

    console = _console()
    estimate = verdict.estimate
    where = "this machine" if verdict.source == "local" else "a catalog GPU"
    needed = max((gpu.needed_bytes for gpu in verdict.gpus), default=estimate.device_bytes)
    console.print(f"{estimate.model.name}, {estimate.setup.method.value}: needs {gib(needed):.2f} GiB "
                  f"per GPU; checking {where}" + (f" (driver {verdict.driver_version}, CUDA {verdict.cuda_version})"
                                                  if verdict.driver_version else ""), highlight=False)
    table = Table()
    for column in ("GPU", "name", "total GiB", "free GiB", "others GiB", "margin GiB", "verdict"):
        table.add_column(column)
    for gpu in verdict.gpus:
        table.add_row("-" if gpu.index is None else str(gpu.index), gpu.name, f"{gib(gpu.total_bytes):.2f}",
                      f"{gib(gpu.free_bytes):.2f}", f"{gib(gpu.other_processes_bytes):.2f}",
                      f"{gib(gpu.margin_bytes):+.2f}", "fits" if gpu.fits else "DOES NOT FIT")
    console.print(table)
    console.print(("FITS" if verdict.fits else "DOES NOT FIT") + f" (headroom kept free: {verdict.headroom:.0%})",
                  style="bold")
    for note in verdict.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True, style="dim")
    for line in (a for a in estimate.assumptions if a.startswith(UNMODELLED_PREFIX)):
        console.print(line, highlight=False, soft_wrap=True, style="bold", markup=False)
    _emit_suggestions(console, list(zip(verdict.suggestions, commands)))
