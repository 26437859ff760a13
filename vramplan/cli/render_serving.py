"""Printing of `vramplan serve-size`: one GPU's plan (a boxed table of the per-GPU terms, then the capacity), and the
serving plan across the catalog (a rich table of the systems that serve the target)."""

from __future__ import annotations

import sys

from vramplan.units import gib


def _g(nbytes: int) -> str:
    return f"{gib(nbytes):.2f}"


def emit_serve_plan(plan) -> None:
    """The plan as a table of GiB (plain text, no rich import) and its verdict lines."""
    from vramplan.cli.boxes import box_table

    budget, activation, capacity = plan.budget, plan.activation, plan.capacity
    terms = [
        [f"weights ({plan.weights_format.value})", _g(budget.weights_bytes)],
        [f"activation peak of the profiling run ({activation.tokens:,} tokens, at the {activation.at})",
         _g(budget.activation_bytes)],
        ["non-torch memory counted", _g(budget.non_torch_bytes)],
        ["CUDA-graph estimate", _g(budget.cudagraph_bytes)],
        ["KV cache", _g(budget.kv_bytes)],
    ]
    totals = [[f"GPU total ({plan.gpu.basis})", _g(budget.total_bytes)],
              [f"requested: gpu_memory_utilization {plan.gpu_memory_utilization}", _g(budget.requested_bytes)]]
    title = (f"{plan.model.name} on {plan.gpu.name}" + (f" x{plan.tensor_parallel} (TP)" if plan.tensor_parallel > 1
                                                         else "") + f": {plan.engine}")
    lines = [box_table(title, ["per GPU", "GiB"], [totals, terms], right={1}).rstrip("\n")]
    kv = plan.kv
    lines.append(f"KV per token: {kv.bytes_per_token:,} bytes ({kv.attention}, {kv.dtype_bytes}-byte "
                 f"{plan.kv_dtype}); block = {kv.block_size} tokens = {kv.bytes_per_block:,} bytes")
    lines.append(f"KV capacity: {capacity.blocks:,} blocks, GPU KV cache size {capacity.reported_tokens:,} tokens; "
                 f"max concurrency at {plan.max_model_len:,} tokens: {capacity.max_concurrency:.2f}x")
    lines.append(f"sequences of {plan.max_model_len:,} tokens at once: {capacity.sequences:,} "
                 f"(max_num_seqs {plan.max_num_seqs:,}, max_num_batched_tokens {plan.max_num_batched_tokens:,})")
    if plan.concurrency_wanted is not None:
        lines.append(f"wanted: {plan.concurrency_wanted:,} sequences")
    lines.append("fits" if plan.fits else "DOES NOT FIT")
    for problem in plan.problems:
        lines.append(f"  - {problem.message}")
        lines.append(f"    fix: {problem.fix}")
    lines.append("notes:")
    lines.append(f"  - weights: {plan.weights.note}")
    lines.extend(f"  - {note}" for note in plan.notes)
    lines.append("1 GiB = 2^30 bytes")
    sys.stdout.write("\n".join(lines) + "\n")


# The serving plan's table stays readable at 100 columns; narrower, its lowest-priority columns are left out.
FLEET_WIDTH = 100


def _usd(amount: float | None, decimals: int) -> str:
    return "-" if amount is None else f"${amount:,.{decimals}f}"


def _fleet_rows(fleet) -> list[list[str]]:
    rows = []
    for row in fleet.rows:
        rent = _usd(row.rent_usd_per_hour, 2) + (" *" if row.cheapest_rent else "")
        buy = _usd(row.buy_usd, 0) + (" ~" if row.buy_estimated else "") + (" *" if row.cheapest_buy else "")
        rows.append([row.system + (" (ROCm)" if row.rocm else ""), f"{row.gpu_count} x {row.gpu}",
                     f"{row.tensor_parallel} x {row.replicas}", f"{row.kv_tokens_per_replica:,}",
                     f"{row.sequences_per_replica:,}", f"{row.total_sequences:,}", rent, buy])
    return rows


def _pick_line(way: str, row) -> str:
    price = (f"{_usd(row.rent_usd_per_hour, 2)}/h" if way == "rent" else
             _usd(row.buy_usd, 0) + (" (estimated from parts)" if row.buy_estimated else ""))
    return (f"cheapest to {way}: {row.system}, {price}, TP {row.tensor_parallel} x {row.replicas} "
            f"replica{'s' if row.replicas > 1 else ''}, {row.total_sequences:,} sequences at once")


def emit_fleet_plan(fleet) -> None:
    """The serving plan as a rich table (cells never cut), the cheapest picks, what does not fit, and the notes."""
    from vramplan.cli.render import make_console
    from vramplan.cli.tables import Column, whole_cell_table

    console = make_console(FLEET_WIDTH)
    say = lambda text, **style: console.print(text, highlight=False, **style)  # noqa: E731
    want = (f"{fleet.concurrency_wanted:,} sequence{'s' if fleet.concurrency_wanted > 1 else ''} of "
            f"{fleet.max_model_len:,} tokens per replica")
    say(f"{fleet.model.name} ({fleet.weights_format.value}, KV {fleet.kv_dtype}), {want}")
    say(fleet.engine)
    if fleet.rows:
        columns = [Column("system", 100), Column("GPUs", 10), Column("TP x rep", 90), Column("KV tok/rep", 60),
                   Column("seqs/rep", 40), Column("seqs", 80), Column("rent/h", 70), Column("buy", 65)]
        console.print(whole_cell_table(console, columns, _fleet_rows(fleet),
                                       title=f"{len(fleet.rows)} systems serve it, cheapest rent first"))
        say(f"TP x rep: tensor-parallel GPUs per replica x replicas; KV tok/rep: vLLM's GPU KV cache size per "
            f"replica; seqs: sequences of {fleet.max_model_len:,} tokens at once (max_num_seqs caps them) per "
            "replica and in all; * cheapest to rent (per instance-hour) / to buy; ~ estimated from parts",
            style="dim")
        for way, flag in (("rent", "cheapest_rent"), ("buy", "cheapest_buy")):
            pick = next((row for row in fleet.rows if getattr(row, flag)), None)
            say(_pick_line(way, pick) if pick else f"cheapest to {way}: none priced in the catalog")
    else:
        say("DOES NOT FIT on any catalog system")
    for miss in fleet.misses:
        at = f" at TP {miss.tensor_parallel}" if miss.tensor_parallel else ""
        say(f"  does not fit: {miss.system}{at}: {miss.reason}")
    if fleet.skipped_rocm:
        say(f"  left out (ROCm): {', '.join(fleet.skipped_rocm)}")
    say("notes:")
    for note in fleet.notes:
        say(f"  - {note}")
