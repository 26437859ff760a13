"""`vramplan probe`: a few real training steps on the local GPU (or the CPU), with their measured peaks.

On CUDA it records what only a GPU can tell: `torch.cuda.max_memory_allocated` and `max_memory_reserved`, the
NVML peak (sampled in a thread), the CUDA context measured before the model loads, the phase of the peak, step
time and tokens/s. On the CPU the same code counts live tensor bytes instead (small configs), so CI covers it.
An out-of-memory error is a result, recorded with the estimate that predicted it or not.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel

from vramplan.estimate import estimate_memory
from vramplan.measure.build import AUTOCAST_DTYPE, build_real_model, make_optimizer
from vramplan.models.catalog import ResolvedModel
from vramplan.training import TrainingSetup

NVML_SAMPLE_SECONDS = 0.005


class ProbeRecord(BaseModel):
    """One probe, one JSON line (the keys `vramplan validate --measurements` reads are documented there)."""

    id: str
    model: str
    method: str
    options: dict[str, Any]
    status: str  # ok | oom
    device: str
    gpu: str
    max_memory_allocated: int | None
    max_memory_reserved: int | None
    nvml_peak_used: int | None
    cuda_context_bytes: int | None
    peak_phase: str | None
    phase_peaks: dict[str, int]
    step_seconds: float | None
    tokens_per_second: float | None
    estimate: dict[str, Any]
    setup: dict[str, Any]
    versions: dict[str, str]
    measured_at: str
    error: str = ""
    # With a snapshot: the allocator's recorded history (torch.cuda.memory._record_memory_history) replayed through
    # vramplan/allocator/caching.py (vramplan/allocator/snapshot.py), and the file it was saved to.
    snapshot_file: str | None = None
    replayed_peak_reserved: int | None = None
    recorded_peak_reserved: int | None = None
    segments_match: bool | None = None


def append_jsonl(path: Path, record: BaseModel) -> None:
    """Append one line with a single O_APPEND write and fsync: a crash can cut only this line, never earlier ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (record.model_dump_json() + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(descriptor).st_size and _last_byte(path) != b"\n":
            line = b"\n" + line  # an earlier crash left a cut line: start ours on a fresh one
        write_all(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_all(descriptor: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take only part, e.g. near a full disk or on a signal);
    a write that takes nothing raises rather than loop for ever."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:
            raise OSError(f"os.write wrote nothing; {len(view)} of {len(data)} bytes left unwritten")
        view = view[written:]


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "vramplan"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    if torch.cuda.is_available():
        versions["cuda_runtime"] = str(torch.version.cuda)
    return versions


class NvmlPeak:
    """Samples NVML's used memory of one GPU in a thread; `peak` is the largest reading."""

    def __init__(self, cuda_index: int):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        # CUDA and NVML number GPUs differently under CUDA_VISIBLE_DEVICES; the UUID names the same device.
        uuid = getattr(torch.cuda.get_device_properties(cuda_index), "uuid", None)
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else None
        except pynvml.NVMLError:
            self._handle = None
        if self._handle is None:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
        self.peak = self.used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used

    def _run(self) -> None:
        while not self._stop.wait(NVML_SAMPLE_SECONDS):
            self.peak = max(self.peak, self.used())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def _step(model, optimizer, input_ids, setup: TrainingSetup, on_phase) -> None:
    from accelerate.utils import convert_to_fp32

    autocast = (torch.autocast(input_ids.device.type, dtype=AUTOCAST_DTYPE[setup.precision])
                if setup.autocast else contextlib.nullcontext())
    with autocast:
        outputs = model(input_ids=input_ids, labels=input_ids)
    if setup.autocast:
        outputs = convert_to_fp32(outputs)
    loss = outputs.loss
    del outputs
    on_phase("forward")
    loss.backward()
    del loss
    on_phase("backward")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    on_phase("optimizer")


def probe_fields(resolved: ResolvedModel, setup: TrainingSetup, *, device: str, options: dict[str, Any] | None = None,
                 probe_id: str | None = None) -> dict[str, Any]:
    """The fields of a ProbeRecord known before the probe runs: what was asked, the estimate, the versions."""
    predicted = estimate_memory(resolved, setup)
    objective = "" if setup.objective == "sft" else f"{setup.objective}-"
    return dict(
        id=probe_id or f"{resolved.name}-{objective}{setup.method.value}-b{setup.batch_size}-s{setup.seq_len}",
        model=resolved.requested, method=setup.method.value, options=options or {}, device=device,
        estimate=dict(peak_allocated_bytes=predicted.peak_allocated_bytes,
                      peak_reserved_bytes=predicted.peak_reserved_bytes, device_bytes=predicted.device_bytes,
                      peak_phase=predicted.peak_phase),
        setup=setup.model_dump(mode="json"), versions=_versions(),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def run_probe(resolved: ResolvedModel, setup: TrainingSetup, *, steps: int = 3, device: str = "auto",
              options: dict[str, Any] | None = None, probe_id: str | None = None,
              progress: Callable[[str], None] = lambda _: None, snapshot: Path | None = None) -> ProbeRecord:
    """Warm-up step, then `steps` measured steps; the peaks are the maximum over the measured steps.

    `device="auto"` means the GPU: without CUDA it raises CannotCheckError rather than running a long CPU step;
    the CPU runs only when asked for (`device="cpu"`), and only for a run whose estimated peak fits in a share of
    the host's free memory. `progress` is told each stage (build, warm-up, each step).
    """
    from vramplan.errors import CannotCheckError

    if device in ("auto", "cuda") and not torch.cuda.is_available():
        raise CannotCheckError("probe measures a real GPU and this torch sees no CUDA device (--device cpu runs "
                               "the step on the CPU instead, for small configs)")
    if setup.objective != "sft":
        from vramplan.errors import NotModelledError

        raise NotModelledError(f"--objective {setup.objective}: run_probe runs a plain training step; TRL's trainer "
                               "runs in vramplan.measure.probe_trl.run_trl_probe (scripts/gpu_probe_matrix.py)")
    if device == "auto":
        device = "cuda"
    base = probe_fields(resolved, setup, device=device, options=options, probe_id=probe_id)
    from vramplan.measure.hf_step import quiet_libraries

    if device == "cpu":
        refuse_large_cpu_probe(base["estimate"]["peak_allocated_bytes"])
        progress("cpu: building the model and running one real training step (warm-up included)")
        return _cpu_probe(resolved, setup, base)
    with quiet_libraries():
        if snapshot is None:
            return _cuda_probe(resolved, setup, steps, base, progress)
        return _with_snapshot(snapshot, setup, lambda: _cuda_probe(resolved, setup, steps, base, progress))


# Entries the allocator keeps of its history while recording (torch.cuda.memory._record_memory_history).
SNAPSHOT_MAX_ENTRIES = 2_000_000


def _with_snapshot(path: Path, setup: TrainingSetup, probe: Callable[[], ProbeRecord]) -> ProbeRecord:
    """Record the allocator's history from an empty cache through the probe, save the snapshot (a pickle, as
    torch's memory_viz reads it) and replay its requests through the simulation."""
    import pickle

    from vramplan.allocator.snapshot import compare_snapshot

    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_MAX_ENTRIES, stacks="python")
    try:
        record = probe()
        recorded = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(recorded))
    compared = compare_snapshot(recorded, setup.allocator, torch.cuda.current_device())
    return record.model_copy(update={
        "snapshot_file": str(path), "replayed_peak_reserved": compared.replayed_peak_reserved_bytes,
        "recorded_peak_reserved": compared.recorded_peak_reserved_bytes, "segments_match": compared.segments_match})


# Share of the host's available memory a CPU probe may take (its real tensors live in RAM; the rest is headroom for
# Python, the libraries and the allocator).
CPU_PROBE_MEMORY_SHARE = 0.5


def host_available_bytes() -> int:
    """Memory the host can give a new process: MemAvailable (free plus reclaimable page cache, /proc/meminfo) where
    Linux reports it, else the free pages alone."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def refuse_large_cpu_probe(peak_bytes: int, available_bytes: int | None = None) -> None:
    """A CPU probe runs real tensors in RAM: refuse one whose estimated peak would not fit in a share of it."""
    from vramplan.errors import UsageError

    if available_bytes is None:
        available_bytes = host_available_bytes()
    if peak_bytes > available_bytes * CPU_PROBE_MEMORY_SHARE:
        raise UsageError(f"--device cpu: this run's estimated peak ({peak_bytes / 2**30:.1f} GiB) is over "
                         f"{CPU_PROBE_MEMORY_SHARE:.0%} of the host's available memory "
                         f"({available_bytes / 2**30:.1f} GiB); probe a smaller config on CPU, or this one on a GPU")


def _cpu_probe(resolved: ResolvedModel, setup: TrainingSetup, base: dict) -> ProbeRecord:
    from vramplan.measure.hf_step import trace_training_step

    started = time.perf_counter()
    trace = trace_training_step(resolved.config, setup, fake=False, warmup="step")
    seconds = time.perf_counter() - started
    return ProbeRecord(**base, status="ok", gpu="cpu", max_memory_allocated=trace.peak_allocated_bytes,
                       max_memory_reserved=None, nvml_peak_used=None, cuda_context_bytes=None,
                       peak_phase=trace.peak_phase, phase_peaks={p.phase: p.peak_bytes for p in trace.phases},
                       step_seconds=seconds, tokens_per_second=setup.tokens_per_step / seconds)


def _cuda_probe(resolved: ResolvedModel, setup: TrainingSetup, steps: int, base: dict,
                progress: Callable[[str], None]) -> ProbeRecord:
    from vramplan.allocator.caching import AllocatorConfig
    from vramplan.allocator.config import describe

    if setup.allocator != AllocatorConfig():  # --alloc-conf: the real allocator runs with the settings modelled
        torch.cuda.memory._set_allocator_settings(describe(setup.allocator))
    index = torch.cuda.current_device()
    gpu = torch.cuda.get_device_name(index)
    nvml = NvmlPeak(index)
    before = nvml.used()
    torch.ones(1, device="cuda")  # creates the CUDA context
    torch.cuda.synchronize()
    context = nvml.used() - before - torch.cuda.memory_reserved()
    phase_peaks: dict[str, int] = {}
    reserved: list[int] = [0]

    def on_phase(phase: str) -> None:
        torch.cuda.synchronize()
        phase_peaks[phase] = max(phase_peaks.get(phase, 0), torch.cuda.max_memory_allocated())
        reserved[0] = max(reserved[0], torch.cuda.max_memory_reserved())
        torch.cuda.reset_peak_memory_stats()

    model = optimizer = None
    try:
        progress(f"{gpu}: building {resolved.name} with random weights")
        model = build_real_model(resolved.config, setup, device="cuda")
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], setup.optimizer)
        input_ids = torch.randint(0, int(resolved.config["vocab_size"]), (setup.batch_size, setup.seq_len),
                                  device="cuda")
        progress("warm-up step")
        _step(model, optimizer, input_ids, setup, lambda phase: None)  # warm-up: optimizer states now exist
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with nvml:
            started = time.perf_counter()
            for step in range(steps):
                progress(f"measured step {step + 1}/{steps}")
                _step(model, optimizer, input_ids, setup, on_phase)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / steps
        peak_phase = max(phase_peaks, key=phase_peaks.get)
        return ProbeRecord(**base, status="ok", gpu=gpu, max_memory_allocated=phase_peaks[peak_phase],
                           max_memory_reserved=reserved[0], nvml_peak_used=nvml.peak, cuda_context_bytes=context,
                           peak_phase=peak_phase, phase_peaks=phase_peaks, step_seconds=seconds,
                           tokens_per_second=setup.tokens_per_step / seconds)
    except torch.cuda.OutOfMemoryError as err:
        return ProbeRecord(**base, status="oom", gpu=gpu, max_memory_allocated=torch.cuda.max_memory_allocated(),
                           max_memory_reserved=torch.cuda.max_memory_reserved(), nvml_peak_used=None,
                           cuda_context_bytes=context, peak_phase=None, phase_peaks=phase_peaks, step_seconds=None,
                           tokens_per_second=None, error=str(err).splitlines()[0])
    finally:
        del model, optimizer
        torch.cuda.empty_cache()


def measurement_file(folder: Path, gpu: str, when: datetime | None = None) -> Path:
    """validation/measurements/<gpu>-<date>.jsonl, the GPU name as a file-safe slug."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    day = (when or datetime.now(timezone.utc)).date().isoformat()
    return folder / f"{slug}-{day}.jsonl"

