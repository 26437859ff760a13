"""One rank's model states under each multi-GPU strategy: what is whole, what is sharded, what is in flight.

The single-GPU estimate composes its phase peaks from a RankStates; every strategy returns one, so activations,
logits and the step's moments are shared and only the model states and the communication buffers differ. This
module holds the states, one GPU's and DDP's; DeepSpeed ZeRO is in zero.py and FSDP2 in fsdp_states.py.
tests/estimate/test_parallel.py holds the rules against DeepSpeed's estimator, and validation/matrix.toml's fsdp
cases against FSDP2 traced on CPU with a fake process group.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.dtypes import tensor_bytes
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.weights import (
    layer_gradient_bytes,
    trainable_bytes_per_param,
    trainable_tensor_shapes,
    weight_memory,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import (
    DEEPSPEED_STRATEGIES,
    FSDP_STRATEGIES,
    Method,
    Strategy,
    TrainingSetup,
)

# The moments of a step at which in-flight (gathered, bucketed) bytes are added.
FORWARD_LOGITS = "forward: logits and loss"
FORWARD_LAYER = "forward: inside the last decoder layer"
LOSS_BACKWARD = "backward: loss and lm_head"
LAYER_BACKWARD = "backward: a decoder layer"
BACKWARD_END = "backward: the input embedding, after every layer"
OPTIMIZER_STEP = "optimizer step"
MOMENTS = (FORWARD_LOGITS, FORWARD_LAYER, LOSS_BACKWARD, LAYER_BACKWARD, BACKWARD_END, OPTIMIZER_STEP)

# torch/nn/parallel/distributed.py DistributedDataParallel: bucket_cap_mb=25 (accelerate and HF Trainer keep the
# default, and gradient_as_bucket_view=False), so the reducer's buckets hold a second copy of every gradient
# (torch/csrc/distributed/c10d/reducer.cpp Reducer::initialize_buckets: `bucket.gradients = at::empty(...)`).
DDP_BUCKET_BYTES = 25 * 1024**2
# NCCL's own device buffers, outside torch's allocator, per communicator a rank joins (MEMORY_FACTS.md: 0.5-1.6 GB
# per communicator, nccl issues 964 and 864). The upper end is used so device_bytes errs high, as the CUDA context.
NCCL_COMMUNICATOR_BYTES = 1600 * 1000**2
class RankStates(BaseModel):
    """One rank's model-state bytes, and what is in flight at each moment of the step."""

    weights: int  # base weights held on this GPU (whole or its shard)
    lora_adapters: int
    optimizer_states: int
    optimizer_temporaries: int
    gradients_at_step: int  # every gradient this rank holds when optimizer.step() runs
    layer_gradients: list[int]  # what each decoder layer's finished gradients leave on this rank
    before_layer_gradient_bytes: int  # gradients alive while the decoder layers run backward (lm_head, final norm)
    gradient_partition: int = 0  # a flat gradient buffer held through the whole step (ZeRO-2/3)
    comm_buffers: int = 0  # buffers that live through the whole step (DDP and DeepSpeed buckets)
    in_flight: dict[str, int] = {}  # gathered parameters and reduce buffers at each moment
    # In flight while decoder layer i runs backward (default: in_flight[LAYER_BACKWARD] for every layer), and, under
    # FSDP, the layer's own unsharded gradients: all of them when its backward ends, those of the MLP's output
    # projection (down_proj, its bias and adapters: the first to arrive) at the SwiGLU step.
    layer_backward_in_flight: list[int] = []
    layer_own_gradients: list[int] = []
    layer_mlp_gradients: list[int] = []
    # FSDP: in flight when layer i's gradients are reduce-scattered (its parameters already resharded).
    layer_reduce_in_flight: list[int] = []
    host_bytes: int = 0  # host RAM this rank needs for offloaded states
    nccl_bytes: int = 0
    notes: list[str] = []


def single_gpu_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """The whole model on one GPU: what estimate_memory always modelled."""
    weights = weight_memory(spec, setup)
    shapes = trainable_tensor_shapes(spec, setup)
    width = trainable_bytes_per_param(setup)
    gradients = sum(tensor_bytes(math.prod(shape) * width) for shape in shapes)
    opt = optimizer_memory(setup.optimizer, shapes, width)
    per_layer = [layer_gradient_bytes(spec, setup, i) for i in range(spec.num_layers)]
    embedding = _embedding_gradient_bytes(spec, setup)
    waiting = embedding if spec.tie_word_embeddings else 0
    return RankStates(
        # A tied lm_head's gradient waits in autograd's input buffer for the embedding's (AccumulateGrad runs once,
        # after both uses), through every layer's backward; at the embedding the two are summed into a third tensor.
        layer_backward_in_flight=[waiting] * spec.num_layers if waiting else [],
        in_flight={BACKWARD_END: 3 * waiting} if waiting else {},
        weights=weights.base_bytes,
        lora_adapters=weights.adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=gradients,
        layer_gradients=per_layer,
        before_layer_gradient_bytes=gradients - embedding - sum(per_layer),
    )


def rank_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """The model states of one rank under the setup's strategy."""
    single = single_gpu_states(spec, setup)
    strategy = setup.strategy
    if strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP):
        return single
    if strategy is Strategy.DDP:
        return _ddp(single, setup)
    if strategy in DEEPSPEED_STRATEGIES:
        from vramplan.estimate.zero import deepspeed_states

        return deepspeed_states(spec, setup, single)
    if strategy in FSDP_STRATEGIES:
        from vramplan.estimate.fsdp_states import fsdp_states

        return fsdp_states(spec, setup)
    raise AssertionError(strategy)


def shard_group_size(setup: TrainingSetup) -> int:
    """Ranks one parameter is sharded over: the node's GPUs under hybrid sharding, every GPU otherwise."""
    return setup.gpus if setup.strategy is Strategy.FSDP_HYBRID else setup.world_size


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


def _embedding_gradient_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    if setup.method is not Method.FULL:
        return 0
    return tensor_bytes(spec.embedding_params * trainable_bytes_per_param(setup))


def ddp_bucket_bytes(gradient_bytes: int) -> int:
    """The reducer's buckets: full 25 MB buckets plus one for the remainder, each its own tensor. Computed, not
    looped, so the cost does not grow with the model."""
    full, rest = divmod(gradient_bytes, DDP_BUCKET_BYTES)
    return full * tensor_bytes(DDP_BUCKET_BYTES) + (tensor_bytes(rest) if rest else 0)


def _ddp(single: RankStates, setup: TrainingSetup) -> RankStates:
    return single.model_copy(update={
        "comm_buffers": ddp_bucket_bytes(single.gradients_at_step),
        "nccl_bytes": communicators(setup) * NCCL_COMMUNICATOR_BYTES,
        "notes": ["ddp: a full replica per GPU; the reducer's 25 MB buckets hold a second copy of the gradients "
                  "(gradient_as_bucket_view=False, the accelerate/Trainer default)"],
    })
