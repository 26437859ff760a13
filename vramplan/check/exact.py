"""`check --exact`: the verdict from the job's own traced allocation stream replayed through the caching allocator at
each GPU's capacity, instead of the closed-form reserve rule (vramplan/estimate/runtime.py).

What the GPU holds outside torch's allocator (CUDA context, NCCL buffers, managed paged optimizer state) and the
cuBLAS workspaces (allocated first, kept) come off the capacity; the replay then decides: the step runs, or
cudaMalloc fails even after the allocator frees its cache and retries (as malloc does before it raises OOM).
"""

from __future__ import annotations

from vramplan.allocator.caching import replay, steady_step_events
from vramplan.allocator.config import describe
from vramplan.check.preflight import GpuVerdict, Verdict
from vramplan.estimate.runtime import CUBLAS_WORKSPACE_BYTES
from vramplan.result import Estimate, Trace

EXACT_BASIS = "allocator replay of the traced step (check --exact)"


def outside_allocator_bytes(estimate: Estimate) -> int:
    """Device memory the replay does not allocate: context, NCCL, paged state, and the cuBLAS workspaces."""
    return (estimate.cuda_context_bytes + estimate.nccl_bytes + estimate.paged_optimizer_bytes
            + CUBLAS_WORKSPACE_BYTES)


def exact_verdict(verdict: Verdict, traced: Trace) -> Verdict:
    """`verdict` (the closed-form one) decided again by replaying `traced` at each GPU's usable memory."""
    events = traced.allocation_events()
    if not events:
        raise RuntimeError("the traced step recorded no allocations: nothing to replay")
    setup = traced.setup
    steady = steady_step_events(events)  # built once, replayed at every capacity below
    fixed = outside_allocator_bytes(verdict.estimate)
    # The trace already replayed its step uncapped under the run's settings (measure/trace.py _as_trace).
    unlimited = traced.allocator_replay if traced.allocator_replay is not None else replay(steady, setup.allocator)
    needed = unlimited.peak_reserved_bytes + fixed
    gpus, notes = [], list(verdict.notes)
    for gpu in verdict.gpus:
        capacity = gpu.usable_bytes - fixed
        fits = capacity > 0 and not replay(steady, setup.allocator, capacity).oom
        if fits and needed > gpu.usable_bytes:
            notes.append(f"{_where(gpu)}: fits only because the allocator frees its cache and retries cudaMalloc "
                         "when it runs short (slower steps); the uncapped replay reserves "
                         f"{unlimited.peak_reserved_bytes / 2**30:.2f} GiB")
        gpus.append(gpu.model_copy(update={"needed_bytes": needed, "margin_bytes": gpu.usable_bytes - needed,
                                           "fits": fits}))
    fits = all(g.fits for g in gpus) and verdict.fits_gpu_count
    if not fits and verdict.fits_gpu_count and not setup.allocator.expandable_segments:
        expandable = setup.allocator.model_copy(update={"expandable_segments": True})
        if all(not replay(steady, expandable, g.usable_bytes - fixed).oom for g in gpus):
            notes.append("with PYTORCH_ALLOC_CONF=expandable_segments:True the replayed step fits "
                         f"(--alloc-conf {describe(expandable)})")
    notes.append(f"verdict: {EXACT_BASIS}; trace allocated {traced.peak_allocated_bytes / 2**30:.2f} GiB, "
                 f"replay reserved {unlimited.peak_reserved_bytes / 2**30:.2f} GiB, plus {fixed / 2**30:.2f} GiB "
                 "outside the allocator (context, cuBLAS workspaces, NCCL, paged state)")
    return verdict.model_copy(update={"gpus": gpus, "fits": fits, "notes": notes, "basis": EXACT_BASIS,
                                      "suggestions": [] if fits else verdict.suggestions})


def _where(gpu: GpuVerdict) -> str:
    return f"GPU {gpu.index}" if gpu.index is not None else gpu.name
