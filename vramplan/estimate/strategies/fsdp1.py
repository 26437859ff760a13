"""FSDP1 per rank (`FullyShardedDataParallel`, FULL_SHARD, use_orig_params) as HF Trainer + accelerate wrap it, from
torch/distributed/fsdp/_flat_param.py and _runtime_utils.py, and the trace of the real engine on CPU
(vramplan/measure/fsdp/flat.py).

Each unit is one flat parameter: the unit's tensors concatenated, padded to a multiple of the world and split into
equal shards. Units: every decoder layer, the root (embedding, final norm, lm_head), and for a peft model every
trainable leaf module (peft's fsdp_auto_wrap_policy: each LoRA A and B on its own). Under Trainer's bf16/fp16,
accelerate upcasts every trainable flat parameter to fp32 and MixedPrecision(param_dtype=reduce_dtype=16-bit)
gathers every unit in 16 bits through a 16-bit copy of the shard (`_mp_shard`); without it (bf16-pure, fp32) units
are gathered in their own dtype. QLoRA's units are gathered in bf16, the 4-bit storage dtype.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes
from vramplan.estimate.params import DENSE_LAYER, EMBEDDING, FINAL_NORM, LM_HEAD, MOE_LAYER, ParamTensor, model_units
from vramplan.estimate.nccl import nccl_bytes
from vramplan.estimate.strategies.states import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    LOSS_BACKWARD,
    OPTIMIZER_STEP,
    RankStates,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Offload, Precision, TrainingSetup


class FlatUnit(BaseModel):
    """One FSDP1 unit (a FlatParamHandle), `count` of them in the model."""

    name: str
    count: int
    tensors: list[ParamTensor]  # in the flat parameter's order
    width: int  # the sharded flat parameter's dtype (after accelerate's upcast)
    gathered_width: int  # the unsharded flat parameter's (MixedPrecision param_dtype, or its own)
    trains: bool
    world: int
    sharded: bool = True  # False under NO_SHARD: the flat parameter whole on every rank, never gathered

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def shard(self) -> int:
        """Elements of one rank's shard: the flat parameter padded to a multiple of the world, split evenly
        (FlatParamHandle._get_shard)."""
        return -(-self.numel // self.world)

    @property
    def sharded_bytes(self) -> int:
        return tensor_bytes(self.shard * self.width)

    @property
    def gathered_bytes(self) -> int:
        """`_full_param_padded`: the padded unsharded flat parameter. NO_SHARD computes with the flat parameter
        itself, or with its 16-bit copy (`_mp_shard`, the whole parameter) under MixedPrecision."""
        if not self.sharded:
            return tensor_bytes(self.numel * self.gathered_width) if self.gathered_width != self.width else 0
        return tensor_bytes(self.shard * self.world * self.gathered_width)

    @property
    def low_precision_shard(self) -> int:
        """`_mp_shard`: the shard cast to param_dtype for the all-gather, freed once it ends (post_unshard)."""
        if not self.sharded:  # the copy is the unit's compute parameter, in gathered_bytes
            return 0
        return tensor_bytes(self.shard * self.gathered_width) if self.gathered_width != self.width else 0

    @property
    def unsharded_gradient(self) -> int:
        """Autograd's gradient of the (unpadded) unsharded flat parameter, in param_dtype."""
        return tensor_bytes(self.numel * self.gathered_width) if self.trains else 0

    def held_gradient(self, skip: str | None = None, names: tuple[str, ...] | None = None) -> int:
        """The gradients of the unit's trainable views as autograd holds them before the flat one exists, one tensor
        each in param_dtype (`names`: only tensors whose name contains one; `skip`: leave out the tensor of
        that unit name, e.g. the embedding whose gradient arrives last)."""
        if not self.trains:
            return 0
        return sum(tensor_bytes(t.numel * self.gathered_width) for t in self.tensors
                   if t.trainable and t.name != skip and (names is None or any(n in t.name for n in names)))

    @property
    def concatenated_gradient(self) -> int:
        """When the unit's last view gradient arrives: every view's gradient and their concatenation."""
        return self.held_gradient() + self.unsharded_gradient if self.trains else 0

    @property
    def reduce_moment(self) -> int:
        """_reduce_grad: the unsharded gradient, its padded copy (F.pad, when padding is needed), the reduce-scatter
        output in reduce_dtype and its cast to the parameter's dtype (_cast_grad_to_param_dtype)."""
        if not self.trains:
            return 0
        if not self.sharded:  # _reduce_grad_no_shard: all-reduce in place, then the cast
            return self.unsharded_gradient + (self.gradient_shard if self.gathered_width != self.width else 0)
        padded = tensor_bytes(self.shard * self.world * self.gathered_width) if self.shard * self.world != self.numel \
            else 0
        output = tensor_bytes(self.shard * self.gathered_width)
        cast = self.gradient_shard if self.gathered_width != self.width else 0
        return self.unsharded_gradient + padded + output + cast

    @property
    def gradient_shard(self) -> int:
        """The sharded gradient kept for the optimizer (`_saved_grad_shard`, then `.grad`), in the parameter's dtype."""
        return tensor_bytes(self.shard * self.width) if self.trains else 0

    def rank0_trainable(self) -> list[tuple[int, ...]]:
        """The trainable tensors' pieces in rank 0's shard (use_orig_params: the optimizer sees each original
        parameter as a 1-D view of its part of the shard; a parameter outside the shard gets no gradient)."""
        pieces, start = [], 0
        for t in self.tensors:
            inside = min(t.numel, max(0, self.shard - start))
            if inside and t.trainable:
                pieces.append((inside,))
            start += t.numel
        return pieces


def fsdp1_shard_world(setup: TrainingSetup) -> int:
    """Ranks a flat parameter is sharded over: HYBRID_SHARD shards within the node's GPUs and all-reduces the shards
    across nodes (_init_utils._init_process_group_state_for_hybrid_shard, device_count() per node), NO_SHARD
    keeps it whole on every rank."""
    return {"hybrid-shard": setup.gpus, "no-shard": 1}.get(setup.fsdp1_sharding, setup.world_size)


def _flat_order(tensors: list[ParamTensor]) -> list[ParamTensor]:
    """A decoder layer's parameters in registration order: attention and MLP linears (and their adapters), then the
    norms (LlamaDecoderLayer: self_attn, mlp, input_layernorm, post_attention_layernorm)."""
    return [t for t in tensors if len(t.shape) != 1] + [t for t in tensors if len(t.shape) == 1]


def fsdp1_units(spec: ModelSpec, setup: TrainingSetup) -> list[FlatUnit]:
    """accelerate's FSDP1 wrapping of the model: the transformer-layer policy (plus peft's leaf policy for
    adapters), and the widths the Trainer's precision gives each unit."""
    world = fsdp1_shard_world(setup)
    qlora = setup.method is Method.QLORA
    mixed = qlora or setup.precision not in (Precision.FP32, Precision.BF16_PURE)
    upcast = setup.precision not in (Precision.FP32, Precision.BF16_PURE)  # accelerate's mixed_precision != "no"
    peft = setup.method is not Method.FULL
    units = {unit.name: unit for unit in model_units(spec, setup)}

    def flat(name: str, tensors: list[ParamTensor], count: int) -> FlatUnit:
        own = max(t.width for t in tensors)
        trains = any(t.trainable for t in tensors)
        width = FP32_BYTES if upcast and trains else own
        return FlatUnit(name=name, count=count, tensors=tensors, width=width,
                        gathered_width=HALF_BYTES if mixed else own, trains=trains, world=world,
                        sharded=setup.fsdp1_sharding != "no-shard")

    flats = []
    for kind in (DENSE_LAYER, MOE_LAYER):
        if kind not in units:
            continue
        unit = units[kind]
        base = _flat_order([t for t in unit.tensors if not t.adapter])
        flats.append(flat(kind, base, unit.count))
        if peft:
            flats += [flat(f"{kind}: {t.name}", [t], unit.count) for t in unit.tensors if t.adapter]
    root = [t.model_copy(update={"name": name})
            for name in (EMBEDDING, FINAL_NORM, LM_HEAD) if name in units for t in units[name].tensors]
    flats.append(flat("root", root, 1))
    return flats


FSDP1_SHARDING_NOTES = {
    "full-shard": "FULL_SHARD",
    "shard-grad-op": "SHARD_GRAD_OP (layers kept gathered from forward to backward)",
    "hybrid-shard": "HYBRID_SHARD (sharded over the node's {gpus} GPUs, shards all-reduced in place across nodes)",
    "no-shard": "NO_SHARD (every flat parameter whole on each rank, gradients all-reduced in place)",
}
# Layers held gathered beyond the modes' own through the backward by forward_prefetch's prefetches in the recompute,
# by SHARD_GRAD_OP (False: FULL_SHARD; True: SHARD_GRAD_OP); the most our FSDP1 traces show (tests/estimate/
# test_fsdp1_rules.py, the matrix's forward-prefetch cases)
RECOMPUTE_PREFETCHED_LAYERS = {False: 2, True: 1}


def forward_prefetched(layers: dict[str, FlatUnit], layer_count: int, setup: TrainingSetup) -> int:
    """forward_prefetch: each unit's pre-forward all-gathers the next unit in pre-forward order
    (_runtime_utils._pre_forward_unshard -> _prefetch_handle; _exec_order_utils.get_handle_to_forward_prefetch), so
    while a layer runs the next layer is gathered too, with its 16-bit shard copy (under peft, the layer's last
    adapter unit prefetches it). The backward's recompute is fsdp1_states' RECOMPUTE_PREFETCHED_LAYERS."""
    if not setup.forward_prefetch or layer_count < 2 or setup.fsdp1_sharding in ("shard-grad-op", "no-shard"):
        return 0
    return max(u.gathered_bytes + u.low_precision_shard for u in layers.values())


def fsdp1_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """One rank under FSDP1 (FULL_SHARD or SHARD_GRAD_OP, use_orig_params, backward prefetch as set).

    - Sharded: every unit's flat parameter, the trainable ones' gradients and optimizer states.
    - Forward: the root is unsharded from its pre-forward to its post-backward (FSDP1 never reshards the root after
      forward, `_post_forward_reshard`); each other unit while its module runs (its 16-bit shard copy too, during
      the all-gather).
    - Backward of layer i: the root and layer i unsharded (re-gathered in its pre-backward) and, when the layer
      trains, its unsharded flat gradient, reduce-scattered once its backward ends. Under full fine-tuning the root's
      gradient (lm_head's, in a root-sized flat buffer) waits in autograd until the embedding's backward, last.
    """
    flats = fsdp1_units(spec, setup)
    root = flats[-1]
    layers = {u.name: u for u in flats if u.name in (DENSE_LAYER, MOE_LAYER)}
    adapters = [u for u in flats if ": " in u.name]
    kind_of = [MOE_LAYER if spec.is_moe_layer(i) else DENSE_LAYER for i in range(spec.num_layers)]
    adapters_of = {kind: [u for u in adapters if u.name.startswith(kind + ":")] for kind in layers}

    trainable = [piece for u in flats for _ in range(u.count) for piece in u.rank0_trainable()]
    width = max((u.width for u in flats if u.trains), default=FP32_BYTES)
    opt = optimizer_memory(setup.optimizer, trainable, width)
    units_replicated = model_units(spec, setup)
    extra = sum(unit.count * unit.extra_bytes for unit in units_replicated)
    frozen = sum(u.count * u.sharded_bytes for u in flats if not u.trains)
    trained = sum(u.count * u.sharded_bytes for u in flats if u.trains)
    peft = setup.method is not Method.FULL
    weights = frozen + extra + (0 if peft else trained)
    adapter_bytes = trained if peft else 0

    def layer_gathered(kind: str) -> int:
        """A layer's unit gathered, with the largest of its adapter units gathered beside it (each adapter unit is
        unsharded only while its own Linear runs)."""
        biggest_adapter = max((u.gathered_bytes + u.low_precision_shard for u in adapters_of[kind]), default=0)
        return layers[kind].gathered_bytes + biggest_adapter

    layer_grads = [layers[k].gradient_shard + sum(u.gradient_shard for u in adapters_of[k]) for k in kind_of]
    # Autograd holds each gradient of a unit's views until the unit's last one arrives, then concatenates them into
    # the flat gradient (the views' split backward): lm_head's (and the final norm's) wait through every layer's
    # backward for the embedding's, at the end.
    held_root = root.held_gradient(EMBEDDING if spec.lm_head_params else None)
    biggest = max(layers, key=lambda k: layer_gathered(k) + layers[k].low_precision_shard)
    prefetch = setup.backward_prefetch
    # SHARD_GRAD_OP: no reshard after forward (_post_forward_reshard frees only under FULL_SHARD); each layer's
    # units, adapters included, stay gathered from its forward to its post-backward. Nothing is left to prefetch.
    kept_from_forward = setup.fsdp1_sharding == "shard-grad-op"
    gathered_layers = [layers[k].gathered_bytes + sum(u.gathered_bytes for u in adapters_of[k]) for k in kind_of]

    def still_gathered(below: int) -> int:
        """Layers 0..below-1 still gathered from the forward (SHARD_GRAD_OP)."""
        return sum(gathered_layers[:below]) if kept_from_forward else 0

    def prefetched(i: int | None) -> int:
        """What the backward prefetch of layer i's unit (None: the root's) gathers early: the unit before it in
        post-forward order (_exec_order_utils.get_handle_to_backward_prefetch). The root's: the top layer. Layer
        i's: the layer below (none below layer 0: the root is gathered already), or under peft the layer's own last
        adapter unit, whose post-forward ran just before the layer's."""
        if prefetch == "none" or kept_from_forward:
            return 0
        if i is None:
            return layers[kind_of[-1]].gathered_bytes
        if adapters:
            return max(u.gathered_bytes for u in adapters_of[kind_of[i]])
        return layers[kind_of[i - 1]].gathered_bytes if i > 0 else 0

    # BACKWARD_PRE issues it in the pre-backward hook (beside the layer's backward); BACKWARD_POST in the
    # post-backward hook (beside its reduce-scatter).
    pre = prefetch == "backward-pre"
    layer_count = len(kind_of)
    in_flight = {
        FORWARD_LAYER: root.gathered_bytes + layer_gathered(biggest) + still_gathered(layer_count - 1)
        + forward_prefetched(layers, layer_count, setup),
        FORWARD_LOGITS: root.gathered_bytes + still_gathered(layer_count),
        LOSS_BACKWARD: root.gathered_bytes + (prefetched(None) if pre else 0) + still_gathered(layer_count),
        OPTIMIZER_STEP: 0,
    }
    # forward_prefetch with checkpointing under full fine-tuning: the recompute's pre-forwards prefetch too, and the
    # traced steady steps hold one or two more layers gathered through the backward (two with a backward prefetch,
    # one under SHARD_GRAD_OP); the upper end of the traces, none under peft, whose frozen layers trace none
    recompute_prefetch = RECOMPUTE_PREFETCHED_LAYERS[kept_from_forward] * max(
        u.gathered_bytes for u in layers.values()) if (
        setup.forward_prefetch and setup.gradient_checkpointing and not peft and layer_count > 1) else 0
    per_layer, own, mlp, reduce = [], [], [], []
    for i, kind in enumerate(kind_of):
        unit = layers[kind]
        early = prefetched(i) + still_gathered(i) + recompute_prefetch
        during = early if pre or kept_from_forward else recompute_prefetch
        per_layer.append(root.gathered_bytes + held_root + layer_gathered(kind) + during)
        own.append(unit.concatenated_gradient + sum(u.unsharded_gradient for u in adapters_of[kind]))
        mlp.append(unit.held_gradient(names=("down_proj",)) + sum(
            u.unsharded_gradient for u in adapters_of[kind] if "down_proj" in u.name))
        # reduce-scatter of the layer's flat gradient after its post-backward reshard (and prefetch)
        reduce.append(root.gathered_bytes + held_root + early + max(
            [unit.reduce_moment, *(u.reduce_moment for u in adapters_of[kind])]))
    if root.trains:
        in_flight[BACKWARD_END] = root.gathered_bytes + max(root.concatenated_gradient, root.reduce_moment)
    sharding = FSDP1_SHARDING_NOTES[setup.fsdp1_sharding].format(gpus=setup.gpus) + (
        "; forward prefetch (the next unit gathered in each pre-forward)" if setup.forward_prefetch else "")
    notes = [f"{setup.strategy.value}: FSDP1 {sharding} (accelerate, use_orig_params) over {setup.world_size} GPUs: "
             "a flat parameter per decoder layer and a root unit (embedding, final norm, lm_head) kept gathered "
             "from forward to backward"
             + ("; each LoRA A and B its own unit (peft fsdp_auto_wrap_policy)" if peft else "")
             + ("; trainable flat parameters upcast to fp32, gathered in 16-bit" if width == FP32_BYTES and
                setup.precision not in (Precision.FP32, Precision.BF16_PURE) else "")]
    flight = dict(layer_own_gradients=own, layer_mlp_gradients=mlp, nccl_bytes=nccl_bytes(setup), notes=notes)
    if setup.offload is Offload.PARAMS:
        # CPUOffload: shards, their gradients (`_cpu_grad`) and the optimizer step on the host. The traces hold a
        # device copy of the running trainable units' shards (root and a layer: FlatParamHandle.flat_param_to /
        # _use_low_precision_shard copy each shard to the GPU before its all-gather); frozen units show none
        trained_units = [u for u in (*layers.values(), *adapters) if u.trains]
        copies = (root.sharded_bytes if root.trains else 0) + max((u.sharded_bytes for u in trained_units), default=0)
        notes.append("offload params (FSDP1 CPUOffload): sharded flat parameters, their gradients and the optimizer "
                     "step in host RAM; each gathered unit's shard copied to the GPU first")
        host = weights + adapter_bytes + opt.state_bytes + sum(layer_grads) + root.gradient_shard
        return RankStates(
            weights=extra, lora_adapters=0, optimizer_states=0, optimizer_temporaries=0, gradients_at_step=0,
            # each reduced shard stays on the GPU (`_saved_grad_shard`, _accumulate_sharded_grad) beside its host
            # copy until prepare_gradient_for_optim, after the backward
            layer_gradients=layer_grads, before_layer_gradient_bytes=0, host_bytes=host,
            in_flight={moment: bytes_ + copies for moment, bytes_ in in_flight.items() if moment != OPTIMIZER_STEP},
            layer_backward_in_flight=[b + copies for b in per_layer],
            layer_reduce_in_flight=[b + copies for b in reduce], **flight,
        )
    return RankStates(
        weights=weights, lora_adapters=adapter_bytes, optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=sum(layer_grads) + root.gradient_shard, layer_gradients=layer_grads,
        before_layer_gradient_bytes=0, in_flight=in_flight, layer_backward_in_flight=per_layer,
        layer_reduce_in_flight=reduce, **flight,
    )
