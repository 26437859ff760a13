"""One rank's model states under each multi-GPU strategy: what is whole, what is sharded, what is in flight.

The single-GPU estimate composes its phase peaks from a RankStates; every strategy here returns one, so
activations, logits and the step's moments are shared and only the model states and the communication buffers
differ. Sources are named per rule; tests/estimate/test_parallel.py holds them against DeepSpeed's estimator
and tests/measure/test_fsdp_trace.py against FSDP2 traced on CPU with a fake process group.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.shards import Unit, model_units
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
    Offload,
    Strategy,
    TrainingSetup,
)

# The moments of a step at which in-flight (gathered, bucketed) bytes are added.
FORWARD_LOGITS = "forward: logits and loss"
FORWARD_LAYER = "forward: inside the last decoder layer"
LOSS_BACKWARD = "backward: loss and lm_head"
LAYER_BACKWARD = "backward: a decoder layer"
OPTIMIZER_STEP = "optimizer step"
MOMENTS = (FORWARD_LOGITS, FORWARD_LAYER, LOSS_BACKWARD, LAYER_BACKWARD, OPTIMIZER_STEP)

# torch/nn/parallel/distributed.py DistributedDataParallel: bucket_cap_mb=25 (accelerate and HF Trainer keep the
# default, and gradient_as_bucket_view=False), so the reducer's buckets hold a second copy of every gradient
# (torch/csrc/distributed/c10d/reducer.cpp Reducer::initialize_buckets: `bucket.gradients = at::empty(...)`).
DDP_BUCKET_BYTES = 25 * 1024**2
# NCCL's own device buffers, outside torch's allocator, per communicator a rank joins (MEMORY_FACTS.md: 0.5-1.6 GB
# per communicator, nccl issues 964 and 864). The upper end is used so device_bytes errs high, as the CUDA context.
NCCL_COMMUNICATOR_BYTES = 1600 * 1000**2
# DeepSpeed under HF Trainer (transformers/integrations/deepspeed.py HfTrainerDeepSpeedConfig.trainer_config_finalize):
# reduce_bucket_size = hidden^2, stage3_prefetch_bucket_size = 0.9 hidden^2 (int), stage3_param_persistence_threshold
# = 10 hidden, all in elements.
HF_REDUCE_BUCKET_PER_HIDDEN_SQ = 1
HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ = 9
HF_PERSISTENCE_PER_HIDDEN = 10
# deepspeed/runtime/zero/config.py: stage3_max_live_parameters default 1e9 elements: at most this many parameters
# are gathered at once (partitioned_param_coordinator.py); with max_reuse_distance 1e9 the last layers of forward
# stay gathered into backward, so the gathered set is bounded by it.
DS_MAX_LIVE_ELEMENTS = 1_000_000_000
# deepspeed/runtime/zero/config.py: sub_group_size default 1e9 elements (ZeRO-3 steps its partition in sub-groups).
DS_SUB_GROUP_ELEMENTS = 1_000_000_000
# DeepSpeed's mixed-precision optimizer keeps an fp32 master copy plus Adam's exp_avg and exp_avg_sq, all fp32,
# for its partition (deepspeed/runtime/zero/stage_1_and_2.py single_partition_of_fp32_groups; ZeRO paper 3.1).
DS_FP32_COPIES = 3


class RankStates(BaseModel):
    """One rank's model-state bytes, and what is in flight at each moment of the step."""

    weights: int  # base weights held on this GPU (whole or its shard)
    lora_adapters: int
    optimizer_states: int
    optimizer_temporaries: int
    gradients_at_step: int  # every gradient this rank holds when optimizer.step() runs
    layer_gradient_bytes: int  # what one decoder layer's finished gradients leave on this rank
    before_layer_gradient_bytes: int  # gradients alive while the decoder layers run backward (lm_head, final norm)
    gradient_partition: int = 0  # a flat gradient buffer held through the whole step (ZeRO-2/3)
    comm_buffers: int = 0  # buffers that live through the whole step (DDP and DeepSpeed buckets)
    in_flight: dict[str, int] = {}  # gathered parameters and reduce buffers at each moment
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
    per_layer = layer_gradient_bytes(spec, setup)
    embedding = _embedding_gradient_bytes(spec, setup)
    return RankStates(
        weights=weights.base_bytes,
        lora_adapters=weights.adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=gradients,
        layer_gradient_bytes=per_layer,
        before_layer_gradient_bytes=gradients - embedding - spec.num_layers * per_layer,
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
        return _deepspeed(spec, setup, single)
    if strategy in FSDP_STRATEGIES:
        return _fsdp(spec, setup, single)
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


def _ddp(single: RankStates, setup: TrainingSetup) -> RankStates:
    buckets = max(1, -(-single.gradients_at_step // DDP_BUCKET_BYTES))
    bucket_bytes = sum(
        tensor_bytes(min(DDP_BUCKET_BYTES, single.gradients_at_step - i * DDP_BUCKET_BYTES)) for i in range(buckets)
    ) if single.gradients_at_step else 0
    return single.model_copy(update={
        "comm_buffers": bucket_bytes,
        "nccl_bytes": communicators(setup) * NCCL_COMMUNICATOR_BYTES,
        "notes": ["ddp: a full replica per GPU; the reducer's 25 MB buckets hold a second copy of the gradients "
                  "(gradient_as_bucket_view=False, the accelerate/Trainer default)"],
    })


def _trainable_elements(units: list[Unit]) -> int:
    return sum(unit.count * sum(t.numel for t in unit.tensors if t.trainable) for unit in units)


def _deepspeed(spec: ModelSpec, setup: TrainingSetup, single: RankStates) -> RankStates:
    """DeepSpeed ZeRO under HF Trainer with bf16: the engine casts the module to bf16, the optimizer keeps fp32
    master weights and Adam states for its partition (deepspeed/runtime/engine.py _configure_distributed_model;
    stage_1_and_2.py DeepSpeedZeroOptimizer; stage3.py DeepSpeedZeroOptimizer_Stage3)."""
    world = setup.world_size
    units = model_units(spec, setup)
    trainable = _trainable_elements(units)
    total = sum(unit.count * sum(t.numel for t in unit.tensors) for unit in units)
    partition = -(-trainable // world)
    fp32_partition = tensor_bytes(partition * FP32_BYTES)
    half_partition = tensor_bytes(partition * HALF_BYTES)
    reduce_bucket = tensor_bytes(HF_REDUCE_BUCKET_PER_HIDDEN_SQ * spec.hidden_size**2 * HALF_BYTES)
    offloaded = setup.offload is not Offload.NONE
    stage = setup.strategy.value
    notes = [f"{stage}: DeepSpeed casts the model to 16-bit; fp32 master weights + Adam states "
             f"({DS_FP32_COPIES} x 4 B per trainable parameter) partitioned over {world} GPUs"]
    host = 0
    if offloaded:
        # offload_optimizer: master weights, Adam states and fp32 gradients live in pinned host memory and the step
        # runs there (DeepSpeedCPUAdam); the GPU keeps no gradient partition.
        states_bytes = step_temporaries = gradient_partition = 0
        host = DS_FP32_COPIES * fp32_partition + fp32_partition
        notes.append("offload optimizer: fp32 master weights, Adam states and fp32 gradients in host RAM; the "
                     "step runs on the CPU")
    else:
        states_bytes = DS_FP32_COPIES * fp32_partition
        gradient_partition = half_partition
        if setup.strategy is Strategy.ZERO3:
            # stage3.py _prepare_fp32_grad_for_sub_group: flatten (a 16-bit copy) then .to(fp32), one sub-group
            # (sub_group_size) at a time.
            group_elements = min(partition, DS_SUB_GROUP_ELEMENTS)
            step_temporaries = tensor_bytes(group_elements * HALF_BYTES) + tensor_bytes(group_elements * FP32_BYTES)
        else:
            # stage_1_and_2.py step: `flat_grad_partition.to(fp32)` next to the pre-flattened 16-bit partition.
            step_temporaries = fp32_partition
    nccl = communicators(setup) * NCCL_COMMUNICATOR_BYTES
    if setup.strategy is Strategy.ZERO3:
        persistence = HF_PERSISTENCE_PER_HIDDEN * spec.hidden_size
        # stage3 persistent parameters: tensors at or under the threshold stay gathered on every rank.
        persistent = sum(u.count * sum(tensor_bytes(t.numel * HALF_BYTES) for t in u.tensors if t.numel <= persistence)
                         for u in units)
        sharded = sum(
            u.count * sum(tensor_bytes(-(-t.numel // world) * HALF_BYTES) for t in u.tensors if t.numel > persistence)
            for u in units
        )
        largest = max(t.numel for u in units for t in u.tensors)
        prefetch = tensor_bytes(HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ * spec.hidden_size**2 // 10 * HALF_BYTES)
        # In flight: the gathered module in use and, in backward, its 16-bit gradient before the reduce
        # (DeepSpeed's estimator: 4 x the largest layer's parameters), and the prefetch bucket of the next modules.
        gathered = tensor_bytes(largest * HALF_BYTES)
        # From the end of forward the recently used modules stay gathered (max_reuse_distance), up to max_live.
        kept = tensor_bytes(min(DS_MAX_LIVE_ELEMENTS, total) * HALF_BYTES)
        in_flight = {
            FORWARD_LOGITS: gathered + prefetch,
            FORWARD_LAYER: gathered + prefetch,
            LOSS_BACKWARD: max(kept, 2 * gathered + prefetch) + reduce_bucket,
            LAYER_BACKWARD: max(kept, 2 * gathered + prefetch) + reduce_bucket,
        }
        weights = persistent + sharded
        if setup.offload is Offload.PARAMS:
            host += sharded
            weights = persistent
            notes.append("offload params: 16-bit parameter partitions in host RAM, gathered to the GPU per module")
        notes.append(f"zero3: parameters partitioned too; in flight the largest module ({largest:,} parameters) and "
                     f"its gradient, a {HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ / 10:g} x hidden^2 prefetch bucket, and "
                     "in backward up to stage3_max_live_parameters (1e9) gathered")
        return RankStates(
            weights=weights, lora_adapters=0, optimizer_states=states_bytes, optimizer_temporaries=step_temporaries,
            gradients_at_step=0, layer_gradient_bytes=0, before_layer_gradient_bytes=0,
            gradient_partition=gradient_partition, in_flight=in_flight, host_bytes=host, nccl_bytes=nccl, notes=notes,
        )
    # ZeRO-1/2 flatten the trainable parameters into one 16-bit buffer; frozen weights stay ordinary (16-bit after
    # the engine's cast) tensors on every GPU (stage_1_and_2.py bit16_groups_flat; utils.py is_optimized_parameter).
    half_params = sum(u.count * (sum(tensor_bytes(t.numel * HALF_BYTES) for t in u.tensors) + u.unsharded_extra_bytes)
                      for u in units)
    to_half = HALF_BYTES / trainable_bytes_per_param(setup)
    if setup.strategy is Strategy.ZERO1:
        # Stage 1 reduces only at the end of backward (process_gradients): every layer's 16-bit gradients exist until
        # then, next to the partition buffer (grads_in_partition) both stages allocate.
        layer_grads = tensor_bytes(int(single.layer_gradient_bytes * to_half))
        before = tensor_bytes(int(single.before_layer_gradient_bytes * to_half))
        in_flight = {}
    else:
        # Stage 2 reduces through the ipg bucket as backward produces gradients; a layer's gradients exist until
        # their bucket is reduced, then only this rank's partition stays.
        layer_grads = before = 0
        in_flight = {LAYER_BACKWARD: tensor_bytes(int(single.layer_gradient_bytes * to_half))}
    return RankStates(
        weights=half_params, lora_adapters=0, optimizer_states=states_bytes, optimizer_temporaries=step_temporaries,
        gradients_at_step=0, layer_gradient_bytes=layer_grads, before_layer_gradient_bytes=before,
        gradient_partition=gradient_partition, comm_buffers=reduce_bucket, in_flight=in_flight, host_bytes=host,
        nccl_bytes=nccl, notes=notes,
    )


def _fsdp(spec: ModelSpec, setup: TrainingSetup, single: RankStates) -> RankStates:
    """FSDP2 `fully_shard` as accelerate applies it (each decoder layer, then the root), reshard_after_forward on.

    Sharded: every parameter, its gradient and its optimizer states (dim 0 over the shard group). In flight: the
    root's parameters (the root is not resharded after forward), the decoder layer being run and the one being
    prefetched, and in backward the layer's unsharded gradients with their reduce-scatter input.
    """
    group = shard_group_size(setup)
    root, layer = model_units(spec, setup)
    width = trainable_bytes_per_param(setup)
    trainable_shards = [
        (-(-t.rows // group), t.numel // t.rows) for u in (root, layer) for _ in range(u.count) for t in u.tensors
        if t.trainable
    ]
    opt = optimizer_memory(setup.optimizer, trainable_shards, width)
    adapters = setup.method is not Method.FULL

    def weights_of(unit: Unit) -> int:
        return unit.count * (unit.shard_bytes(group, trainable=False if adapters else None) + unit.unsharded_extra_bytes)

    weights = weights_of(root) + weights_of(layer)
    adapter_bytes = (root.count * root.shard_bytes(group, True) + layer.count * layer.shard_bytes(group, True)
                     if adapters else 0)
    layer_grad_shard = layer.shard_bytes(group, trainable=True)
    root_grad_shard = root.shard_bytes(group, trainable=True)
    root_gathered = root.gathered_bytes(group)
    layer_gathered = layer.gathered_bytes(group)
    layer_grads_full = layer.param_bytes(trainable=True)
    root_grads_full = root.param_bytes(trainable=True)
    in_flight = {
        FORWARD_LOGITS: root_gathered,
        FORWARD_LAYER: root_gathered + layer_gathered,
        LOSS_BACKWARD: root_gathered + layer_gathered,
        # the layer in backward, the prefetched layer below it, and the layer's gradients being reduce-scattered
        LAYER_BACKWARD: root_gathered + 2 * layer_gathered + layer_grads_full,
        OPTIMIZER_STEP: 0,
    }
    host = 0
    notes = [f"{setup.strategy.value}: FSDP2 shards parameters, gradients and optimizer states over {group} GPUs; "
             "per decoder layer plus the root (embeddings, lm_head stay gathered from forward to backward)"]
    if setup.offload is Offload.PARAMS:
        host = weights + adapter_bytes + opt.state_bytes + layer.count * layer_grad_shard + root_grad_shard
        weights = adapter_bytes = 0
        notes.append("offload params (CPUOffloadPolicy): sharded parameters, gradients and optimizer states in "
                     "host RAM; the optimizer step runs on the CPU")
        return RankStates(
            weights=0, lora_adapters=0, optimizer_states=0, optimizer_temporaries=0, gradients_at_step=0,
            layer_gradient_bytes=0, before_layer_gradient_bytes=root_grads_full, in_flight=in_flight,
            host_bytes=host, nccl_bytes=communicators(setup) * NCCL_COMMUNICATOR_BYTES, notes=notes,
        )
    return RankStates(
        weights=weights,
        lora_adapters=adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=layer.count * layer_grad_shard + root_grad_shard,
        layer_gradient_bytes=layer_grad_shard,
        # the root's gradients stay unsharded until the root's post-backward, after every layer
        before_layer_gradient_bytes=root_grads_full - _embedding_gradient_bytes(spec, setup),
        in_flight=in_flight,
        nccl_bytes=communicators(setup) * NCCL_COMMUNICATOR_BYTES,
        notes=notes,
    )
