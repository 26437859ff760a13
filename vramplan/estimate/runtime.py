"""What the GPU adds beyond live tensors: the caching allocator's reserve, the CUDA context and NCCL's buffers."""

from __future__ import annotations

from vramplan.training import DEEPSPEED_STRATEGIES, Strategy, TrainingSetup

# MEMORY_FACTS.md "What the GPU adds": CUDA context 300-600 MB by GPU, driver and lazy loading (PyTorch issue
# 109888). Until probes measure it per GPU family (issue 5), the upper end is used, so device_bytes errs high.
CUDA_CONTEXT_BYTES = 600 * 1000**2
# c10/cuda/CUDACachingAllocator.cpp: kRoundLarge = 2 MiB (large segments are multiples of it);
# kSmallBuffer = 2 MiB (the segment small allocations are carved from).
LARGE_SEGMENT_ROUND_BYTES = 2 * 1024**2
SMALL_SEGMENT_BYTES = 2 * 1024**2
# NCCL's own device buffers, outside torch's allocator, per communicator a rank joins (MEMORY_FACTS.md: 0.5-1.6 GB
# per communicator, nccl issues 964 and 864). The upper end is used so device_bytes errs high, as the CUDA context.
NCCL_COMMUNICATOR_BYTES = 1600 * 1000**2


def reserved_bytes(peak_allocated: int) -> int:
    """Caching allocator reserve at the peak: allocated rounded up to whole 2 MiB segments plus one small-block
    pool. A lower bound: fragmentation slack is fitted from GPU probes in the pre-flight/probe issue."""
    rounded = -(-peak_allocated // LARGE_SEGMENT_ROUND_BYTES) * LARGE_SEGMENT_ROUND_BYTES
    return rounded + SMALL_SEGMENT_BYTES


def device_bytes(reserved: int, paged_bytes: int) -> int:
    """What nvidia-smi shows: reserved memory, the CUDA context, and managed (paged) optimizer state."""
    return reserved + CUDA_CONTEXT_BYTES + paged_bytes


def communicators(setup: TrainingSetup) -> int:
    """NCCL communicators a rank joins (torch creates each on a group's first collective): the default group;
    HSDP adds its shard and replicate groups (torch/distributed/device_mesh.py, one group per mesh dimension);
    DeepSpeed clones the world group for data parallelism (deepspeed/utils/groups.py _clone_world_group)."""
    if setup.world_size == 1 or setup.strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP):
        return 0
    if setup.strategy is Strategy.FSDP_HYBRID and setup.nodes > 1:
        return 3
    if setup.strategy in DEEPSPEED_STRATEGIES:
        return 2
    return 1


def nccl_bytes(setup: TrainingSetup) -> int:
    """NCCL's device buffers on one rank: every communicator it joins."""
    return communicators(setup) * NCCL_COMMUNICATOR_BYTES
