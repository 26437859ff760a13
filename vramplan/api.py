"""The Python API: the same typed results the CLI renders."""

from __future__ import annotations

from vramplan.request import RunRequest, estimate_request, resolve_request
from vramplan.result import Estimate
from vramplan.units import DEFAULT_HEADROOM


def resolve_run(model: str, method: str = "lora", **options):
    """(ResolvedModel, TrainingSetup, notes) for a run: the model, the setup with every default filled, and what
    vramplan chose on the user's behalf."""
    return resolve_request(RunRequest.of(model, method, **options))


def estimate(model: str, method: str = "lora", *, notes: list[str] | tuple[str, ...] = (), **options) -> Estimate:
    """Estimate one GPU's memory for fine-tuning `model` with `method`.

    `options` are RunOptions' fields (vramplan/options.py), the CLI's flags with underscores: batch_size, seq_len,
    precision, optimizer, gradient_checkpointing, lora_rank, lora_targets, lora_dropout, double_quant, kbit_prep,
    gpus (per node), nodes, strategy, offload, stack, loss, liger, packing, attn, optimizer_in_backward,
    activation_offload. `notes` are assumption lines the caller adds (what `--from` read on the user's behalf).
    Raises vramplan.errors.UsageError (or a subclass) for bad input.
    """
    return estimate_request(RunRequest.of(model, method, notes, **options))


def trace(model: str, method: str = "lora", **options):
    """Trace one training step of `model` with `method` on CPU (fake tensors) and return its measured peaks.

    Takes the same options as `estimate`. Needs the `probe` extra (torch, transformers, peft, bitsandbytes).
    """
    from vramplan.measure.trace import trace_memory

    resolved, setup, _ = resolve_run(model, method, **options)
    return trace_memory(resolved, setup)


def preflight(
    model: str,
    method: str = "lora",
    *,
    devices: list[int] | None = None,
    gpu: str | None = None,
    headroom: float = DEFAULT_HEADROOM,
    nvml=None,
    **options,
):
    """Will this job fit? On the local GPUs (NVML; `devices` picks indices among the visible ones, LOCAL_RANK
    picks the rank's own, else the job's first `gpus` visible GPUs), or on idle catalog GPUs with
    `gpu="rtx-4090"`. `options` are estimate's (`gpus` is the job's GPUs per node, as everywhere). Returns a
    Verdict, with suggestions when it does not fit; raises CannotCheckError when there is no NVIDIA driver or GPU.
    """
    from vramplan.check.preflight import check_catalog, check_local

    request = RunRequest.of(model, method, **options)
    result = estimate_request(request)
    if gpu is not None:
        return check_catalog(result, gpu, headroom, request=request)
    return check_local(result, devices, headroom, nvml, request=request)
