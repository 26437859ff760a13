"""NCCL's device buffers per rank: outside torch's allocator, counted in the device figure (runtime.device_bytes)."""

from __future__ import annotations

from vramplan.training import DEEPSPEED_STRATEGIES, Strategy, TrainingSetup

# NCCL's own device buffers, outside torch's allocator, per communicator a rank joins: nccl issue 864 measured
# 1.6 GB for one communicator; ring buffers are 12 MiB per channel and peer (src/init.cc computeBuffSizes,
# src/transport/p2p.cc), NVLS adds 256 MiB-1.5 GiB on NVSwitch systems by NCCL version (src/transport/nvls.cc).
# The upper end is used so device_bytes errs high, as the CUDA context.
NCCL_COMMUNICATOR_BYTES = 1600 * 1000**2


def communicators(setup: TrainingSetup) -> int:
    """NCCL communicators a rank joins (torch creates each on a group's first collective): the default group;
    HSDP adds its shard and replicate groups (torch/distributed/device_mesh.py, one group per mesh dimension);
    DeepSpeed clones the world group for data parallelism (deepspeed/utils/groups.py _clone_world_group)."""
    if setup.world_size == 1 or setup.strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP):
        return 0
    hybrid = setup.strategy is Strategy.FSDP_HYBRID or (
        setup.strategy is Strategy.FSDP1 and setup.fsdp1_sharding == "hybrid-shard")  # FSDP1: intra and inter groups
    if hybrid and setup.nodes > 1:
        return 3
    if setup.strategy in DEEPSPEED_STRATEGIES:
        return 2
    return 1


def nccl_bytes(setup: TrainingSetup) -> int:
    """NCCL's device buffers on one rank: every communicator it joins."""
    return communicators(setup) * NCCL_COMMUNICATOR_BYTES
