"""`vramplan catalog`, `vramplan plan` and `vramplan fit`: the hardware side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vramplan.cli import options as o
from vramplan.api import resolve_run
from vramplan.cli.imported import merge_config_file
from vramplan.cli.render import check_format, emit_json, emit_json_document

catalog_app = typer.Typer(help="The hardware catalog: GPUs and systems.", no_args_is_help=True)

Tokens = Annotated[str, typer.Option("--tokens", help="Training tokens per epoch, e.g. 50M.")]
Epochs = Annotated[float, typer.Option("--epochs", help="Passes over the tokens.", min=0.001)]
Utilisation = Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation of dense BF16.", min=0.01, max=1)]
Years = Annotated[float, typer.Option("--amortise-years", help="Years a purchase is spread over.", min=0.01)]
Kwh = Annotated[float, typer.Option("--kwh-price", help="Energy price in USD per kWh.", min=0)]
Top = Annotated[int, typer.Option("--top", help="Rows of the table.", min=1)]
GpuId = Annotated[str, typer.Option("--gpu", help="Catalog GPU id (see vramplan catalog gpus).")]
SolveOpt = Annotated[str, typer.Option("--solve", help="batch-size | seq-len | lora-rank")]
MaxNodes = Annotated[int, typer.Option("--max-nodes", help="Most nodes of one system a multi-node layout may use.",
                                       min=1)]


@catalog_app.command("gpus")
def catalog_gpus(catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """List the catalog's GPUs."""
    from vramplan.cli.render_hardware import emit_gpus
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    records = list(load_hardware(catalog).gpus.values())
    if fmt == "json":
        emit_json_list(records)
    else:
        emit_gpus(records)


@catalog_app.command("systems")
def catalog_systems(catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """List the catalog's systems (workstations, servers, cloud instances)."""
    from vramplan.cli.render_hardware import emit_systems
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    hardware = load_hardware(catalog)
    if fmt == "json":
        emit_json_list(list(hardware.systems.values()))
    else:
        emit_systems(list(hardware.systems.values()), hardware.gpus)


@catalog_app.command("show")
def catalog_show(record_id: Annotated[str, typer.Argument(help="A GPU or system id.")],
                 catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """Show one GPU or system with every field and its sources."""
    from vramplan.cli.render_hardware import emit_record
    from vramplan.errors import UsageError
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    hardware = load_hardware(catalog)
    record = hardware.gpus.get(record_id) or hardware.systems.get(record_id)
    if record is None:
        raise UsageError(f"{record_id!r} is neither a GPU nor a system of the catalog (vramplan catalog gpus|systems)")
    if fmt == "json":
        emit_json(record)
    else:
        emit_record(record, hardware.origins[record_id])


def emit_json_list(records) -> None:
    emit_json_document([record.model_dump(mode="json") for record in records])


def plan_command(
    model: o.ModelOrFile = None,
    method: o.MethodOrFile = None,
    from_file: o.FromFile = None,
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    precision: o.PrecisionOpt = None,
    optimizer: o.OptimizerOpt = None,
    gradient_checkpointing: o.Checkpointing = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    lora_dropout: o.LoraDropout = None,
    double_quant: o.DoubleQuant = None,
    kbit_prep: o.KbitPrep = None,
    stack: o.StackOpt = None,
    loss: o.LossOpt = None,
    liger: o.LigerOpt = None,
    packing: o.PackingOpt = None,
    attn: o.AttnOpt = None,
    optimizer_in_backward: o.OptimizerInBackward = None,
    activation_offload: o.ActivationOffload = None,
    tokens: Tokens = "100M",
    epochs: Epochs = 1.0,
    headroom: o.Headroom = "10%",
    mfu: Utilisation = 0.40,
    amortise_years: Years = 3.0,
    kwh_price: Kwh = 0.15,
    max_nodes: MaxNodes = 64,
    emit: o.Emit = None,
    emit_to: o.EmitTo = None,
    catalog: o.CatalogDir = None,
    top: Top = 15,
    fmt: o.Format = "table",
) -> None:
    """Every catalog GPU and system that runs the job (all its GPUs, the fastest strategy that fits, several
    nodes when one is not enough), with headroom, speed, time and cost; cheapest first."""
    options = locals()
    from vramplan.api import estimate
    from vramplan.cli.render_hardware import emit_plan
    from vramplan.errors import UsageError
    from vramplan.hardware.catalog import load_hardware
    from vramplan.hardware.plan import CostAssumptions, plan_options
    from vramplan.hardware.suggest import suggest_changes

    check_format(fmt)
    assumptions = CostAssumptions(utilisation=mfu, amortisation_years=amortise_years, energy_usd_per_kwh=kwh_price,
                                  headroom=o.parse_fraction(headroom, "--headroom"), max_nodes=max_nodes)
    training_tokens = round(o.parse_count(tokens, "--tokens") * epochs)
    hardware = load_hardware(catalog)
    model, method, chosen = merge_config_file(from_file, model, method, o.training_options(options))
    result = estimate(model, method, **chosen)
    plan = plan_options(result, hardware, training_tokens, assumptions)
    suggestions = []
    if not plan.options:
        largest = max(gpu.memory_bytes for gpu in hardware.gpus.values())
        suggestions = suggest_changes(result, int(largest * (1 - assumptions.headroom)))
    if emit is not None and plan.options:
        from vramplan.cli.emit import emit_configs
        from vramplan.hardware.plan import chosen_setup

        cheapest = next((option for option in plan.options if option.cheapest), plan.options[0])
        try:
            printed = emit_configs(emit, chosen_setup(plan, cheapest), result.model.spec, emit_to)
        except UsageError as err:
            raise UsageError(f"the cheapest option, {cheapest.id}, runs {cheapest.strategy}: {err}") from None
        if printed:
            return  # the config of the cheapest option went to stdout, in place of the plan
    elif emit_to is not None:
        raise UsageError("--emit-to needs --emit deepspeed|fsdp|accelerate")
    if fmt == "json":
        document = plan.model_dump(mode="json")
        document["suggestions"] = [s.model_dump(mode="json") for s in suggestions]
        emit_json_document(document)
    else:
        emit_plan(plan, suggestions, top)
    if not plan.options:
        raise typer.Exit(3)


def fit_command(
    gpu: GpuId,
    model: o.ModelOrFile = None,
    method: o.MethodOrFile = None,
    from_file: o.FromFile = None,
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    precision: o.PrecisionOpt = None,
    optimizer: o.OptimizerOpt = None,
    gradient_checkpointing: o.Checkpointing = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    lora_dropout: o.LoraDropout = None,
    double_quant: o.DoubleQuant = None,
    kbit_prep: o.KbitPrep = None,
    stack: o.StackOpt = None,
    loss: o.LossOpt = None,
    liger: o.LigerOpt = None,
    packing: o.PackingOpt = None,
    attn: o.AttnOpt = None,
    optimizer_in_backward: o.OptimizerInBackward = None,
    activation_offload: o.ActivationOffload = None,
    gpus: o.Gpus = None,
    nodes: o.Nodes = None,
    strategy: o.Strategy = None,
    offload: o.OffloadOpt = None,
    solve: SolveOpt = "batch-size",
    headroom: o.Headroom = "10%",
    catalog: o.CatalogDir = None,
    fmt: o.Format = "table",
) -> None:
    """The largest per-GPU batch size (or sequence length, or LoRA rank) that fits a catalog GPU, alone or under
    --gpus/--nodes/--strategy/--offload."""
    options = locals()
    from vramplan.cli.render_hardware import emit_fit
    from vramplan.errors import UsageError
    from vramplan.hardware.catalog import load_hardware
    from vramplan.hardware.fit import SEARCH_LIMITS, largest_fitting
    from vramplan.hardware.suggest import suggest_changes
    from vramplan.estimate import estimate_memory

    check_format(fmt)
    if solve not in SEARCH_LIMITS:
        raise UsageError(f"--solve {solve!r}: choose batch-size, seq-len or lora-rank")
    hardware = load_hardware(catalog)
    if gpu not in hardware.gpus:
        raise UsageError(f"--gpu {gpu!r} is not in the catalog (see vramplan catalog gpus)")
    card = hardware.gpus[gpu]
    usable = int(card.memory_bytes * (1 - o.parse_fraction(headroom, "--headroom")))
    model, method, chosen = merge_config_file(
        from_file, model, method, o.training_options(options, o.SETUP_AND_GPU_OPTIONS)
    )
    resolved, setup, _ = resolve_run(model, method, **chosen)
    result = largest_fitting(resolved, setup, solve, usable)
    suggestions = []
    if result.value is None:
        suggestions = suggest_changes(estimate_memory(resolved, setup), usable)
    if fmt == "json":
        document = result.model_dump(mode="json")
        document["gpu"] = card.model_dump(mode="json")
        document["suggestions"] = [s.model_dump(mode="json") for s in suggestions]
        emit_json_document(document)
    else:
        emit_fit(result, card, suggestions)
    if result.value is None:
        raise typer.Exit(3)


def report_command(
    jobs: Annotated[str, typer.Argument(help="TOML file of planned jobs (see examples/jobs.toml).")],
    out: Annotated[str, typer.Option("--out", help="Folder for report.html, report.md and the charts.")] = "report",
    catalog: o.CatalogDir = None,
) -> None:
    """Write a procurement report (HTML and Markdown) for a team's planned jobs."""
    import sys
    from pathlib import Path

    from vramplan.errors import require_extra
    from vramplan.hardware.catalog import load_hardware
    from vramplan.report.build import build_report
    from vramplan.report.jobs import load_jobs
    from vramplan.report.render import write_report

    require_extra("report", "matplotlib")
    report = build_report(load_jobs(Path(jobs)), load_hardware(catalog))
    written = write_report(report, Path(out))
    if report.recommended is not None:
        sys.stdout.write(f"recommended: {report.recommended.id} ({report.recommended.name})\n")
    sys.stdout.write("wrote " + ", ".join(str(path) for path in written) + "\n")



# check's --gpus picks local GPU indices; the job's own GPU count is --gpus-per-node.
CHECK_OPTIONS = o.SETUP_OPTIONS + ("nodes", "strategy", "offload")


def check_command(
    model: o.ModelOrFile = None,
    method: o.MethodOrFile = None,
    from_file: o.FromFile = None,
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    precision: o.PrecisionOpt = None,
    optimizer: o.OptimizerOpt = None,
    gradient_checkpointing: o.Checkpointing = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    lora_dropout: o.LoraDropout = None,
    double_quant: o.DoubleQuant = None,
    kbit_prep: o.KbitPrep = None,
    stack: o.StackOpt = None,
    loss: o.LossOpt = None,
    liger: o.LigerOpt = None,
    packing: o.PackingOpt = None,
    attn: o.AttnOpt = None,
    optimizer_in_backward: o.OptimizerInBackward = None,
    activation_offload: o.ActivationOffload = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="Visible GPU indices to check, e.g. 0,1.")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(
        "--gpus-per-node", help="The job's GPUs per node under --strategy (each checked GPU holds one rank).")] = None,
    nodes: o.Nodes = None,
    strategy: o.Strategy = None,
    offload: o.OffloadOpt = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Check against an idle catalog GPU instead.")] = None,
    headroom: o.Headroom = "0%",
    nvml_recording: Annotated[Optional[str], typer.Option("--nvml-recording", hidden=True,
                                                          help="Replay recorded NVML answers (tests, demos).")] = None,
    catalog: o.CatalogDir = None,
    fmt: o.Format = "table",
) -> None:
    """Pre-flight: does the job fit on the local GPUs (NVML) or on a catalog GPU? Exit 0 fits, 3 not, 4 cannot check."""
    options = locals()
    from pathlib import Path

    from vramplan.api import estimate
    from vramplan.check.nvml import RecordedNvml
    from vramplan.check.preflight import check_catalog, check_local
    from vramplan.cli.render_hardware import emit_verdict
    from vramplan.errors import UsageError

    check_format(fmt)
    fraction = o.parse_fraction(headroom, "--headroom")
    model, method, chosen = merge_config_file(from_file, model, method, o.training_options(options, CHECK_OPTIONS))
    if gpus_per_node is not None:
        chosen["gpus"] = gpus_per_node
    result = estimate(model, method, **chosen)
    if gpu is not None:
        verdict = check_catalog(result, gpu, fraction, catalog)
    else:
        indices = None
        if gpus is not None:
            try:
                indices = [int(part) for part in gpus.split(",") if part.strip()]
            except ValueError:
                raise UsageError(f"--gpus {gpus!r}: write indices like 0,1") from None
        nvml = RecordedNvml.from_file(Path(nvml_recording)) if nvml_recording else None
        verdict = check_local(result, indices, fraction, nvml)
    if fmt == "json":
        document = verdict.model_dump(mode="json")
        document["exit_code"] = verdict.exit_code
        emit_json_document(document)
    else:
        emit_verdict(verdict)
    if verdict.exit_code:
        raise typer.Exit(verdict.exit_code)


def probe_command(
    model: o.ModelOrFile = None,
    method: o.MethodOrFile = None,
    from_file: o.FromFile = None,
    batch_size: o.BatchSize = None,
    seq_len: o.SeqLen = None,
    precision: o.PrecisionOpt = None,
    optimizer: o.OptimizerOpt = None,
    gradient_checkpointing: o.Checkpointing = None,
    lora_rank: o.LoraRank = None,
    lora_targets: o.LoraTargets = None,
    lora_dropout: o.LoraDropout = None,
    double_quant: o.DoubleQuant = None,
    kbit_prep: o.KbitPrep = None,
    stack: o.StackOpt = None,
    loss: o.LossOpt = None,
    liger: o.LigerOpt = None,
    packing: o.PackingOpt = None,
    attn: o.AttnOpt = None,
    optimizer_in_backward: o.OptimizerInBackward = None,
    activation_offload: o.ActivationOffload = None,
    steps: Annotated[int, typer.Option("--steps", help="Measured steps after one warm-up step.", min=1)] = 3,
    device: Annotated[str, typer.Option("--device", help="auto | cuda | cpu (cpu: small configs)")] = "auto",
    out: Annotated[str, typer.Option("--out", help="Folder for <gpu>-<date>.jsonl.")] = "validation/measurements",
    fmt: o.Format = "table",
) -> None:
    """Run a few real training steps (random weights) and append the measured peaks as one JSON line."""
    options = locals()
    import sys
    from pathlib import Path

    from vramplan.errors import UsageError, require_extra

    check_format(fmt)
    if device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--device {device!r}: choose auto, cuda or cpu")
    require_extra("probe", "torch", "transformers", "peft", "accelerate")
    from vramplan.measure.probe import append_jsonl, measurement_file, run_probe

    model, method, options = merge_config_file(from_file, model, method, o.training_options(options))
    resolved, setup, _ = resolve_run(model, method, **options)
    record = run_probe(resolved, setup, steps=steps, device=device,
                       options=options)
    path = measurement_file(Path(out), record.gpu)
    append_jsonl(path, record)
    if fmt == "json":
        sys.stdout.write(record.model_dump_json(indent=2) + "\n")
    else:
        measured = record.max_memory_allocated
        sys.stdout.write(
            f"{record.id} on {record.gpu}: {record.status}; peak allocated "
            f"{'?' if measured is None else f'{measured / 2**30:.2f} GiB'} ({record.peak_phase}) against "
            f"{record.estimate['peak_allocated_bytes'] / 2**30:.2f} GiB estimated; appended to {path}\n")
