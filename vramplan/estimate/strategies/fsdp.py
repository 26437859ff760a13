"""FSDP2 per rank, as HF Trainer + accelerate run it, from the trace of the real engine on CPU
(vramplan/measure/fsdp/) and torch/distributed/fsdp/_fully_shard/. The units and their byte rules are in
fsdp_units.py; this file places them at the moments of the step."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.dtypes import FP32_BYTES
from vramplan.estimate.params import DENSE_LAYER, FINAL_NORM, LM_HEAD, MOE_LAYER
from vramplan.estimate.nccl import nccl_bytes
from vramplan.estimate.strategies.fsdp_units import FsdpGroup, fsdp_groups
from vramplan.estimate.strategies.states import (
    BACKWARD_END,
    FORWARD_LAYER,
    FORWARD_LOGITS,
    FORWARD_START,
    LOSS_BACKWARD,
    RankStates,
    shard_group_size,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Offload, Stack, TrainingSetup


class _Units(BaseModel):
    """The fully_shard units of one model, by role, and the sharding group size."""

    group: int
    groups: list[FsdpGroup]
    layers: dict[str, FsdpGroup]  # one per kind of decoder layer
    kind_of: list[str]  # decoder layer i -> its kind
    tail: FsdpGroup
    root: FsdpGroup | None
    embed: FsdpGroup | None
    # torchtune's root (embedding, final norm, output) in place of accelerate's tail: resharded after forward,
    # re-gathered (with its all-gather buffer) from the loss's backward, reduce-scattered after the embedding's
    torchtune: bool = False

    def gathered(self, unit: FsdpGroup | None) -> int:
        return unit.gathered_bytes(self.group) if unit else 0

    def reduce_input(self, unit: FsdpGroup | None) -> int:
        """A unit's reduce-scatter input, when it trains."""
        return unit.reduce_scatter_input(self.group) if unit is not None and unit.trains else 0

    def below(self, i: int) -> FsdpGroup | None:
        """The unit whose parameters layer i's backward prefetches: the layer under it, or the input embedding."""
        if i == 0:
            return self.embed
        return self.layers[self.kind_of[i - 1]]

    def above(self, i: int) -> FsdpGroup | None:
        """The unit whose backward ran just before layer i's: the layer over it, or the tail (torchtune's root
        reduces only after the embedding's backward: none)."""
        if i == len(self.kind_of) - 1:
            return None if self.torchtune else self.tail
        return self.layers[self.kind_of[i + 1]]


def _units(spec: ModelSpec, setup: TrainingSetup) -> _Units:
    groups = fsdp_groups(spec, setup)
    return _Units(
        group=shard_group_size(setup),
        groups=groups,
        layers={g.name: g for g in groups if g.name in (DENSE_LAYER, MOE_LAYER)},
        kind_of=[MOE_LAYER if spec.is_moe_layer(i) else DENSE_LAYER for i in range(spec.num_layers)],
        tail=next(g for g in groups if g.name.startswith("tail")),
        root=next((g for g in groups if g.name.startswith("root")), None),
        embed=next((g for g in groups if g.name == "input embedding"), None),
        torchtune=setup.stack is Stack.TORCHTUNE,
    )


def _forward_in_flight(spec: ModelSpec, u: _Units) -> dict[str, int]:
    """The running layer's unsharded parameters and all-gather output; the tail and root gathered from their forward
    on."""
    group = u.group
    always = u.tail.gathered_bytes(group) + u.gathered(u.root)
    biggest_layer = max(u.layers.values(), key=lambda g: g.gathered_bytes(group))
    top = MOE_LAYER if spec.is_moe_layer(spec.num_layers - 1) else DENSE_LAYER
    return {
        FORWARD_LAYER: (biggest_layer.gathered_bytes(group) + biggest_layer.all_gather_buffer(group)
                        + (0 if u.embed else u.tail.gathered_bytes(group)) + u.gathered(u.root)),
        # The last all-gather output lives until the root's post-forward: the tail's, or with a tied (never
        # resharded, never re-gathered) tail the top layer's.
        FORWARD_LOGITS: always + (u.tail.all_gather_buffer(group) if u.embed else
                                  u.layers[top].all_gather_buffer(group)),
        LOSS_BACKWARD: always + (u.tail.all_gather_buffer(group) if u.torchtune else 0),
        # torchtune: the root's all-gather output lives on through the first layer's all-gather
        **({FORWARD_START: always + u.tail.all_gather_buffer(group) + biggest_layer.gathered_bytes(group)
            + biggest_layer.all_gather_buffer(group)} if u.torchtune else {}),
    }


def _layer_backward_in_flight(u: _Units) -> list[int]:
    """Layer i's backward: its unsharded parameters, the prefetched all-gather output of the unit below it
    (`_backward_prefetch`) and the reduce-scatter input of the unit above it (reduce_scatter_max_input_buffers=1)."""
    group = u.group
    per_layer = []
    for i, kind in enumerate(u.kind_of):
        below = u.below(i)
        per_layer.append(
            (u.tail.gathered_bytes(group) if not u.embed else 0) + u.gathered(u.root)
            + u.layers[kind].gathered_bytes(group)
            + (below.all_gather_buffer(group) if below else 0)
            + u.reduce_input(u.above(i))
        )
    return per_layer


def _reduce_in_flight(u: _Units, per_layer: list[int]) -> list[int]:
    """When layer i's gradients are reduce-scattered: its parameters resharded, its reduce moment, the unit above's
    reduce-scatter input already freed."""
    return [per_layer[i] - u.layers[kind].gathered_bytes(u.group) + u.layers[kind].reduce_moment(u.group)
            - u.reduce_input(u.above(i)) for i, kind in enumerate(u.kind_of)]


def _backward_end(u: _Units) -> tuple[int, int | None]:
    """(bytes every layer's backward also holds, in flight at the input embedding's backward; None: no such moment).

    A tied embedding's unit is gathered through the whole step; the lm_head use's gradient waits in its unsharded
    gradient until the embedding's backward, after every layer. An untied input embedding's backward, last: its
    unsharded parameters and gradients and the bottom layer's reduce-scatter input."""
    group, bottom = u.group, u.layers[u.kind_of[0]]
    if u.embed:
        return 0, u.gathered(u.root) + max(
            u.embed.gathered_bytes(group) + (u.embed.unsharded_gradients(group) if u.embed.trains else 0)
            + u.reduce_input(bottom),
            u.embed.reduce_moment(group),
        )
    if not u.tail.trains:
        return 0, None
    # torchtune's untied root: the output's and final norm's gradients wait, the embedding's arrives at the end
    early = (LM_HEAD, FINAL_NORM) if u.torchtune and any(t.name == LM_HEAD for t in u.tail.tensors) else None
    tied_grads = u.tail.unsharded_gradients(group, early)
    if u.torchtune:  # the root's post_backward reshards, then reduce-scatters (foreach_reduce's copy-in)
        return tied_grads, u.reduce_input(bottom) + max(
            u.tail.gathered_bytes(group) + u.tail.unsharded_gradients(group), u.tail.reduce_moment(group))
    return tied_grads, (u.tail.gathered_bytes(group) + u.tail.unsharded_gradients(group)
                        + u.tail.reduce_scatter_input(group) + u.reduce_input(bottom) + u.gathered(u.root))


def _notes(setup: TrainingSetup, group: int, upcast: bool) -> list[str]:
    notes = [f"{setup.strategy.value}: FSDP2 (accelerate) shards parameters, gradients and optimizer states over "
             f"{group} GPUs, per decoder layer, the input embedding and an lm_head tail kept gathered from forward to "
             "backward" + ("; trainable parameters upcast to fp32, gathered in 16-bit" if upcast else "")]
    if setup.offload is Offload.PARAMS:
        notes.append("offload params (CPUOffloadPolicy): sharded parameters, gradients and optimizer states in host "
                     "RAM; the optimizer step runs on the CPU")
    return notes


def fsdp_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """One rank under FSDP2 as HF Trainer + accelerate run it (reshard_after_forward on), from the trace of the
    real engine on CPU (vramplan/measure/fsdp/) and torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py.

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
    u = _units(spec, setup)
    group, groups = u.group, u.groups
    shards = [(-(-t.rows // group), t.cols) for g in groups for _ in range(g.count) for t in g.tensors if t.trainable]
    trainable_width = max((w for g in groups for t, w in zip(g.tensors, g.sharded_widths) if t.trainable), default=0)
    opt = optimizer_memory(setup.optimizer, shards, trainable_width)
    adapters = setup.method is not Method.FULL
    weights = sum(g.count * (g.sharded_bytes(group, False if adapters else None) + g.extra_bytes) for g in groups)
    adapter_bytes = sum(g.count * g.sharded_bytes(group, True) for g in groups) if adapters else 0
    layer_gradients = [u.layers[k].gradient_shard(group) if u.layers[k].trains else 0 for k in u.kind_of]
    in_flight = _forward_in_flight(spec, u)
    per_layer = _layer_backward_in_flight(u)
    reduce_flight = _reduce_in_flight(u, per_layer)
    tied_grads, end = _backward_end(u)
    per_layer = [bytes_ + tied_grads for bytes_ in per_layer] if tied_grads else per_layer
    if end is not None:
        in_flight[BACKWARD_END] = end
    root_grads = sum(g.gradient_shard(group) for g in (u.tail, u.root) if g is not None and g.trains)
    embed_grads = u.embed.gradient_shard(group) if u.embed is not None and u.embed.trains else 0
    notes = _notes(setup, group, trainable_width == FP32_BYTES and not adapters)
    in_flight_states = dict(
        in_flight=in_flight, layer_backward_in_flight=per_layer, nccl_bytes=nccl_bytes(setup), notes=notes,
        layer_own_gradients=[u.layers[k].unsharded_gradients(group) for k in u.kind_of],
        # The MLP's output projection is the first of a layer's weights backward reaches.
        layer_mlp_gradients=[u.layers[k].unsharded_gradients(group, ("down_proj",)) for k in u.kind_of],
        layer_reduce_in_flight=reduce_flight,
    )
    if setup.offload is Offload.PARAMS:
        host = weights + adapter_bytes + opt.state_bytes + sum(layer_gradients) + root_grads + embed_grads
        return RankStates(
            weights=sum(g.count * g.extra_bytes for g in groups), lora_adapters=0, optimizer_states=0,
            optimizer_temporaries=0, gradients_at_step=0, layer_gradients=[0] * spec.num_layers,
            before_layer_gradient_bytes=0, host_bytes=host, **in_flight_states,
        )
    return RankStates(
        weights=weights, lora_adapters=adapter_bytes, optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients_at_step=sum(layer_gradients) + root_grads + embed_grads, layer_gradients=layer_gradients,
        # an untied lm_head's gradients are sharded when the tail's backward ends, before any layer's
        before_layer_gradient_bytes=root_grads if u.embed else 0, **in_flight_states,
    )
