"""Rank 0's FSDP2 training step over a fake process group of N ranks, counted byte by byte (a recipe on
`fake_step`): the model sharded by accelerate (`fsdp.shard`), its allocations filed by `fsdp.tracker`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from vramplan.allocator.caching import TracedEvent
from vramplan.measure.build import AUTOCAST_DTYPE
from vramplan.measure.cuda_paths import as_on_gpu
from vramplan.measure.fake_step import (
    PhaseBytes,
    Warmup,
    attribute_modules,
    create_optimizer_states,
    fake_mode,
    measure_steady_step,
    run_phases,
    module_name,
    removing,
    tag_optimizer_states,
)
from vramplan.measure.fsdp.shard import FsdpUnit, build_sharded, describe_units
from vramplan.measure.fsdp.tracker import (
    REPLICATED_TENSORS,
    SHARDED_PARAMETERS,
    FsdpLiveBytesTracker,
    instrument_fsdp,
    local_tensor,
    sharded_gradient_hooks,
    step_peaks,
    track_sharded_parameters,
)
from vramplan.measure.hf_step import quiet_libraries
from vramplan.measure.livebytes import ACTIVATIONS, GRADIENTS
from vramplan.training import Stack, Strategy, TrainingSetup


class FsdpStepTrace(BaseModel):
    """Rank 0's live-bytes peaks of one steady-state FSDP2 training step over `world_size` ranks."""

    world_size: int
    reshard_after_forward: bool
    offload_params: bool
    peak_allocated_bytes: int
    peak_phase: str
    components: dict[str, int]
    phases: list[PhaseBytes]
    gathered_at_peak: dict[str, dict[str, int]]
    most_gathered: dict[str, dict[str, int]]
    units: list[FsdpUnit]
    mixed_precision: dict[str, str | None]
    gradient_dtypes: list[str]
    idle_bytes: int
    total_params: int
    trainable_params: int
    allocation_events: list[TracedEvent] = Field(default_factory=list, repr=False)  # rank 0's, in order


def trace_fsdp_step(config: dict[str, Any], setup: TrainingSetup, world_size: int, *,
                    reshard_after_forward: bool = True, offload_params: bool = False) -> FsdpStepTrace:
    """Rank 0's peak live bytes of one steady-state FSDP2 step over `world_size` ranks, in a fresh process.

    The child is `python -m vramplan.measure.fsdp`: the fake process group is process-global, and a fresh
    interpreter needs no `if __name__ == "__main__"` guard from the caller (unlike multiprocessing's spawn).
    """
    request = dict(config=config, setup=setup.model_dump(mode="json"), world_size=world_size,
                   reshard_after_forward=reshard_after_forward, offload_params=offload_params)
    with tempfile.TemporaryDirectory() as folder:
        answer = Path(folder) / "trace.json"
        child = subprocess.run(
            [sys.executable, "-m", "vramplan.measure.fsdp", str(answer)], input=json.dumps(request), text=True,
            capture_output=True,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the FSDP trace over {world_size} ranks failed:\n{child.stderr[-4000:]}")
        return FsdpStepTrace.model_validate_json(answer.read_text())


def answer_request(answer: str) -> None:
    """The child's side of `trace_fsdp_step`: the request on stdin, the trace written to the file `answer`."""
    request = json.loads(sys.stdin.read())
    trace = trace_fsdp_step_in_process(
        request["config"], TrainingSetup.model_validate(request["setup"]), request["world_size"],
        reshard_after_forward=request["reshard_after_forward"], offload_params=request["offload_params"],
    )
    Path(answer).write_text(trace.model_dump_json())


def trace_fsdp_step_in_process(
    config: dict[str, Any], setup: TrainingSetup, world_size: int, *, reshard_after_forward: bool = True,
    offload_params: bool = False, warmup: Warmup = "optimizer",
) -> FsdpStepTrace:
    """`trace_fsdp_step` in this process: starts (and afterwards destroys) a fake process group of `world_size`.

    `warmup` as in `hf_step.trace_training_step`: "optimizer" creates the optimizer states with one step on zero
    gradients, "step" runs a whole training step first (FSDP's first all-gathers included).
    """
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group already exists in this process; use trace_fsdp_step")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        with quiet_libraries():
            if setup.stack is Stack.TORCHTUNE:
                from vramplan.measure.fsdp.torchtune import trace_torchtune_fsdp

                family = str(config.get("model_type", "llama"))
                return FsdpStepTrace(**trace_torchtune_fsdp(config, family, setup, world_size, offload_params))
            return _trace(config, setup, world_size, reshard_after_forward, offload_params, warmup)
    finally:
        dist.destroy_process_group()


def _trace(config, setup, world_size, reshard_after_forward, offload_params, warmup) -> FsdpStepTrace:
    from vramplan.measure.build import make_optimizer

    mode = fake_mode()
    flat = setup.strategy is Strategy.FSDP1
    if flat and (setup.forward_prefetch or offload_params):
        # FSDP1 prefetches in forward by the pre-forward order its first forward records
        # (_exec_order_utils.get_handle_to_forward_prefetch), and under CPUOffload allocates each unit's pinned host
        # gradient at its lazy init (FlatParamHandle.init_flat_param_attributes): the steady step follows a whole step
        warmup = "step"
    if flat:
        from vramplan.measure.fsdp.flat import build_flat, describe_flat_units, flat_handles, instrument_fsdp1

        model, mixed_precision, total_params, quant_states = build_flat(config, setup, mode)
        policy_dtypes = _flat_dtypes(flat_handles(model))
    else:
        model, policy, total_params, quant_states = build_sharded(
            config, setup, world_size, reshard_after_forward, offload_params, mode
        )
        policy_dtypes = _policy_dtypes(policy)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = {id(p): module_name(name.rsplit(".", 1)[0]) for name, p in model.named_parameters()}
    tracker = FsdpLiveBytesTracker(host_phases=("warmup", "optimizer") if offload_params else ())
    gradient_dtypes: set[str] = set()
    hooks = [] if flat else sharded_gradient_hooks(params, tracker, owners, offload_params, gradient_dtypes)
    optimizer = make_optimizer(params, setup.optimizer)
    # FSDP1 goes through accelerate's prepare_model, which wraps forward in autocast and convert_outputs_to_fp32
    # under Trainer's bf16/fp16 (native_amp); FSDP2's _prepare_fsdp2 does not, and Trainer adds none.
    amp = flat and setup.autocast

    def loss(input_ids):
        from accelerate.utils import convert_to_fp32

        with torch.autocast("cpu", dtype=AUTOCAST_DTYPE[setup.precision]) if amp else contextlib.nullcontext():
            outputs = model(input_ids=input_ids, labels=input_ids)
        return (convert_to_fp32(outputs) if amp else outputs).loss

    def training_step(input_ids) -> None:
        run_phases(tracker, lambda: loss(input_ids), optimizer)

    def warm_up() -> None:
        if warmup == "step":
            training_step(input_ids)
            if flat and offload_params:
                _flat_host_state(model, tracker)
        else:
            create_optimizer_states(params, [optimizer])
            if flat:
                _previous_flat_gradients(model, tracker)
        if not offload_params:
            tag_optimizer_states(optimizer, tracker, owners, unwrap=local_tensor)

    instrument = instrument_fsdp1(tracker) if flat else instrument_fsdp(tracker)
    with removing(hooks), mode, as_on_gpu(), attribute_modules(model, tracker), tracker, instrument:
        tracker.set_phase("idle")  # nothing below is a parameter unless tagged so
        input_ids = torch.randint(0, int(config["vocab_size"]), (setup.batch_size, setup.seq_len))
        tracker.tag(input_ids, ACTIVATIONS, "(inputs)")
        if flat:
            _track_flat_state(model, tracker, quant_states, offload_params)
        else:
            _track_model_state(model, tracker, owners, quant_states, offload_params)
        measure_steady_step(tracker, warm_up, lambda: training_step(input_ids))
    if flat:
        gradient_dtypes = {str(h.flat_param.dtype).removeprefix("torch.") for h in flat_handles(model)
                           if h.flat_param.requires_grad}
    return FsdpStepTrace(
        world_size=world_size,
        reshard_after_forward=reshard_after_forward,
        offload_params=offload_params,
        **step_peaks(tracker),
        units=describe_flat_units(model) if flat else describe_units(model),
        mixed_precision=policy_dtypes,
        gradient_dtypes=sorted(gradient_dtypes),
        idle_bytes=tracker.live_bytes,
        total_params=total_params,
        trainable_params=sum(p.numel() for p in params),
        allocation_events=tracker.events,
    )


def _flat_dtypes(handles) -> dict[str, str | None]:
    """FSDP1's MixedPrecision dtypes as the handles hold them, None where no unit casts."""
    def name(dtypes):
        values = {str(d).removeprefix("torch.") for d in dtypes if d is not None}
        return ",".join(sorted(values)) or None

    return {
        "param_dtype": name(h._fwd_bwd_param_dtype for h in handles if h._uses_param_mixed_precision),
        "reduce_dtype": name(h._reduce_dtype for h in handles if h._uses_reduce_mixed_precision),
        "output_dtype": None,
    }


def _previous_flat_gradients(model, tracker) -> None:
    """The previous step's sharded flat gradients, as a steady step inherits them: with use_orig_params the
    optimizer's zero_grad clears only the original parameters' views, and FSDP1 frees each flat gradient at the next
    root pre-forward (_runtime_utils._root_pre_forward, _reset_flat_param_grad_info_if_needed)."""
    from vramplan.measure.fsdp.flat import flat_handles, handle_name

    for handle in flat_handles(model):
        flat = handle.flat_param
        if flat.requires_grad and flat.grad is None:
            flat.grad = torch.zeros_like(flat)
            tracker.tag(flat.grad, GRADIENTS, handle_name(handle))


def _flat_host_state(model, tracker) -> None:
    """CPUOffload: each unit's sharded flat parameter and its pinned gradient (`_cpu_grad`) live in host memory
    (torch/distributed/fsdp/_flat_param.py init_flat_param_attributes)."""
    from vramplan.measure.fsdp.flat import flat_handles

    for handle in flat_handles(model):
        tracker.to_host(handle.flat_param._local_shard)
        if getattr(handle.flat_param, "_cpu_grad", None) is not None:
            tracker.to_host(handle.flat_param._cpu_grad)


def _track_flat_state(model, tracker, quant_states, offload_params: bool = False) -> None:
    """Each unit's sharded flat parameter (the original parameters are views into it; host-resident under
    CPUOffload), buffers and QuantStates."""
    from vramplan.measure.fsdp.flat import flat_handles, handle_name

    for handle in flat_handles(model):
        if offload_params:
            tracker.to_host(handle.flat_param)
        else:
            tracker.tag(handle.flat_param, SHARDED_PARAMETERS, handle_name(handle))
    tracker.track_all(model.buffers(), REPLICATED_TENSORS)
    for name, tensors in quant_states:
        tracker.track_all(tensors, REPLICATED_TENSORS, name)


def _policy_dtypes(policy) -> dict[str, str | None]:
    """MixedPrecisionPolicy's dtypes by name ('bfloat16'), None where it keeps the parameter's own."""
    return {
        key: None if value is None else str(value).removeprefix("torch.")
        for key, value in (("param_dtype", policy.param_dtype), ("reduce_dtype", policy.reduce_dtype),
                           ("output_dtype", policy.output_dtype))
    }


def _track_model_state(model, tracker, owners, quant_states, offload_params) -> None:
    """Sharded parameters (host-resident under CPU offload), and the unsharded buffers and QuantStates."""
    track_sharded_parameters(model, tracker, owners, offload_params)
    for name, tensors in quant_states:
        tracker.track_all(tensors, REPLICATED_TENSORS, name)
