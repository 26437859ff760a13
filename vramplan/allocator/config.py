"""The allocator settings of a run: PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF, parsed as torch parses them.

c10/core/AllocatorConfig.cpp (`AllocatorConfig::instance`, torch 2.9 and later) reads PYTORCH_ALLOC_CONF, else the
older PYTORCH_CUDA_ALLOC_CONF (the only one before 2.9); `parseArgs` takes comma-separated `key:value` pairs. The keys that change device memory are
modelled (vramplan/allocator/caching.py); host-side keys are accepted and change nothing here; the rest are refused.
"""

from __future__ import annotations

import os

from vramplan.allocator.caching import AllocatorConfig
from vramplan.errors import NotModelledError, UsageError

ENVIRONMENT_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # AllocatorConfig::instance, in order
MIB = 1024**2
# Keys that act on pinned host memory or locking only (c10/core/AllocatorConfig.cpp parseArgs): no device bytes.
HOST_ONLY_KEYS = frozenset({
    "pinned_use_cuda_host_register", "pinned_num_register_threads", "pinned_use_background_threads",
    "pinned_reserve_segment_size_mb", "release_lock_on_cudamalloc", "graph_capture_record_stream_reuse",
})
_TRUE = {"true": True, "false": False}


def alloc_conf_from_environment(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of the allocator setting the job would inherit, as torch reads it; None when unset."""
    environ = os.environ if environ is None else environ
    for name in ENVIRONMENT_VARIABLES:
        value = environ.get(name)
        if value:
            return name, value
    return None


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """The AllocatorConfig of a PYTORCH_ALLOC_CONF string; a one-line UsageError naming a malformed or unknown key,
    NotModelledError for a setting that changes memory in a way the replay does not model."""
    if not text or not text.strip():
        return AllocatorConfig()
    values: dict = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UsageError(f"--alloc-conf {text!r}: {item!r} is not key:value")
        values.update(_setting(key, value, text))
    return AllocatorConfig(**values)


def _setting(key: str, value: str, text: str) -> dict:
    where = f"--alloc-conf {text!r}"
    if key == "expandable_segments":
        if value not in ("True", "False"):  # parseExpandableSegments: exactly "True" or "False"
            raise UsageError(f"{where}: expandable_segments takes True or False")
        return {"expandable_segments": value == "True"}
    if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
        megabytes = _integer(value, where, key)
        if megabytes < 20:  # c10/core/AllocatorConfig.cpp parseMaxSplitSize: at least kLargeBuffer (20 MiB)
            raise UsageError(f"{where}: {key} must be at least 20")
        target = "max_split_size" if key == "max_split_size_mb" else "max_non_split_rounding"
        return {target: megabytes * MIB}
    if key == "roundup_power2_divisions":
        if value.startswith("["):
            raise NotModelledError(f"{where}: per-size roundup_power2_divisions lists are not modelled; give one "
                                   "number")
        divisions = _integer(value, where, key)
        if divisions < 1 or divisions & (divisions - 1):
            raise UsageError(f"{where}: roundup_power2_divisions must be a power of 2")
        return {"roundup_power2_divisions": divisions}
    if key == "garbage_collection_threshold":
        threshold = _number(value, where, key)
        if not 0 < threshold < 1:
            raise UsageError(f"{where}: garbage_collection_threshold must be between 0 and 1")
        return {"garbage_collection_threshold": threshold}
    if key == "per_process_memory_fraction":
        fraction = _number(value, where, key)
        if not 0 < fraction <= 1:
            raise UsageError(f"{where}: per_process_memory_fraction must be in (0, 1]")
        return {"per_process_memory_fraction": fraction}
    if key == "backend":
        if value == "cudaMallocAsync":
            raise NotModelledError(f"{where}: backend cudaMallocAsync is not modelled; only the native caching "
                                   "allocator is")
        if value != "native":
            raise UsageError(f"{where}: backend is native or cudaMallocAsync")
        return {}
    if key in HOST_ONLY_KEYS:
        return {}
    raise UsageError(f"{where}: unknown key {key!r} (the keys are expandable_segments, max_split_size_mb, "
                     "max_non_split_rounding_mb, roundup_power2_divisions, garbage_collection_threshold, "
                     "per_process_memory_fraction, backend)")


def _integer(value: str, where: str, key: str) -> int:
    if not value.isdigit():
        raise UsageError(f"{where}: {key} takes a whole number, not {value!r}")
    return int(value)


def _number(value: str, where: str, key: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{where}: {key} takes a number, not {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")) or number < 0:
        raise UsageError(f"{where}: {key} takes a positive number, not {value!r}")
    return number


def describe(config: AllocatorConfig) -> str:
    """The settings as a PYTORCH_ALLOC_CONF string ('torch defaults' when none is set)."""
    parts = []
    if config.expandable_segments:
        parts.append("expandable_segments:True")
    if config.max_split_size is not None:
        parts.append(f"max_split_size_mb:{config.max_split_size // MIB}")
    if config.max_non_split_rounding != AllocatorConfig().max_non_split_rounding:
        parts.append(f"max_non_split_rounding_mb:{config.max_non_split_rounding // MIB}")
    if config.roundup_power2_divisions > 1:
        parts.append(f"roundup_power2_divisions:{config.roundup_power2_divisions}")
    if config.garbage_collection_threshold:
        parts.append(f"garbage_collection_threshold:{config.garbage_collection_threshold:g}")
    if config.per_process_memory_fraction is not None:
        parts.append(f"per_process_memory_fraction:{config.per_process_memory_fraction:g}")
    return ",".join(parts) or "torch defaults"
