"""RankStates: one rank's model states under a strategy (what is whole, what is sharded, what is in flight at each
moment of the step), the moments themselves, and the sharding group."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.training import Strategy, TrainingSetup

# The moments of a step at which in-flight (gathered, bucketed) bytes are added.
FORWARD_START = "forward: the first all-gathers"
FORWARD_LOGITS = "forward: logits and loss"
FORWARD_LAYER = "forward: inside the last decoder layer"
LOSS_BACKWARD = "backward: loss and lm_head"
LAYER_BACKWARD = "backward: a decoder layer"
BACKWARD_END = "backward: the input embedding, after every layer"
OPTIMIZER_STEP = "optimizer step"
MOMENTS = (FORWARD_START, FORWARD_LOGITS, FORWARD_LAYER, LOSS_BACKWARD, LAYER_BACKWARD, BACKWARD_END, OPTIMIZER_STEP)


class RankStates(BaseModel):
    """One rank's model-state bytes, and what is in flight at each moment of the step."""

    weights: int  # base weights held on this GPU (whole or its shard)
    lora_adapters: int
    optimizer_states: int
    optimizer_temporaries: int
    gradients_at_step: int  # every gradient this rank holds when optimizer.step() runs
    layer_gradients: list[int]  # what each decoder layer's finished gradients leave on this rank
    before_layer_gradient_bytes: int  # gradients alive while the decoder layers run backward (lm_head, final norm)
    gradient_partition: int = 0  # a flat gradient buffer (ZeRO-1/2/3)
    comm_buffers: int = 0  # buffers that live through the whole step (DDP and DeepSpeed buckets)
    # ZeRO-1/2: the gradient partition and the reduce bucket exist from the first reduce in backward to the end of
    # the optimizer step, not in the forward or the loss's backward (traced on CPU: DeepSpeed 0.19.8).
    buffers_from_backward: bool = False
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


def shard_group_size(setup: TrainingSetup) -> int:
    """Ranks one parameter is sharded over: the node's GPUs under hybrid sharding, every GPU otherwise."""
    return setup.gpus if setup.strategy is Strategy.FSDP_HYBRID else setup.world_size
