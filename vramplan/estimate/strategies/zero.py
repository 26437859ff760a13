"""DeepSpeed ZeRO stages 1-3 under HF Trainer with bf16, per rank (DeepSpeed does not run here: the rules are held
against DeepSpeed's own estimators in tests/estimate/test_parallel.py)."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes, trainable_bytes_per_param
from vramplan.estimate.params import Unit, model_units
from vramplan.estimate.nccl import nccl_bytes
from vramplan.estimate.strategies.states import (
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LAYER_BACKWARD,
    LOSS_BACKWARD,
    RankStates,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Offload, Strategy, TrainingSetup

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


class _Partition(BaseModel):
    """What the optimizer's partition of the trainable parameters leaves on one rank (and its host)."""

    states: int = 0
    step_temporaries: int = 0
    gradient_partition: int = 0
    host: int = 0
    notes: list[str]


def _half_bytes(units: list[Unit], keep=lambda t: True, world: int = 1) -> int:
    """16-bit bytes of the kept tensors (each split `world` ways), each module repeated as often as the model has it."""
    return sum(u.count * sum(tensor_bytes(-(-t.numel // world) * HALF_BYTES) for t in u.tensors if keep(t))
               for u in units)


def _reduce_bucket(spec: ModelSpec) -> int:
    """The 16-bit gradient bucket reduce_bucket_size elements wide."""
    return tensor_bytes(HF_REDUCE_BUCKET_PER_HIDDEN_SQ * spec.hidden_size**2 * HALF_BYTES)


def _optimizer_partition(setup: TrainingSetup, units: list[Unit]) -> _Partition:
    """fp32 master weights and Adam states, the 16-bit gradient partition and the step's casts, for 1/world of the
    trainable parameters; or, offloaded, all of them in host memory."""
    world = setup.world_size
    trainable = sum(unit.count * sum(t.numel for t in unit.tensors if t.trainable) for unit in units)
    partition = -(-trainable // world)
    fp32_partition = tensor_bytes(partition * FP32_BYTES)
    notes = [f"{setup.strategy.value}: DeepSpeed casts the model to 16-bit; fp32 master weights + Adam states "
             f"({DS_FP32_COPIES} x 4 B per trainable parameter) partitioned over {world} GPUs"]
    if setup.offload is not Offload.NONE:
        # offload_optimizer: master weights, Adam states and fp32 gradients live in pinned host memory and the step
        # runs there (DeepSpeedCPUAdam); the GPU keeps no gradient partition.
        notes.append("offload optimizer: fp32 master weights, Adam states and fp32 gradients in host RAM; the "
                     "step runs on the CPU")
        return _Partition(host=DS_FP32_COPIES * fp32_partition + fp32_partition, notes=notes)
    if setup.strategy is Strategy.ZERO3:
        # stage3.py _prepare_fp32_grad_for_sub_group: flatten (a 16-bit copy) then .to(fp32), one sub-group
        # (sub_group_size) at a time.
        group_elements = min(partition, DS_SUB_GROUP_ELEMENTS)
        step_temporaries = tensor_bytes(group_elements * HALF_BYTES) + tensor_bytes(group_elements * FP32_BYTES)
    else:
        # stage_1_and_2.py step: `flat_grad_partition.to(fp32)` next to the pre-flattened 16-bit partition.
        step_temporaries = fp32_partition
    return _Partition(states=DS_FP32_COPIES * fp32_partition, step_temporaries=step_temporaries,
                      gradient_partition=tensor_bytes(partition * HALF_BYTES), notes=notes)


def deepspeed_states(spec: ModelSpec, setup: TrainingSetup, single: RankStates) -> RankStates:
    """DeepSpeed ZeRO under HF Trainer with bf16: the engine casts the module to bf16, the optimizer keeps fp32
    master weights and Adam states for its partition (deepspeed/runtime/engine.py _configure_distributed_model;
    stage_1_and_2.py DeepSpeedZeroOptimizer; stage3.py DeepSpeedZeroOptimizer_Stage3)."""
    units = model_units(spec, setup)
    part = _optimizer_partition(setup, units)
    if setup.strategy is Strategy.ZERO3:
        return _zero3_states(spec, setup, units, part)
    return _zero12_states(spec, setup, units, part, single)


def _zero3_states(spec: ModelSpec, setup: TrainingSetup, units: list[Unit], part: _Partition) -> RankStates:
    """ZeRO-3: parameters partitioned too, gathered per module as forward and backward reach it."""
    world = setup.world_size
    persistence = HF_PERSISTENCE_PER_HIDDEN * spec.hidden_size
    # stage3 persistent parameters: tensors at or under the threshold stay gathered on every rank.
    persistent = _half_bytes(units, lambda t: t.numel <= persistence)
    sharded = _half_bytes(units, lambda t: t.numel > persistence, world)
    largest = max(t.numel for u in units for t in u.tensors)
    total = sum(unit.count * sum(t.numel for t in unit.tensors) for unit in units)
    prefetch = tensor_bytes(HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ * spec.hidden_size**2 // 10 * HALF_BYTES)
    # In flight: the gathered module in use and, in backward, its 16-bit gradient before the reduce
    # (DeepSpeed's estimator: 4 x the largest layer's parameters), and the prefetch bucket of the next modules.
    gathered = tensor_bytes(largest * HALF_BYTES)
    # From the end of forward the recently used modules stay gathered (max_reuse_distance), up to max_live.
    kept = tensor_bytes(min(DS_MAX_LIVE_ELEMENTS, total) * HALF_BYTES)
    backward = max(kept, 2 * gathered + prefetch) + _reduce_bucket(spec)
    # The same holds inside the forward: what it has gathered so far stays gathered (traced on CPU with DeepSpeed
    # 0.19.8, scripts/trace_deepspeed.py: the forward's peak is the whole model gathered at the logits).
    forward = max(kept, gathered + prefetch)
    in_flight = {FORWARD_LOGITS: forward, FORWARD_LAYER: forward, LOSS_BACKWARD: backward, LAYER_BACKWARD: backward}
    weights, host, notes = persistent + sharded, part.host, list(part.notes)
    if setup.offload is Offload.PARAMS:
        host += sharded
        weights = persistent
        notes.append("offload params: 16-bit parameter partitions in host RAM, gathered to the GPU per module")
    notes.append(f"zero3: parameters partitioned too; in flight the largest module ({largest:,} parameters) and "
                 f"its gradient, a {HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ / 10:g} x hidden^2 prefetch bucket, and "
                 "in backward up to stage3_max_live_parameters (1e9) gathered")
    return RankStates(
        weights=weights, lora_adapters=0, optimizer_states=part.states, optimizer_temporaries=part.step_temporaries,
        gradients_at_step=0, layer_gradients=[0] * spec.num_layers, before_layer_gradient_bytes=0,
        gradient_partition=part.gradient_partition, in_flight=in_flight, host_bytes=host,
        nccl_bytes=nccl_bytes(setup), notes=notes,
    )


def _zero12_states(
    spec: ModelSpec, setup: TrainingSetup, units: list[Unit], part: _Partition, single: RankStates
) -> RankStates:
    """ZeRO-1/2 flatten the trainable parameters into one 16-bit buffer; frozen weights stay ordinary (16-bit after
    the engine's cast) tensors on every GPU (stage_1_and_2.py bit16_groups_flat; utils.py is_optimized_parameter)."""
    half_params = _half_bytes(units) + sum(u.count * u.extra_bytes for u in units)
    to_half = HALF_BYTES / trainable_bytes_per_param(setup)
    if setup.strategy is Strategy.ZERO1:
        # Stage 1 reduces only at the end of backward (process_gradients): every layer's 16-bit gradients exist until
        # then, next to the partition buffer (grads_in_partition) both stages allocate.
        layer_grads = [tensor_bytes(int(grads * to_half)) for grads in single.layer_gradients]
        before = tensor_bytes(int(single.before_layer_gradient_bytes * to_half))
        in_flight = {}
    else:
        # Stage 2 reduces through the ipg bucket as backward produces gradients; a layer's gradients exist until
        # their bucket is reduced, then only this rank's partition stays.
        layer_grads, before = [0] * spec.num_layers, 0
        in_flight = {LAYER_BACKWARD: tensor_bytes(int(max(single.layer_gradients) * to_half))}
    return RankStates(
        weights=half_params, lora_adapters=0, optimizer_states=part.states,
        optimizer_temporaries=part.step_temporaries, gradients_at_step=0, layer_gradients=layer_grads,
        before_layer_gradient_bytes=before, gradient_partition=part.gradient_partition,
        comm_buffers=_reduce_bucket(spec), buffers_from_backward=True,
        in_flight=in_flight, host_bytes=part.host, nccl_bytes=nccl_bytes(setup), notes=part.notes,
    )
