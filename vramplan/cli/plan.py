"""`vramplan plan`: every catalog GPU and system that runs the job, with time and cost."""

from __future__ import annotations

from vramplan.cli import options as o
from vramplan.cli.run_options import RunInput, with_run_options
from vramplan.cli.render import check_format, emit_answer


@with_run_options(layout=False, verdict=True)
def plan_command(
    *,
    run: RunInput,
    tokens: o.Tokens = "100M",
    epochs: o.Epochs = 1.0,
    mfu: o.Utilisation = None,
    amortise_years: o.Years = 3.0,
    kwh_price: o.Kwh = 0.15,
    busy_share: o.BusyShare = 0.5,
    max_nodes: o.MaxNodes = 64,
    allow_rocm: o.AllowRocm = False,
    emit: o.Emit = None,
    emit_to: o.EmitTo = None,
    top: o.Top = 15,
    fmt: o.Format = "table",
) -> None:
    """Every catalog GPU and system that runs the job (all its GPUs, the fastest strategy that fits, several
    nodes when one is not enough), with headroom, speed, time, the upfront price to buy it and the rent; by job cost.
    Exit 3 when none does."""
    import typer

    from vramplan.answers import plan_document, plan_result, training_tokens
    from vramplan.cli.imported import merge_config_file
    from vramplan.cli.paste import paste_command
    from vramplan.cli.render_hardware import emit_plan
    from vramplan.hardware.catalog import load_hardware
    from vramplan.hardware.plan import CostAssumptions

    check_format(fmt)
    assumptions = CostAssumptions(utilisation=mfu, amortisation_years=amortise_years, energy_usd_per_kwh=kwh_price,
                                  headroom=run.headroom, max_nodes=max_nodes, allow_rocm=allow_rocm,
                                  busy_share=busy_share)
    hardware = load_hardware(run.catalog)
    result, plan, suggestions = plan_result(merge_config_file(run), hardware, training_tokens(tokens, epochs),
                                            assumptions)
    if _emit_cheapest(plan, result, emit, emit_to):
        return  # the config of the cheapest option went to stdout, in place of the plan
    if fmt == "json":
        emit_answer(plan_document(plan, suggestions, paste_command))
    else:
        emit_plan(plan, [(s, paste_command("plan", s.flags)) for s in suggestions], top)
    if not plan.options:
        raise typer.Exit(3)


def _emit_cheapest(plan, result, emit: str | None, emit_to: str | None) -> bool:
    """--emit: the launcher config of the cheapest option; True when it went to stdout in place of the plan."""
    from vramplan.errors import UsageError

    if emit is None or not plan.options:
        if emit_to is not None and emit is None:
            raise UsageError("--emit-to needs --emit deepspeed|fsdp|accelerate")
        return False
    from vramplan.cli.emit import emit_configs
    from vramplan.hardware.plan import chosen_setup

    import sys

    cheapest = next((option for option in plan.options if option.cheapest), plan.options[0])
    try:
        used_stdout = emit_configs(emit, chosen_setup(plan, cheapest), result.model.spec, emit_to)
    except UsageError as err:
        raise UsageError(f"the cheapest option, {cheapest.id}, runs {cheapest.strategy}: {err}") from None
    for line in _traded_settings(cheapest, result.setup):
        sys.stderr.write(line + "\n")
    return used_stdout


def _traded_settings(option, setup) -> list[str]:
    """What the plan changed to fit, for the trainer settings the configs do not carry."""
    lines = []
    if "batch_size" in option.settings:
        lines.append(f"note: {option.id} fits with micro-batch 1: set per_device_train_batch_size 1 and "
                     f"gradient_accumulation_steps {setup.batch_size} (x your current steps) to keep the batch")
    if "optimizer" in option.settings:
        lines.append(f"note: {option.id} fits with the 8-bit AdamW: set optim adamw_bnb_8bit (bitsandbytes)")
    if option.settings.get("gradient_checkpointing"):
        lines.append(f"note: {option.id} fits with gradient checkpointing: turn it on (gradient_checkpointing=True; "
                     "under FSDP2 the emitted fsdp_activation_checkpointing)")
    return lines
