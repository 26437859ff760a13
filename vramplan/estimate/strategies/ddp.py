"""DistributedDataParallel: a full replica per GPU, plus the reducer's gradient buckets and NCCL."""

from __future__ import annotations

from vramplan.estimate.dtypes import tensor_bytes
from vramplan.estimate.nccl import nccl_bytes
from vramplan.estimate.strategies.states import RankStates
from vramplan.training import TrainingSetup

# torch/nn/parallel/distributed.py DistributedDataParallel: bucket_cap_mb=25 (accelerate and HF Trainer keep the
# default, and gradient_as_bucket_view=False), so the reducer's buckets hold a second copy of every gradient
# (torch/csrc/distributed/c10d/reducer.cpp Reducer::initialize_buckets: `bucket.gradients = at::empty(...)`).
DDP_BUCKET_BYTES = 25 * 1024**2


def ddp_bucket_bytes(gradient_bytes: int) -> int:
    """The reducer's buckets: full 25 MB buckets plus one for the remainder, each its own tensor. Computed, not
    looped, so the cost does not grow with the model."""
    full, rest = divmod(gradient_bytes, DDP_BUCKET_BYTES)
    return full * tensor_bytes(DDP_BUCKET_BYTES) + (tensor_bytes(rest) if rest else 0)


def ddp_states(single: RankStates, setup: TrainingSetup) -> RankStates:
    """One replica's states: one GPU's, with the buckets alive through the step."""
    return single.model_copy(update={
        "comm_buffers": ddp_bucket_bytes(single.gradients_at_step),
        "nccl_bytes": nccl_bytes(setup),
        "notes": ["ddp: a full replica per GPU; the reducer's 25 MB buckets hold a second copy of the gradients "
                  "(gradient_as_bucket_view=False, the accelerate/Trainer default)"],
    })
