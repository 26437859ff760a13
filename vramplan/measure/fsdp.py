"""One rank's live bytes in FSDP2 training, traced on CPU with a fake process group of N ranks.

The model is built as `build.build_fake_model` builds it (meta device, peft, FakeTensors; QLoRA with bitsandbytes'
`bnb_4bit_quant_storage=bfloat16`, the FSDP-QLoRA recipe) and sharded by accelerate's own `fsdp2_prepare_model`
(what transformers' Trainer runs for `fsdp_version: 2`): `fully_shard` on every decoder layer
(TRANSFORMER_BASED_WRAP on `model._no_split_modules`), the input embedding, a tail unit [final norm, lm_head] kept
unsharded after forward, then the root; trainable parameters upcast to fp32 when mixed precision is on, and
`MixedPrecisionPolicy(param_dtype, reduce_dtype, output_dtype)` set to the Trainer's bf16/fp16. The rank then runs
forward, backward and optimizer step under `torch.distributed` backend "fake" (collectives return at once), while
`FsdpLiveBytesTracker` counts live storages, FSDP's `untyped_storage().resize_` included, and files each one under
what FSDP made it: sharded parameter, all-gathered (unsharded) parameter, all-gather buffer, unsharded or sharded
gradient, reduce-scatter buffer. `trace_fsdp_step` runs each world size in a fresh Python process, since
`init_process_group` is process-global.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import BaseModel

from vramplan.measure.hf_step import PhaseBytes, Warmup, _as_on_gpu, _attribute_modules, _fake_mode, _logical_numel
from vramplan.measure.hf_step import _quant_state_tensors, quiet_libraries
from vramplan.measure.livebytes import (
    ACTIVATIONS,
    GRADIENTS,
    OPTIMIZER_STATES,
    TEMPORARIES,
    LiveBytesTracker,
    Snapshot,
    cuda_block_bytes,
)
from vramplan.training import Method, Precision, TrainingSetup

SHARDED_PARAMETERS = "sharded_parameters"
REPLICATED_TENSORS = "replicated_tensors"  # buffers and 4-bit QuantStates: FSDP does not shard them
UNSHARDED_PARAMETERS = "unsharded_parameters"
ALL_GATHER_BUFFERS = "all_gather_buffers"
UNSHARDED_GRADIENTS = "unsharded_gradients"
REDUCE_SCATTER_BUFFERS = "reduce_scatter_buffers"
FSDP_CATEGORIES = (
    SHARDED_PARAMETERS, REPLICATED_TENSORS, UNSHARDED_PARAMETERS, ALL_GATHER_BUFFERS, GRADIENTS,
    UNSHARDED_GRADIENTS, REDUCE_SCATTER_BUFFERS, OPTIMIZER_STATES, ACTIVATIONS, TEMPORARIES,
)
# accelerate/utils/dataclasses.py, FullyShardedDataParallelPlugin.set_mixed_precision: Trainer's bf16/fp16 flag.
ACCELERATE_MIXED_PRECISION = {
    Precision.BF16: "bf16", Precision.BF16_MIXED: "bf16", Precision.FP16_MIXED: "fp16", Precision.FP32: "no",
}
# The FSDP-QLoRA recipe (peft docs, "FSDP + QLoRA"): packed 4-bit bytes viewed as bf16 so FSDP shards them.
QLORA_QUANT_STORAGE = torch.bfloat16
MESH_DIM = "dp_shard"


class FsdpUnit(BaseModel):
    """One `fully_shard` call: its parameters, their bytes on this rank and when all-gathered.

    `params` counts stored elements (a packed 4-bit weight in bf16 storage counts its bf16 elements, a quarter of
    the weights it stands for); `unsharded_bytes` is what one all-gather materialises, in param_dtype.
    """

    name: str
    params: int
    sharded_bytes: int
    unsharded_bytes: int
    dtypes: list[str]
    reshard_after_forward: bool


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


@dataclass
class FsdpLiveBytesTracker(LiveBytesTracker):
    """LiveBytesTracker that sees through DTensor, follows storage resizes and keeps host-resident bytes out.

    The DTensor, `wait_tensor` and nested-fake-mode rules are those of torch's own FSDP2 tracker
    (torch/distributed/_tools/fsdp2_mem_tracker.py, `FSDPMemTracker.__torch_dispatch__`); the resize patch is
    `MemTracker._track_resize` (FSDP2 frees and re-allocates unsharded parameters by `storage.resize_`).
    """

    unit: str | None = None  # the FSDP unit whose unshard/reshard/reduce code is running
    # Per phase, the units holding all-gathered parameters or all-gather buffers when those bytes are at their most.
    most_gathered: dict[str, dict[str, int]] = field(default_factory=dict)
    host_phases: tuple[str, ...] = ()  # phases whose allocations live in host memory (CPU offload)
    _host: set[int] = field(default_factory=set)
    _entry_fake_mode: Any = None
    _saved_resize: Any = None

    def __enter__(self):
        from torch._guards import active_fake_mode

        self._entry_fake_mode = active_fake_mode()
        self._saved_resize = torch.UntypedStorage.resize_
        tracker, original = self, self._saved_resize

        def resize_(storage, size):
            result = original(storage, size)
            tracker._resized(storage)
            return result

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._saved_resize
        return super().__exit__(*exc)

    def _resized(self, storage) -> None:
        known = self._records.get(id(storage))
        nbytes = cuda_block_bytes(storage.nbytes())
        if known is not None and known[0] != nbytes:
            self._records[id(storage)] = (nbytes, known[1], known[2])
            self._grow(nbytes - known[0], (known[2], known[1]))

    def note_gathered(self) -> None:
        """Remember when this phase's gathered bytes (parameters and all-gather buffers) are at their most."""
        gathered = gathered_units(self._live_by_owner)
        if sum(gathered.values()) > sum(self.most_gathered.get(self.phase, {}).values()):
            self.most_gathered[self.phase] = gathered

    def _current_category(self) -> str:
        if self.unit is not None:
            return TEMPORARIES
        return super()._current_category()

    def track(self, tensor, category=None, module=None) -> None:
        storage = tensor.untyped_storage()
        if id(storage) in self._host:
            return
        if self.phase in self.host_phases and id(storage) not in self._records:
            self.to_host(tensor)
            return
        super().track(tensor, category, module)

    def to_host(self, tensor: torch.Tensor) -> None:
        """This storage lives in host memory (CPU offload): stop counting it."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._host:
            return
        record = self._records.pop(key, None)
        if record is not None:
            self._refresh_snapshots()
            self.live_bytes -= record[0]
            self._add_owner((record[2], record[1]), -record[0])
        else:
            weakref.finalize(storage, self._host.discard, key)
        self._host.add(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._guards import active_fake_mode
        from torch.distributed.tensor import DTensor

        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor run its local ops, which come back here
        if func is torch.ops._c10d_functional.wait_tensor.default and active_fake_mode():
            return args[0]  # the fake kernel returns a new tensor where eager returns its input
        if active_fake_mode() is not self._entry_fake_mode:
            return func(*args, **(kwargs or {}))  # DTensor's sharding propagation, not the rank's memory
        return super().__torch_dispatch__(func, types, args, kwargs)


def fsdp_categories(snapshot: Snapshot) -> dict[str, int]:
    totals = dict.fromkeys(FSDP_CATEGORIES, 0)
    for (_, category), nbytes in snapshot.by_owner.items():
        totals[category] = totals.get(category, 0) + nbytes
    return totals


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return getattr(tensor, "_local_tensor", tensor)


def _fsdp_units(model) -> list[tuple[str, Any]]:
    """(unit name, FSDPParamGroup) of every `fully_shard` call that holds parameters."""
    from torch.distributed.fsdp import FSDPModule

    units = []
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None and all(group is not seen for _, seen in units):
                units.append((group._module_fqn or "(root)", group))
    return units


@contextlib.contextmanager
def _patched(owner, name: str, wrap):
    own = name in vars(owner)
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # inherited: fall back to the base class again


def _in_unit(tracker: FsdpLiveBytesTracker):
    """Run an FSDPParamGroup method with `tracker.unit` naming the group (FSDP's own allocations)."""
    def wrap(method):
        def wrapped(group, *args, **kwargs):
            previous, tracker.unit = tracker.unit, group._module_fqn or "(root)"
            try:
                return method(group, *args, **kwargs)
            finally:
                tracker.note_gathered()
                tracker.unit = previous
        return wrapped
    return wrap


def _tagging_allocate(tracker: FsdpLiveBytesTracker, category: str):
    """The flat all-gather output / reduce-scatter input and output (_fsdp_collectives.py, Default*.allocate)."""
    def wrap(method):
        def allocate(comm, *args, **kwargs):
            tensor = method(comm, *args, **kwargs)
            tracker.tag(tensor, category, tracker.unit or "(fsdp)")
            return tensor
        return allocate
    return wrap


def _tagging_outputs(tracker: FsdpLiveBytesTracker):
    """Each parameter's unsharded storage (_fsdp_param.py, FSDPParam.init_all_gather_outputs), then resized."""
    def wrap(method):
        def init_all_gather_outputs(fsdp_param, *args, **kwargs):
            method(fsdp_param, *args, **kwargs)
            for tensor in fsdp_param.all_gather_outputs:
                tracker.tag(tensor, UNSHARDED_PARAMETERS, tracker.unit or "(fsdp)")
        return init_all_gather_outputs
    return wrap


def _hooking_unsharded_grads(tracker: FsdpLiveBytesTracker):
    """Autograd's gradient of each unsharded parameter, in param_dtype, until post_backward reduce-scatters it."""
    def wrap(method):
        def init_unsharded_param(fsdp_param):
            method(fsdp_param)
            param = fsdp_param._unsharded_param
            if param.requires_grad and not getattr(param, "_vramplan_hooked", False):
                unit = tracker.unit or "(fsdp)"
                param.register_post_accumulate_grad_hook(
                    lambda p: tracker.tag(_local(p.grad), UNSHARDED_GRADIENTS, unit)
                )
                param._vramplan_hooked = True
        return init_unsharded_param
    return wrap


def _fix_quant_state(module) -> None:
    """bitsandbytes' `fix_4bit_weight_quant_state_from_module` without re-wrapping in Params4bit.

    FSDP2's all-gathered weight is a fresh Parameter without `quant_state`; bitsandbytes wraps it in Params4bit
    (a view, no allocation) and re-attaches the module's QuantState. Params4bit cannot wrap a FakeTensor, so the
    state is attached to the Parameter itself, which is all `Linear4bit.forward` reads.
    """
    if getattr(module.weight, "quant_state", None) is None:
        module.weight.quant_state = module.quant_state


@contextlib.contextmanager
def _instrument_fsdp(tracker: FsdpLiveBytesTracker):
    import bitsandbytes.nn.modules as bnb_modules
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives
    from torch.distributed.fsdp._fully_shard._fsdp_param import FSDPParam
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    group_methods = ("unshard", "wait_for_unshard", "reshard", "post_backward")
    patches = [
        *((FSDPParamGroup, name, _in_unit(tracker)) for name in group_methods),
        (collectives.DefaultAllGather, "allocate", _tagging_allocate(tracker, ALL_GATHER_BUFFERS)),
        (collectives.DefaultReduceScatter, "allocate", _tagging_allocate(tracker, REDUCE_SCATTER_BUFFERS)),
        (FSDPParam, "init_all_gather_outputs", _tagging_outputs(tracker)),
        (FSDPParam, "init_unsharded_param", _hooking_unsharded_grads(tracker)),
        (bnb_modules, "fix_4bit_weight_quant_state_from_module", lambda _: _fix_quant_state),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, wrap in patches:
            stack.enter_context(_patched(owner, name, wrap))
        yield


def _fsdp_plugin(setup: TrainingSetup, reshard_after_forward: bool, offload_params: bool):
    """accelerate's FSDP2 plugin as Trainer builds it from `fsdp_config` (fsdp_version 2, transformer wrap)."""
    from accelerate.utils.dataclasses import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=reshard_after_forward,
        cpu_ram_efficient_loading=False,
        # accelerate sets CPUOffloadPolicy() (pinned); pinning needs CUDA and moves no GPU bytes.
        cpu_offload=CPUOffloadPolicy(pin_memory=False) if offload_params else False,
    )
    mixed_precision = ACCELERATE_MIXED_PRECISION[setup.precision]
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)  # accelerate/state.py, AcceleratorState for FSDP
    return plugin, mixed_precision


def shard_like_accelerate(model, setup: TrainingSetup, world_size: int, *, reshard_after_forward: bool = True,
                          offload_params: bool = False, fake_mode=None):
    """Run accelerate's `fsdp2_prepare_model` on `model`, over a 1-D mesh of the (fake) world."""
    import accelerate.utils.fsdp_utils as fsdp_utils
    import bitsandbytes as bnb
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin, mixed_precision = _fsdp_plugin(setup, reshard_after_forward, offload_params)
    # Built outside fake mode: the mesh reads its rank table as Python ints.
    mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
    # The attributes of accelerate's Accelerator that fsdp2_prepare_model reads (accelerate 1.15-1.16:
    # accelerate/utils/fsdp_utils.py); `device` is where ignored modules go (1.16 reads it on every call).
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), mixed_precision=mixed_precision, is_main_process=True,
        torch_device_mesh=mesh, parallelism_config=SimpleNamespace(fsdp_dim_names=(MESH_DIM,)),
        device=torch.device("cpu"),
    )
    with contextlib.ExitStack() as stack:
        # accelerate's logger refuses to log before an AcceleratorState exists.
        stack.enter_context(_patched(fsdp_utils, "logger", lambda _: logging.getLogger(fsdp_utils.__name__)))
        # fsdp2_prepare_model keeps a `model.state_dict()` for cpu_ram_efficient_loading (off here), and
        # bitsandbytes' state dict reads double-quantization offsets as Python floats, which fake tensors lack.
        stack.enter_context(
            _patched(bnb.nn.Linear4bit, "_save_to_state_dict", lambda _: torch.nn.Module._save_to_state_dict)
        )
        stack.enter_context(fake_mode or contextlib.nullcontext())
        model = fsdp_utils.fsdp2_prepare_model(accelerator, model)
    # fsdp2_prepare_model passes `mixed_precision_policy or MixedPrecisionPolicy()` (no casts) to fully_shard.
    return model, plugin.mixed_precision_policy or MixedPrecisionPolicy()


def _describe_units(model) -> list[FsdpUnit]:
    units = []
    for name, group in _fsdp_units(model):
        params = [p.sharded_param for p in group.fsdp_params]
        units.append(FsdpUnit(
            name=name,
            params=sum(p.numel() for p in params),
            sharded_bytes=sum(cuda_block_bytes(_local(p).untyped_storage().nbytes()) for p in params),
            unsharded_bytes=sum(
                cuda_block_bytes(p._orig_size.numel() * (p.param_dtype or p.orig_dtype).itemsize)
                for p in group.fsdp_params
            ),
            dtypes=sorted({str(p.dtype).removeprefix("torch.") for p in params}),
            reshard_after_forward=group.post_forward_mesh_info is not None,
        ))
    return units


def gathered_units(by_owner: dict[tuple[str, str], int]) -> dict[str, int]:
    """'<unit> (params)' / '<unit> (buffer)': bytes of all-gathered parameters and all-gather buffers per unit."""
    kinds = {UNSHARDED_PARAMETERS: "params", ALL_GATHER_BUFFERS: "buffer"}
    return {
        f"{module} ({kinds[category]})": nbytes
        for (module, category), nbytes in sorted(by_owner.items())
        if category in kinds and nbytes > 0
    }


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
            return _trace(config, setup, world_size, reshard_after_forward, offload_params, warmup)
    finally:
        dist.destroy_process_group()


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
            [sys.executable, "-m", __name__, str(answer)], input=json.dumps(request), text=True, capture_output=True,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the FSDP trace over {world_size} ranks failed:\n{child.stderr[-4000:]}")
        return FsdpStepTrace.model_validate_json(answer.read_text())


def _main(answer: str) -> None:
    request = json.loads(sys.stdin.read())
    trace = trace_fsdp_step_in_process(
        request["config"], TrainingSetup.model_validate(request["setup"]), request["world_size"],
        reshard_after_forward=request["reshard_after_forward"], offload_params=request["offload_params"],
    )
    Path(answer).write_text(trace.model_dump_json())


def _build_sharded(config, setup, world_size, reshard_after_forward, offload_params, fake_mode):
    from vramplan.measure.build import build_fake_model

    torch.manual_seed(0)
    quant_storage = QLORA_QUANT_STORAGE if setup.method is Method.QLORA else torch.uint8
    model = build_fake_model(config, setup, fake_mode, quant_storage=quant_storage)
    total_params = sum(_logical_numel(p) for p in model.parameters())
    quant_states = [(name, tensors) for name, tensors in _quant_state_tensors(model)]
    model, policy = shard_like_accelerate(
        model, setup, world_size, reshard_after_forward=reshard_after_forward, offload_params=offload_params,
        fake_mode=fake_mode,
    )
    return model, policy, total_params, quant_states


def _trace(config, setup, world_size, reshard_after_forward, offload_params, warmup) -> FsdpStepTrace:
    from vramplan.measure.build import make_optimizer
    from vramplan.measure.hf_step import _module_name

    fake_mode = _fake_mode()
    model, policy, total_params, quant_states = _build_sharded(
        config, setup, world_size, reshard_after_forward, offload_params, fake_mode
    )
    params = [p for p in model.parameters() if p.requires_grad]
    owners = {id(p): _module_name(name.rsplit(".", 1)[0]) for name, p in model.named_parameters()}
    tracker = FsdpLiveBytesTracker(host_phases=("warmup", "optimizer") if offload_params else ())
    gradient_dtypes: set[str] = set()

    def on_sharded_grad(param):  # FSDP2 runs these hooks itself, in foreach_reduce
        gradient_dtypes.add(str(param.grad.dtype).removeprefix("torch."))
        if offload_params:
            tracker.to_host(_local(param.grad))
        else:
            tracker.tag(_local(param.grad), GRADIENTS, owners.get(id(param), "(model)"))

    hooks = [param.register_post_accumulate_grad_hook(on_sharded_grad) for param in params]
    optimizer = make_optimizer(params, setup.optimizer)

    def training_step(input_ids) -> None:
        tracker.set_phase("forward")
        loss = model(input_ids=input_ids, labels=input_ids).loss  # Trainer adds no autocast under FSDP2
        tracker.set_phase("backward")
        loss.backward()
        del loss
        tracker.set_phase("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker.set_phase("idle")

    try:
        with fake_mode, _as_on_gpu(), _attribute_modules(model, tracker), tracker, _instrument_fsdp(tracker):
            tracker.set_phase("idle")  # nothing below is a parameter unless tagged so
            input_ids = torch.randint(0, int(config["vocab_size"]), (setup.batch_size, setup.seq_len))
            tracker.tag(input_ids, ACTIVATIONS, "(inputs)")
            _track_model_state(model, tracker, owners, quant_states, offload_params)
            tracker.set_phase("warmup")
            if warmup == "step":
                training_step(input_ids)
            else:
                for param in params:
                    param.grad = torch.zeros_like(param)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not offload_params:
                for param, state in optimizer.state.items():
                    for value in state.values():
                        if isinstance(value, torch.Tensor):
                            tracker.tag(_local(value), OPTIMIZER_STATES, owners.get(id(param), "(optimizer)"))
            tracker.set_phase("idle")
            tracker.reset_peak()
            tracker.most_gathered.clear()
            training_step(input_ids)
            tracker.finish()
    finally:
        for hook in hooks:
            hook.remove()
    return FsdpStepTrace(
        world_size=world_size,
        reshard_after_forward=reshard_after_forward,
        offload_params=offload_params,
        **_peaks(tracker),
        units=_describe_units(model),
        mixed_precision={
            key: None if value is None else str(value).removeprefix("torch.")
            for key, value in (("param_dtype", policy.param_dtype), ("reduce_dtype", policy.reduce_dtype),
                               ("output_dtype", policy.output_dtype))
        },
        gradient_dtypes=sorted(gradient_dtypes),
        idle_bytes=tracker.live_bytes,
        total_params=total_params,
        trainable_params=sum(p.numel() for p in params),
    )


def _peaks(tracker: FsdpLiveBytesTracker) -> dict[str, Any]:
    measured = {phase: snapshot for phase, snapshot in tracker.phase_snapshots.items()
                if phase in ("forward", "backward", "optimizer")}
    return dict(
        peak_allocated_bytes=tracker.peak_bytes,
        peak_phase=tracker.peak_phase,
        components=fsdp_categories(tracker.peak),
        phases=[
            PhaseBytes(phase=phase, peak_bytes=tracker.phase_peaks[phase], categories=fsdp_categories(snapshot))
            for phase, snapshot in measured.items()
        ],
        gathered_at_peak={phase: gathered_units(snapshot.by_owner) for phase, snapshot in measured.items()},
        most_gathered={phase: units for phase, units in tracker.most_gathered.items() if phase in measured},
    )


def _track_model_state(model, tracker, owners, quant_states, offload_params) -> None:
    """Sharded parameters (host-resident under CPU offload), and the unsharded buffers and QuantStates."""
    for param in model.parameters():
        if offload_params:
            tracker.to_host(_local(param))
        else:
            tracker.tag(_local(param), SHARDED_PARAMETERS, owners.get(id(param), "(model)"))
    tracker.track_all(model.buffers(), REPLICATED_TENSORS)
    for name, tensors in quant_states:
        tracker.track_all(tensors, REPLICATED_TENSORS, name)


if __name__ == "__main__":
    _main(sys.argv[1])
