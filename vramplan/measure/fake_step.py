"""The kernel every traced step runs on: fake mode, module attribution, warm-up then one measured step, the result.

A recipe (`hf_step`, `torchtune_step`, `fsdp.step`) builds its model, optimizer and training step; this module
gives it the FakeTensorMode (no memory, any model size), the hooks that name the module whose forward runs, who
owns each parameter, the gradient and optimizer-state tags, the warm-up-then-measure sequence (the measured step is
a steady-state one: the optimizer states already exist), and the per-phase peaks the result is built from.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from vramplan.allocator.caching import TracedEvent
from vramplan.measure.livebytes import CATEGORIES, GRADIENTS, OPTIMIZER_STATES, LiveBytesTracker, Snapshot
from vramplan.result import PHASES, ModulePeak

# `step`: a whole training step first (what a GPU probe does); `optimizer`: every trainable parameter gets a zero
# gradient and the optimizer steps once, which creates the same states at a third of the cost.
Warmup = Literal["step", "optimizer"]
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


class PhaseBytes(BaseModel):
    """Live bytes at one phase's peak, split by category."""

    phase: str
    peak_bytes: int
    categories: dict[str, int]


class StepTrace(BaseModel):
    """Live-bytes peaks of one steady-state training step."""

    peak_allocated_bytes: int
    peak_phase: str
    categories: dict[str, int]
    phases: list[PhaseBytes]
    by_module: list[ModulePeak]
    idle_bytes: int
    total_params: int
    trainable_params: int
    # The step's allocations and frees in order: what `trace` replays through the caching allocator.
    allocation_events: list[TracedEvent] = Field(default_factory=list, repr=False)

    @classmethod
    def from_tracker(cls, tracker: LiveBytesTracker, *, total_params: int, trainable_params: int, **extra: Any):
        """The measured step's peak, its phases and modules, once `measure_steady_step` has run."""
        return cls(
            allocation_events=tracker.events,
            peak_allocated_bytes=tracker.peak_bytes,
            peak_phase=tracker.peak_phase,
            categories=tracker.peak.by_category(),
            phases=step_phases(tracker),
            by_module=by_module(tracker.peak),
            idle_bytes=tracker.live_bytes,
            total_params=total_params,
            trainable_params=trainable_params,
            **extra,
        )


def fake_mode():
    """FakeTensorMode that also accepts real tensors (bitsandbytes' and torchao's lookup tables are built real)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def module_name(name: str) -> str:
    """peft's wrapper prefix removed, so names read as in the user's model."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name or "(model)"


def parameter_owners(model) -> dict[int, str]:
    """id(parameter or buffer) -> the name of the module that holds it."""
    owners = {}
    for name, module in model.named_modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            owners[id(tensor)] = module_name(name)
    return owners


@contextlib.contextmanager
def attribute_modules(model, tracker: LiveBytesTracker):
    """Keep `tracker.module` on the innermost module whose forward runs (recomputation included)."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    names = {id(module): module_name(name) for name, module in model.named_modules()}
    stack: list[str] = []

    def enter(module, args):
        name = names.get(id(module))
        if name is not None:
            stack.append(name)
            tracker.module = name
            tracker.recomputing = tracker.phase == "backward"

    def leave(module, args, output):
        if names.get(id(module)) is not None and stack:
            stack.pop()
            tracker.module = stack[-1] if stack else "(no module)"
            tracker.recomputing = bool(stack) and tracker.phase == "backward"

    # always_call: checkpointing stops a recomputation early by raising inside the layer's forward.
    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def tag_gradients(params, tracker: LiveBytesTracker, owners: dict[int, str]) -> list:
    """Hooks that file each parameter's accumulated gradient under GRADIENTS (remove them with `removing`)."""
    return [
        param.register_post_accumulate_grad_hook(
            lambda p: tracker.tag(p.grad, GRADIENTS, owners.get(id(p), "(model)"))
        )
        for param in params
    ]


def tag_optimizer_states(optimizer, tracker: LiveBytesTracker, owners: dict[int, str],
                         unwrap: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor) -> None:
    """File every tensor the optimizer holds under OPTIMIZER_STATES; `unwrap` gives a DTensor's local shard."""
    for param, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.tag(unwrap(value), OPTIMIZER_STATES, owners.get(id(param), "(optimizer)"))


def create_optimizer_states(params, optimizers: Iterable) -> None:
    """The `optimizer` warm-up: a zero gradient for every trainable parameter, then each optimizer steps once."""
    for param in params:
        param.grad = torch.zeros_like(param)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def run_phases(tracker: LiveBytesTracker, forward: Callable[[], Any], optimizer) -> None:
    """One training step as the tracker files it: `forward` (returns the loss; its own tensors freed when it
    returns), backward, the optimizer step and zero_grad(set_to_none=True), then idle."""
    tracker.set_phase("forward")
    loss = forward()
    tracker.set_phase("backward")
    with gpu_gradient_accumulation(tracker, loss):
        loss.backward()
    del loss
    tracker.set_phase("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker.set_phase("idle")


def measure_optimizer_step(tracker: LiveBytesTracker, params: list, owners: dict, optimizer,
                           forward: Callable[[], Any]) -> None:
    """A steady-state step: a warm-up that creates and tags the optimizer's states, then one measured step whose
    `forward` returns the loss (run_phases)."""
    def warm_up() -> None:
        create_optimizer_states(params, [optimizer])
        tag_optimizer_states(optimizer, tracker, owners)

    measure_steady_step(tracker, warm_up, lambda: run_phases(tracker, forward, optimizer))


def model_step_trace(tracker: LiveBytesTracker, model, params: list) -> StepTrace:
    """The measured step's StepTrace, with `model`'s logical parameter count and `params`' trainable one."""
    return StepTrace.from_tracker(tracker, total_params=sum(logical_numel(p) for p in model.parameters()),
                                  trainable_params=sum(p.numel() for p in params))


@contextlib.contextmanager
def gpu_gradient_accumulation(tracker: LiveBytesTracker, loss: torch.Tensor):
    """Backward of `loss` with the tracker told when the engine runs between nodes (each node's post-hook to the
    next one's pre-hook), where it sums the gradients two paths send to one tensor: livebytes.accumulates_in_place
    makes that sum in place, as a GPU does."""
    nodes = _graph_nodes(loss.grad_fn)

    def between(*args) -> None:
        tracker.accumulating = True

    def inside(*args) -> None:
        tracker.accumulating = False

    handles = [hook for node in nodes for hook in (node.register_prehook(inside), node.register_hook(between))]
    try:
        yield
    finally:
        tracker.accumulating = False
        for handle in handles:
            handle.remove()


def _graph_nodes(root) -> list:
    """Every autograd node `root` reaches."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(child for child, _ in node.next_functions)
    return list(seen.values())


def measure_steady_step(tracker: LiveBytesTracker, warm_up: Callable[[], None], step: Callable[[], None]) -> None:
    """Run `warm_up` (it creates and tags the optimizer states), start the peak over at idle, run `step`."""
    tracker.set_phase("warmup")
    warm_up()
    tracker.set_phase("idle")
    tracker.reset_peak()
    step()
    tracker.finish()


def step_phases(tracker: LiveBytesTracker,
                categorise: Callable[[Snapshot], dict[str, int]] = Snapshot.by_category) -> list[PhaseBytes]:
    """Each measured phase's peak and its categories (the warm-up and idle phases are not the step's)."""
    return [
        PhaseBytes(phase=phase, peak_bytes=tracker.phase_peaks[phase], categories=categorise(snapshot))
        for phase, snapshot in tracker.phase_snapshots.items()
        if phase in PHASES
    ]


def by_module(snapshot: Snapshot) -> list[ModulePeak]:
    """The peak's bytes by module, each layer's copy of a module folded into one `layers.*` row."""
    grouped: dict[str, dict[str, int]] = {}
    members: dict[str, set[str]] = {}
    for (module, category), nbytes in snapshot.by_owner.items():
        pattern = _LAYER_INDEX.sub(".*", module)
        row = grouped.setdefault(pattern, dict.fromkeys(CATEGORIES, 0))
        row[category] += nbytes
        members.setdefault(pattern, set()).add(module)
    rows = [
        ModulePeak(module=name, count=len(members[name]), bytes=sum(row.values()), categories=row)
        for name, row in grouped.items()
    ]
    return sorted(rows, key=lambda row: row.bytes, reverse=True)


def quant_state_tensors(model):
    """(module name, tensors) of each 4-bit weight's QuantState: absmax, code, offset and the nested state2."""
    for name, module in model.named_modules():
        quant_state = getattr(module._parameters.get("weight"), "quant_state", None)  # the owner, not peft's wrapper
        if quant_state is None:
            continue
        tensors = [quant_state.absmax, quant_state.code, getattr(quant_state, "offset", None)]
        nested = getattr(quant_state, "state2", None)
        if nested is not None:
            tensors += [nested.absmax, nested.code]
        yield module_name(name), [tensor for tensor in tensors if isinstance(tensor, torch.Tensor)]


def logical_numel(param: torch.Tensor) -> int:
    """Elements a parameter stands for: a packed 4-bit weight stands for its QuantState's full shape."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None:
        return int(torch.Size(quant_state.shape).numel())
    return param.numel()


@contextlib.contextmanager
def removing(hooks: list):
    """Remove the hooks (gradient tags, optimizer-in-backward steps) once the step is over, however it ends."""
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def patched(owner, name: str, wrap):
    """`owner.name = wrap(owner.name)` for the block; an inherited attribute falls back to the base class after."""
    own = name in vars(owner)
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
