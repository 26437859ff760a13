"""All printing of results: rich tables for people, the pydantic model as JSON for scripts."""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel

from vramplan.errors import UsageError
from vramplan.units import gib

COMPONENT_LABELS = {
    "weights": "weights",
    "lora_adapters": "LoRA adapters",
    "reference_model": "reference model (DPO/GRPO: a frozen copy)",
    "kv_cache": "KV cache (GRPO generation)",
    "generation_batch": "generation batch (GRPO: ids, masks, log-probs)",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "optimizer_temporaries": "optimizer step temporaries",
    "activations": "activations",
    "logits_loss": "logits / loss",
    "autocast_weight_copies": "autocast weight copies",
    "parameters": "parameters (weights, adapters, buffers)",
    "temporaries": "temporaries (backward, optimizer step)",
    "in_flight": "in flight: gathered parameters, gradient buffers, communication buckets",
    "gradient_partition": "gradient partition (ZeRO-2/3)",
    "sharded_parameters": "sharded parameters (FSDP)",
    "replicated_tensors": "replicated tensors (buffers, 4-bit QuantStates)",
    "unsharded_parameters": "gathered (unsharded) parameters",
    "all_gather_buffers": "all-gather buffers",
    "unsharded_gradients": "unsharded gradients",
    "reduce_scatter_buffers": "reduce-scatter buffers",
}


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"unknown --format {fmt!r}; choose table or json")
    return fmt


def emit_json(result: BaseModel, kind: str) -> None:
    emit_json_document(result.model_dump(mode="json"), kind)


def emit_json_document(document, kind: str) -> None:
    """A result (a dumped model with extra keys, or a list of records) on stdout, as a versioned document of its
    kind: {"schema": 1, "kind": ..., ...} (vramplan/output.py; its JSON Schema in vramplan/schemas/)."""
    from vramplan.output import json_text, versioned

    sys.stdout.write(json_text(versioned(kind, document)) + "\n")


def emit_answer(document) -> None:
    """A versioned document (vramplan/answers.py) on stdout."""
    from vramplan.output import json_text

    sys.stdout.write(json_text(document) + "\n")


def emit_estimate(estimate) -> None:
    """The estimate as a table and its notes, in plain text (no rich import on the estimate's cold start)."""
    from vramplan.cli.boxes import box_table

    components = [[COMPONENT_LABELS.get(name, name), f"{gib(nbytes):.2f}"]
                  for name, nbytes in estimate.components.items()
                  if nbytes]  # the JSON keeps every component; the table shows the ones that hold memory
    device_label = "device (nvidia-smi: + CUDA context, paged state" + (", NCCL)" if estimate.nccl_bytes else ")")
    totals = [["peak allocated (torch max_memory_allocated)", f"{gib(estimate.peak_allocated_bytes):.2f}"],
              ["peak reserved (caching allocator, upper end)", f"{gib(estimate.peak_reserved_bytes):.2f}"],
              [device_label, f"{gib(estimate.device_bytes):.2f}"]]
    title = f"{estimate.model.name}: {estimate.setup.method.value}, peak in {estimate.peak_phase}"
    lines = [box_table(title, ["component", "GiB"], [components, totals], right={1}).rstrip("\n")]
    if estimate.setup.world_size > 1 or estimate.setup.strategy.value != "single":
        lines.append(f"per GPU, on each of {estimate.setup.world_size} GPUs ({estimate.setup.strategy.value})")
    if estimate.host_bytes:
        machine = estimate.host_bytes * estimate.setup.gpus
        lines.append(f"host RAM for offloaded states: {gib(estimate.host_bytes):.2f} GiB per GPU, "
                     f"{gib(machine):.2f} GiB per node of {estimate.setup.gpus} GPUs")
    phases = "  ".join(f"{p.phase} {gib(p.total_bytes):.2f}" for p in estimate.phases)
    lines.append(f"phase peaks (GiB): {phases}")
    lines.append(f"parameters: {estimate.trainable_params:,} trainable of {estimate.total_params:,} "
                 f"({100 * estimate.trainable_params / estimate.total_params:.2f}%)")
    lines.append("assumptions:")
    lines.extend(f"  - {line}" for line in estimate.assumptions)
    lines.append("1 GiB = 2^30 bytes")
    sys.stdout.write("\n".join(lines) + "\n")


def emit_trace(trace, top_modules: int = 0) -> None:
    from rich.table import Table

    console = make_console()
    table = Table(title=f"{trace.model.name}: {trace.setup.method.value}, traced peak in {trace.peak_phase}")
    table.add_column("category at the peak")
    table.add_column("GiB", justify="right")
    for name, nbytes in trace.components.items():
        if nbytes:
            table.add_row(COMPONENT_LABELS.get(name, name), f"{gib(nbytes):.2f}")
    table.add_section()
    peak = gib(trace.peak_allocated_bytes)
    table.add_row("peak allocated (live tensors, as torch max_memory_allocated)", f"{peak:.2f}")
    if trace.allocator_replay is not None:
        replayed = trace.allocator_replay
        table.add_row("peak reserved (the step replayed through the caching allocator)",
                      f"{gib(replayed.peak_reserved_bytes):.2f}")
        table.add_row("  cached but unused at the allocated peak", f"{gib(replayed.fragmentation_at_peak_bytes):.2f}")
    console.print(table)
    if trace.allocator_replay is not None:
        from vramplan.allocator.config import describe

        console.print(f"allocator: PYTORCH_ALLOC_CONF {describe(trace.setup.allocator)}; "
                      f"{trace.allocator_replay.streams} CUDA stream(s)", highlight=False)
    phases = "  ".join(f"{p.phase} {gib(p.total_bytes):.2f}" for p in trace.phases)
    console.print(f"phase peaks (GiB): {phases}")
    console.print(
        f"parameters: {trace.trainable_params:,} trainable of {trace.total_params:,}; "
        f"traced in {trace.trace_seconds:.1f} s"
    )
    if top_modules:
        modules = Table(title="where the peak's bytes are (layers.* = summed over every layer)")
        modules.add_column("module")
        modules.add_column("x", justify="right")
        modules.add_column("GiB", justify="right")
        modules.add_column("mostly")
        for row in trace.by_module[:top_modules]:
            main = max(row.categories, key=row.categories.get)
            modules.add_row(row.module, str(row.count), f"{gib(row.bytes):.3f}", main)
        console.print(modules)
    console.print("GPU corrections and limits:")
    for line in trace.gpu_corrections:
        console.print(f"  - {line}", highlight=False, soft_wrap=True)
    console.print("1 GiB = 2^30 bytes", style="dim")


def make_console(min_piped_width: int | None = None):
    """A rich Console for results. rich exits with SystemExit(1) when stdout is a closed pipe; this one raises
    BrokenPipeError so the CLI's handler sees it. `min_piped_width` widens output that is not a terminal."""
    from rich.console import Console

    import os

    console = Console()
    wanted = "COLUMNS" in os.environ  # an explicit width wins, piped or not
    if min_piped_width and not wanted and not console.is_terminal and console.width < min_piped_width:
        console = Console(width=min_piped_width)
    console.on_broken_pipe = _raise_broken_pipe
    return console


def _raise_broken_pipe() -> None:
    raise BrokenPipeError
