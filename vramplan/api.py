"""The Python API: the same typed results the CLI renders."""

from __future__ import annotations

from vramplan.estimate import Estimate, estimate_memory
from vramplan.estimate.assumptions import describe_assumptions
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup


def estimate(model: str, method: str = "lora", **options) -> Estimate:
    """Estimate one GPU's memory for fine-tuning `model` with `method`.

    `options` are the CLI's training options with underscores: batch_size, seq_len, precision, optimizer,
    gradient_checkpointing, lora_rank, lora_targets, lora_dropout, double_quant, kbit_prep, gpus, strategy.
    Raises vramplan.errors.UsageError (or a subclass) for bad input.
    """
    resolved = resolve_model(model)
    setup = resolve_setup(method, **options)
    result = estimate_memory(resolved, setup)
    return result.model_copy(update={"assumptions": describe_assumptions(resolved, setup)})


def trace(model: str, method: str = "lora", **options):
    """Trace one training step of `model` with `method` on CPU (fake tensors) and return its measured peaks.

    Takes the same options as `estimate`. Needs the `probe` extra (torch, transformers, peft, bitsandbytes).
    """
    from vramplan.measure.trace import trace_memory

    return trace_memory(resolve_model(model), resolve_setup(method, **options))
