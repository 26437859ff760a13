"""The results estimate and trace share: PhasePeak, StepPeak, Estimate, Trace, and their component names.

The estimate splits a peak into memory terms (weights, gradients, logits...); the trace splits it by what the
allocator saw each tensor as (parameters, gradients, activations, temporaries...). COMPARED_GROUPS maps both onto
the groups that can be compared one to one, so a test can hold each group of the estimate to the trace's, not only
the total (two wrong terms can no longer cancel).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, PrivateAttr

from vramplan.allocator.caching import ReplayResult, TracedEvent
from vramplan.models.catalog import ResolvedModel
from vramplan.training import TrainingSetup

PHASES = ("generation", "forward", "backward", "optimizer")  # generation: GRPO's, before its step

# The estimate's components (vramplan/estimate/README.md says where each is computed).
WEIGHTS = "weights"
LORA_ADAPTERS = "lora_adapters"
GRADIENTS = "gradients"
OPTIMIZER_STATES = "optimizer_states"
OPTIMIZER_TEMPORARIES = "optimizer_temporaries"
ACTIVATIONS = "activations"
LOGITS_LOSS = "logits_loss"
AUTOCAST_WEIGHT_COPIES = "autocast_weight_copies"
IN_FLIGHT = "in_flight"
GRADIENT_PARTITION = "gradient_partition"
TEMPORARIES = "temporaries"  # also the estimate's: torchtune's backward (vramplan/estimate/compose/torchtune.py)
ESTIMATE_COMPONENTS = (WEIGHTS, LORA_ADAPTERS, GRADIENTS, OPTIMIZER_STATES, OPTIMIZER_TEMPORARIES, ACTIVATIONS,
                       LOGITS_LOSS, AUTOCAST_WEIGHT_COPIES, IN_FLIGHT, GRADIENT_PARTITION, TEMPORARIES)

# The trace's categories (vramplan/measure/livebytes.py and fsdp/tracker.py name them).
PARAMETERS = "parameters"
SHARDED_PARAMETERS = "sharded_parameters"
REPLICATED_TENSORS = "replicated_tensors"
UNSHARDED_PARAMETERS = "unsharded_parameters"
ALL_GATHER_BUFFERS = "all_gather_buffers"
UNSHARDED_GRADIENTS = "unsharded_gradients"
REDUCE_SCATTER_BUFFERS = "reduce_scatter_buffers"

# Groups compared one to one: (estimate components, trace categories). Parameters are whatever stays resident
# (weights, adapters, FSDP shards and replicated buffers); the optimizer's states are compared alone; everything a
# step makes and frees (activations, logits, gradients, temporaries, gathered parameters) is "the step", since the
# trace cannot tell a saved activation from a temporary in the same way the estimate splits them.
COMPARED_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "resident parameters": ((WEIGHTS, LORA_ADAPTERS), (PARAMETERS, SHARDED_PARAMETERS, REPLICATED_TENSORS)),
    "optimizer states": ((OPTIMIZER_STATES,), (OPTIMIZER_STATES,)),
    "the step (activations, gradients, logits, temporaries, in flight)": (
        (GRADIENTS, OPTIMIZER_TEMPORARIES, ACTIVATIONS, LOGITS_LOSS, AUTOCAST_WEIGHT_COPIES, IN_FLIGHT,
         GRADIENT_PARTITION, TEMPORARIES),
        (GRADIENTS, ACTIVATIONS, TEMPORARIES, UNSHARDED_PARAMETERS, ALL_GATHER_BUFFERS, UNSHARDED_GRADIENTS,
         REDUCE_SCATTER_BUFFERS),
    ),
}


class PhasePeak(BaseModel):
    """Live bytes at one phase's peak, split into components."""

    phase: str
    components: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())


class StepPeak(BaseModel):
    """What both an estimate and a trace report for one training step: the peak, its phase, and its parts."""

    model: ResolvedModel
    setup: TrainingSetup
    total_params: int
    trainable_params: int
    peak_phase: str
    components: dict[str, int]
    phases: list[PhasePeak]
    peak_allocated_bytes: int


class ColocatedEngine(BaseModel):
    """A generation engine sharing the training GPU (GRPO's vLLM in colocate mode): it takes its
    gpu_memory_utilization share of the GPU's total memory, so what a GPU needs depends on the GPU."""

    engine: str
    gpu_memory_utilization: float
    sleeps: bool  # vllm_enable_sleep_mode: level 2 between generations, its memory released while training
    floor_bytes: int  # the least its share must hold to start: weights, profiling peak, graphs, one sequence's KV
    floor_terms: dict[str, int]
    generation_bytes: int  # the training side's device bytes while it generates (state held, no step running)
    asleep_bytes: int = 0  # what it keeps while asleep (sleeps): its CUDA graphs and non-torch memory


class Estimate(StepPeak):
    """One GPU's memory for one training step; every figure in bytes."""

    peak_reserved_bytes: int
    device_bytes: int
    cuda_context_bytes: int
    paged_optimizer_bytes: int
    nccl_bytes: int = 0  # NCCL's device buffers, outside torch's allocator (in device_bytes)
    host_bytes: int = 0  # host RAM per GPU for offloaded states (multiply by GPUs per node for a machine)
    strategy_notes: list[str] = []
    assumptions: list[str]
    colocated: ColocatedEngine | None = None  # GRPO's colocated vLLM: see needed_on
    # GRPO's vLLM server on a GPU of its own: what that GPU needs (not this one's figure)
    generation_server: ColocatedEngine | None = None

    def needed_on(self, total_bytes: int) -> int:
        """What a GPU of `total_bytes` must hold for this job: device_bytes, plus a colocated engine's share of the
        GPU (vLLM requests ceil(utilization x total), vllm/v1/worker/utils.py request_memory). A share below the
        engine's floor cannot start it: more than the GPU."""
        engine = self.colocated
        if engine is None:
            return self.device_bytes
        share = math.ceil(engine.gpu_memory_utilization * total_bytes)
        if share < engine.floor_bytes:
            return total_bytes + engine.floor_bytes - share
        if engine.sleeps:  # asleep while the step runs; awake beside the held state while it generates
            return max(self.device_bytes + engine.asleep_bytes, engine.generation_bytes + share)
        return self.device_bytes + share


class ModulePeak(BaseModel):
    """Bytes one module holds at the peak (`layers.*` rows sum a module over every layer)."""

    module: str
    count: int
    bytes: int
    categories: dict[str, int]


class Trace(StepPeak):
    """Peak live tensor bytes of one steady-state training step, measured on the real model code."""

    by_module: list[ModulePeak]
    gpu_corrections: list[str]
    trace_seconds: float
    # The step's allocations and frees replayed through the CUDA caching allocator (vramplan/allocator/caching.py)
    # under the run's allocator settings: what max_memory_reserved would show.
    peak_reserved_bytes: int | None = None
    allocator_replay: ReplayResult | None = None
    # The ordered allocations and frees themselves (not written out): `check --exact` replays them at a capacity.
    _allocation_events: list = PrivateAttr(default_factory=list)

    def allocation_events(self) -> list[TracedEvent]:
        return self._allocation_events


def compared_groups(components: dict[str, int], *, traced: bool) -> dict[str, int]:
    """A peak's bytes per COMPARED_GROUPS group; a name in no group raises (a new term must be placed)."""
    side = 1 if traced else 0
    groups = {name: 0 for name in COMPARED_GROUPS}
    for component, nbytes in components.items():
        group = next((name for name, sides in COMPARED_GROUPS.items() if component in sides[side]), None)
        if group is None:
            raise KeyError(f"{component!r} is in no compared group (vramplan/result.py COMPARED_GROUPS)")
        groups[group] += nbytes
    return groups
