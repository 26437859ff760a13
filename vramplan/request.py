"""A run as asked for (model, method, RunOptions) and its estimate: the one path every command and the API take.

`estimate_request` is what `vramplan estimate` answers; suggestions, fit and plan call it for each variant of a run,
so the figure a suggestion promises is the figure its command prints.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vramplan.estimate import estimate_memory
from vramplan.estimate.assumptions import describe_assumptions
from vramplan.models.catalog import ResolvedModel, resolve_model
from vramplan.options import RunOptions
from vramplan.result import Estimate
from vramplan.training import Strategy, TrainingSetup, resolve_setup

DEFAULT_METHOD = "lora"


class RunRequest(BaseModel):
    """A run as the user asked for it: the model, the method and the options given (unset ones absent)."""

    model_config = ConfigDict(frozen=True)

    model: str
    method: str = DEFAULT_METHOD
    options: RunOptions = Field(default_factory=RunOptions)
    notes: tuple[str, ...] = ()  # assumption lines the answer states (what --from read on the user's behalf)

    @classmethod
    def of(cls, model: str, method: str = DEFAULT_METHOD, notes=(), **options: Any) -> RunRequest:
        return cls(model=model, method=method, options=RunOptions.of(**options), notes=tuple(notes))

    def changed(self, changes: dict[str, Any]) -> RunRequest:
        """This run with some options (and "method") changed."""
        options = {k: v for k, v in changes.items() if k != "method"}
        return self.model_copy(update={"method": changes.get("method", self.method),
                                       "options": self.options.replace(**options)})


def resolve_request(request: RunRequest) -> tuple[ResolvedModel, TrainingSetup, list[str]]:
    """(ResolvedModel, TrainingSetup, notes): the model, the setup with every default filled, and what vramplan
    chose on the user's behalf (LoRA targets on an MoE model when none were given)."""
    from vramplan.estimate.lora_targets import default_lora_targets

    resolved = resolve_model(request.model)
    options = request.options
    notes = []
    if request.method != "full" and options.lora_targets is None:
        targets = default_lora_targets(resolved.spec)
        if targets is not None:
            options = options.replace(lora_targets=targets)
            notes.append(f"LoRA targets not given: the attention projections ({targets}); peft's all-linear on "
                         f"{resolved.spec.family} also adapts the 3D experts, which is not modelled")
    return resolved, resolve_setup(request.method, options), notes


def estimate_request(request: RunRequest) -> Estimate:
    """The estimate of a run, with its assumptions."""
    resolved, setup, chosen = resolve_request(request)
    result = estimate_memory(resolved, setup)
    assumptions = describe_assumptions(resolved, setup, [*request.notes, *chosen, *result.strategy_notes])
    if setup.world_size > 1 and setup.strategy is not Strategy.DEVICE_MAP:
        assumptions.append(_scaling(resolved, setup, result))
    return result.model_copy(update={"assumptions": assumptions})


def _scaling(resolved: ResolvedModel, setup: TrainingSetup, spread: Estimate) -> str:
    """What the GPUs change per GPU against the same run on one GPU (vramplan/estimate/scaling.py)."""
    from vramplan.estimate.scaling import scaling_line
    from vramplan.training import Offload

    single_setup = setup.model_copy(update={"gpus": 1, "nodes": 1, "strategy": Strategy.SINGLE,
                                            "offload": Offload.NONE})
    return scaling_line(estimate_memory(resolved, single_setup), spread)


def trace_request(request: RunRequest):
    """The traced step of a run (needs the probe extra): what `trace` and `check --exact` measure."""
    from vramplan.measure.trace import trace_memory

    resolved, setup, _ = resolve_request(request)
    return trace_memory(resolved, setup)
