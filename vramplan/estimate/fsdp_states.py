"""FSDP2 per rank, as HF Trainer + accelerate run it, from the trace of the real engine on CPU
(vramplan/measure/fsdp.py) and torch/distributed/fsdp/_fully_shard/."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.parallel import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LOSS_BACKWARD,
    NCCL_COMMUNICATOR_BYTES,
    RankStates,
    communicators,
    shard_group_size,
)
from vramplan.estimate.shards import (
    DENSE_LAYER,
    EMBEDDING,
    FINAL_NORM,
    LM_HEAD,
    MOE_LAYER,
    ParamTensor,
    Unit,
    model_units,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Offload, Precision, TrainingSetup


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


def fsdp_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
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
