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
from vramplan.estimate.shards import (
    DENSE_LAYER,
    EMBEDDING,
    FINAL_NORM,
    LM_HEAD,
    MOE_LAYER,
    ParamTensor,
    Unit,
    model_units,
    unit_named,
)
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
    Precision,
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
    return RankStates(
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
            gradients_at_step=0, layer_gradients=[0] * spec.num_layers, before_layer_gradient_bytes=0,
            gradient_partition=gradient_partition, in_flight=in_flight, host_bytes=host, nccl_bytes=nccl, notes=notes,
        )
    # ZeRO-1/2 flatten the trainable parameters into one 16-bit buffer; frozen weights stay ordinary (16-bit after
    # the engine's cast) tensors on every GPU (stage_1_and_2.py bit16_groups_flat; utils.py is_optimized_parameter).
    half_params = sum(u.count * (sum(tensor_bytes(t.numel * HALF_BYTES) for t in u.tensors) + u.extra_bytes)
                      for u in units)
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
        weights=half_params, lora_adapters=0, optimizer_states=states_bytes, optimizer_temporaries=step_temporaries,
        gradients_at_step=0, layer_gradients=layer_grads, before_layer_gradient_bytes=before,
        gradient_partition=gradient_partition, comm_buffers=reduce_bucket, in_flight=in_flight, host_bytes=host,
        nccl_bytes=nccl, notes=notes,
    )


class FsdpGroup(BaseModel):
    """One `fully_shard` unit as accelerate makes it, with the widths FSDP2 gives its tensors."""

    name: str
    count: int
    tensors: list[ParamTensor]
    extra_bytes: int  # replicated on every rank (QuantStates, buffers)
    reshard_after_forward: bool
    sharded_widths: list[int]  # per tensor: what the sharded parameter is stored as
    gathered_width: int | None  # MixedPrecisionPolicy.param_dtype width, None: each tensor's own

    def sharded_bytes(self, group: int, trainable: bool | None = None) -> int:
        return sum(t.shard_bytes(group, w) for t, w in zip(self.tensors, self.sharded_widths)
                   if trainable is None or t.trainable is trainable)

    def gathered_bytes(self, group: int) -> int:
        """Unsharded parameters, one padded tensor each (FSDPParam.init_all_gather_outputs)."""
        return sum(tensor_bytes(t.shard_rows(group) * group * t.cols * (self.gathered_width or t.width))
                   for t in self.tensors)

    def all_gather_buffer(self, group: int) -> int:
        """The flat all-gather output (_fsdp_collectives.py foreach_all_gather): one storage for the unit."""
        return tensor_bytes(sum(t.shard_rows(group) * group * t.cols * (self.gathered_width or t.width)
                                for t in self.tensors))

    def gradient_shard(self, group: int) -> int:
        """Sharded gradients: one flat storage per unit in the sharded parameters' dtype (foreach_reduce's
        reduce-scatter output cast back to orig_dtype, viewed per parameter)."""
        return tensor_bytes(sum(t.shard_rows(group) * t.cols * w for t, w in zip(self.tensors, self.sharded_widths)
                                if t.trainable))

    def unsharded_gradients(self, group: int, names: tuple[str, ...] | None = None) -> int:
        """Autograd's gradients of the unsharded parameters, in the gathered dtype, one tensor each (`names`: only
        the tensors whose module name contains one of them)."""
        return sum(tensor_bytes(t.shard_rows(group) * group * t.cols * (self.gathered_width or t.width))
                   for t in self.tensors if t.trainable and (names is None or any(n in t.name for n in names)))

    def reduce_moment(self, group: int) -> int:
        """post_backward's foreach_reduce: the unsharded gradients being copied into the flat reduce-scatter input,
        the reduce-scatter output (one shard in the reduce dtype) and its cast back to the sharded dtype
        (`_to_dtype_if_needed(reduce_output, orig_dtype)` in _fsdp_collectives.py)."""
        if not self.trains:
            return 0
        output_elements = sum(t.shard_rows(group) * t.cols for t in self.tensors if t.trainable)
        reduce_width = self.gathered_width or max(t.width for t in self.tensors if t.trainable)
        cast = self.gradient_shard(group) if self.gradient_shard(group) != tensor_bytes(output_elements * reduce_width) else 0
        return (self.unsharded_gradients(group) + self.reduce_scatter_input(group)
                + tensor_bytes(output_elements * reduce_width) + cast)

    def reduce_scatter_input(self, group: int) -> int:
        """foreach_reduce's flat input: every trainable parameter's padded gradient in the reduce dtype."""
        return tensor_bytes(sum(t.shard_rows(group) * group * t.cols * (self.gathered_width or t.width)
                                for t in self.tensors if t.trainable))

    @property
    def trains(self) -> bool:
        return any(t.trainable for t in self.tensors)


def fsdp_groups(spec: ModelSpec, setup: TrainingSetup) -> list[FsdpGroup]:
    """accelerate/utils/fsdp_utils.py fsdp2_prepare_model: `fully_shard` on each decoder layer, on the input
    embedding (untied), on a tail [final norm, lm_head] with reshard_after_forward=False (for a peft model its
    `_find_final_norm` finds no norm, which stays in the root; tied embeddings join the tail), then on the root.

    Mixed precision (Trainer bf16/fp16): trainable parameters are upcast to fp32 unless the model holds Params4bit,
    and MixedPrecisionPolicy(param_dtype=reduce_dtype=bf16/fp16) gathers every parameter in that dtype.
    """
    mixed = setup.precision is not Precision.FP32
    upcast = mixed and setup.method is not Method.QLORA
    gathered = (HALF_BYTES if mixed else None)
    units = {unit.name: unit for unit in model_units(spec, setup)}
    peft = setup.method is not Method.FULL

    def group(name: str, parts: list[Unit], reshard: bool) -> FsdpGroup:
        tensors = [t for unit in parts for t in unit.tensors]
        widths = [FP32_BYTES if upcast and t.trainable else t.width for t in tensors]
        return FsdpGroup(name=name, count=parts[0].count, tensors=tensors,
                         extra_bytes=sum(unit.extra_bytes for unit in parts), reshard_after_forward=reshard,
                         sharded_widths=widths, gathered_width=gathered)

    groups = [group(kind, [units[kind]], True) for kind in (DENSE_LAYER, MOE_LAYER) if kind in units]
    tail = [units[EMBEDDING]] if LM_HEAD not in units else [units[LM_HEAD]]
    if not peft:
        tail = [units[FINAL_NORM], *tail]
    if LM_HEAD in units:
        groups.append(group("input embedding", [units[EMBEDDING]], True))
    groups.append(group("tail (lm_head)" if LM_HEAD in units else "tail (tied embedding)", tail, False))
    if peft:
        groups.append(group("root (final norm)", [units[FINAL_NORM]], False))
    return groups


def kind_of_top(spec: ModelSpec) -> str:
    return MOE_LAYER if spec.is_moe_layer(spec.num_layers - 1) else DENSE_LAYER


def _fsdp(spec: ModelSpec, setup: TrainingSetup, single: RankStates) -> RankStates:
    """One rank under FSDP2 as HF Trainer + accelerate run it (reshard_after_forward on), from the trace of the
    real engine on CPU (vramplan/measure/fsdp.py) and torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py.

    Sharded: parameters, gradients (fp32 under mixed precision) and optimizer states. In flight:
    - forward: the running layer's unsharded parameters and its flat all-gather output (kept until the next unit
      gathers, `comm_ctx.all_gather_state`); the tail (lm_head) and root stay gathered from their forward on, the
      tail's all-gather output until the root's post-forward (through the loss);
    - backward of layer i: its unsharded parameters, the prefetched all-gather output of the unit below it
      (`_backward_prefetch`), the reduce-scatter input of the unit above it (reduce_scatter_max_input_buffers=1) and
      its own unsharded gradients;
    - the input embedding's backward, last: its unsharded parameters and gradients and the bottom layer's
      reduce-scatter input.
    """
    group = shard_group_size(setup)
    groups = fsdp_groups(spec, setup)
    layers = {g.name: g for g in groups if g.name in (DENSE_LAYER, MOE_LAYER)}
    tail = next(g for g in groups if g.name.startswith("tail"))
    root = next((g for g in groups if g.name.startswith("root")), None)
    embed = next((g for g in groups if g.name == "input embedding"), None)
    shards = [(-(-t.rows // group), t.cols) for g in groups for _ in range(g.count) for t in g.tensors if t.trainable]
    trainable_width = max((w for g in groups for t, w in zip(g.tensors, g.sharded_widths) if t.trainable), default=0)
    opt = optimizer_memory(setup.optimizer, shards, trainable_width)
    adapters = setup.method is not Method.FULL

    def held(g: FsdpGroup, trainable: bool | None) -> int:
        return g.count * g.sharded_bytes(group, trainable)

    if adapters:
        weights = sum(held(g, False) + g.count * g.extra_bytes for g in groups)
        adapter_bytes = sum(held(g, True) for g in groups)
    else:
        weights = sum(held(g, None) + g.count * g.extra_bytes for g in groups)
        adapter_bytes = 0
    kind_of = [MOE_LAYER if spec.is_moe_layer(i) else DENSE_LAYER for i in range(spec.num_layers)]
    layer_gradients = [layers[k].gradient_shard(group) if layers[k].trains else 0 for k in kind_of]
    always = tail.gathered_bytes(group) + (root.gathered_bytes(group) if root else 0)
    biggest_layer = max(layers.values(), key=lambda g: g.gathered_bytes(group))
    in_flight = {
        FORWARD_LAYER: (biggest_layer.gathered_bytes(group) + biggest_layer.all_gather_buffer(group)
                        + (0 if embed else tail.gathered_bytes(group)) + (root.gathered_bytes(group) if root else 0)),
        # The last all-gather output lives until the root's post-forward: the tail's, or with a tied (never
        # resharded, never re-gathered) tail the top layer's.
        FORWARD_LOGITS: always + (tail.all_gather_buffer(group) if embed else
                                  layers[kind_of_top(spec)].all_gather_buffer(group)),
        LOSS_BACKWARD: always,
    }
    per_layer = []
    for i, kind in enumerate(kind_of):
        this = layers[kind]
        below = embed if i == 0 and embed else layers[kind_of[i - 1]] if i > 0 else None
        above = tail if i == spec.num_layers - 1 else layers[kind_of[i + 1]]
        per_layer.append(
            (tail.gathered_bytes(group) if not embed else 0) + (root.gathered_bytes(group) if root else 0)
            + this.gathered_bytes(group)
            + (below.all_gather_buffer(group) if below else 0)
            + (above.reduce_scatter_input(group) if above.trains else 0)
        )
    own = [layers[k].unsharded_gradients(group) for k in kind_of]
    reduce_flight = []
    for i, kind in enumerate(kind_of):
        below = embed if i == 0 and embed else layers[kind_of[i - 1]] if i > 0 else None
        reduce_flight.append(per_layer[i] - layers[kind].gathered_bytes(group) + layers[kind].reduce_moment(group)
                             - (0 if not ((tail if i == spec.num_layers - 1 else layers[kind_of[i + 1]]).trains)
                                else (tail if i == spec.num_layers - 1 else layers[kind_of[i + 1]])
                                .reduce_scatter_input(group)))
    # The MLP's output projection is the first of a layer's weights backward reaches.
    mlp_own = [layers[k].unsharded_gradients(group, ("down_proj",)) for k in kind_of]
    bottom = layers[kind_of[0]]
    tied_grads = 0
    if not embed and tail.trains:
        # A tied embedding's unit is gathered through the whole step; the lm_head use's gradient waits in its
        # unsharded gradient until the embedding's backward, after every layer.
        tied_grads = tail.unsharded_gradients(group)
        per_layer = [bytes_ + tied_grads for bytes_ in per_layer]
        in_flight[BACKWARD_END] = (tail.gathered_bytes(group) + tied_grads + tail.reduce_scatter_input(group)
                                   + (bottom.reduce_scatter_input(group) if bottom.trains else 0)
                                   + (root.gathered_bytes(group) if root else 0))
    if embed:
        in_flight[BACKWARD_END] = (root.gathered_bytes(group) if root else 0) + max(
            embed.gathered_bytes(group) + (embed.unsharded_gradients(group) if embed.trains else 0)
            + (bottom.reduce_scatter_input(group) if bottom.trains else 0),
            embed.reduce_moment(group),
        )
    root_grads = sum(g.gradient_shard(group) for g in (tail, root) if g is not None and g.trains)
    embed_grads = embed.gradient_shard(group) if embed is not None and embed.trains else 0
    notes = [f"{setup.strategy.value}: FSDP2 (accelerate) shards parameters, gradients and optimizer states over "
             f"{group} GPUs, per decoder layer, the input embedding and an lm_head tail kept gathered from forward to "
             "backward" + ("; trainable parameters upcast to fp32, gathered in 16-bit" if trainable_width == FP32_BYTES
                           and not adapters else "")]
    nccl = communicators(setup) * NCCL_COMMUNICATOR_BYTES
    if setup.offload is Offload.PARAMS:
        host = weights + adapter_bytes + opt.state_bytes + sum(layer_gradients) + root_grads + embed_grads
        notes.append("offload params (CPUOffloadPolicy): sharded parameters, gradients and optimizer states in host "
                     "RAM; the optimizer step runs on the CPU")
        return RankStates(
            weights=sum(g.count * g.extra_bytes for g in groups), lora_adapters=0, optimizer_states=0,
            optimizer_temporaries=0, gradients_at_step=0, layer_gradients=[0] * spec.num_layers,
            before_layer_gradient_bytes=0, in_flight=in_flight, layer_backward_in_flight=per_layer,
            layer_own_gradients=own, layer_mlp_gradients=mlp_own, layer_reduce_in_flight=reduce_flight, host_bytes=host, nccl_bytes=nccl, notes=notes,
        )
    return RankStates(
        weights=weights,
        lora_adapters=adapter_bytes,
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=sum(layer_gradients) + root_grads + embed_grads,
        layer_gradients=layer_gradients,
        # an untied lm_head's gradients are sharded when the tail's backward ends, before any layer's
        before_layer_gradient_bytes=root_grads if embed else 0,
        in_flight=in_flight,
        layer_backward_in_flight=per_layer,
        layer_own_gradients=own,
        layer_mlp_gradients=mlp_own,
        layer_reduce_in_flight=reduce_flight,
        nccl_bytes=nccl,
        notes=notes,
    )
