"""FSDP2's units as accelerate makes them (`fully_shard` per decoder layer, input embedding, lm_head tail, root) and
the bytes of each: sharded, gathered, all-gather and reduce-scatter buffers, gradients
(torch/distributed/fsdp/_fully_shard/)."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes
from vramplan.estimate.params import (
    DENSE_LAYER,
    EMBEDDING,
    FINAL_NORM,
    LM_HEAD,
    MOE_LAYER,
    ParamTensor,
    Unit,
    model_units,
    torchtune_units,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Precision, Stack, TrainingSetup


class FsdpGroup(BaseModel):
    """One `fully_shard` unit as accelerate makes it, with the widths FSDP2 gives its tensors."""

    name: str
    count: int
    tensors: list[ParamTensor]
    extra_bytes: int  # replicated on every rank (QuantStates, buffers)
    reshard_after_forward: bool
    sharded_widths: list[int]  # per tensor: what the sharded parameter is stored as
    gathered_width: int | None  # MixedPrecisionPolicy.param_dtype width, None: each tensor's own

    def _gathered(self, t: ParamTensor, group: int) -> int:
        """One tensor unsharded: its padded rows from every rank, in the gathered dtype (bytes, not yet rounded)."""
        return t.shard_rows(group) * group * t.cols * (self.gathered_width or t.width)

    def sharded_bytes(self, group: int, trainable: bool | None = None) -> int:
        return sum(t.shard_bytes(group, w) for t, w in zip(self.tensors, self.sharded_widths)
                   if trainable is None or t.trainable is trainable)

    def gathered_bytes(self, group: int) -> int:
        """Unsharded parameters, one padded tensor each (FSDPParam.init_all_gather_outputs)."""
        return sum(tensor_bytes(self._gathered(t, group)) for t in self.tensors)

    def all_gather_buffer(self, group: int) -> int:
        """The flat all-gather output (_fsdp_collectives.py foreach_all_gather): one storage for the unit."""
        return tensor_bytes(sum(self._gathered(t, group) for t in self.tensors))

    def gradient_shard(self, group: int) -> int:
        """Sharded gradients: one flat storage per unit in the sharded parameters' dtype (foreach_reduce's
        reduce-scatter output cast back to orig_dtype, viewed per parameter)."""
        return tensor_bytes(sum(t.shard_rows(group) * t.cols * w for t, w in zip(self.tensors, self.sharded_widths)
                                if t.trainable))

    def unsharded_gradients(self, group: int, names: tuple[str, ...] | None = None) -> int:
        """Autograd's gradients of the unsharded parameters, in the gathered dtype, one tensor each (`names`: only
        the tensors whose module name contains one of them)."""
        return sum(tensor_bytes(self._gathered(t, group))
                   for t in self.tensors if t.trainable and (names is None or any(n in t.name for n in names)))

    def reduce_moment(self, group: int) -> int:
        """post_backward's foreach_reduce: the unsharded gradients being copied into the flat reduce-scatter input,
        the reduce-scatter output (one shard in the reduce dtype) and its cast back to the sharded dtype
        (`_to_dtype_if_needed(reduce_output, orig_dtype)` in _fsdp_collectives.py)."""
        if not self.trains:
            return 0
        output_elements = sum(t.shard_rows(group) * t.cols for t in self.tensors if t.trainable)
        reduce_width = self.gathered_width or max(t.width for t in self.tensors if t.trainable)
        output = tensor_bytes(output_elements * reduce_width)
        cast = self.gradient_shard(group) if self.gradient_shard(group) != output else 0
        return self.unsharded_gradients(group) + self.reduce_scatter_input(group) + output + cast

    def reduce_scatter_input(self, group: int) -> int:
        """foreach_reduce's flat input: every trainable parameter's padded gradient in the reduce dtype."""
        return tensor_bytes(sum(self._gathered(t, group) for t in self.tensors if t.trainable))

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
    if setup.stack is Stack.TORCHTUNE:
        return torchtune_fsdp_groups(spec, setup)
    mixed = setup.precision not in (Precision.FP32, Precision.BF16_PURE)  # accelerate mixed_precision != "no"
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


TORCHTUNE_ROOT = "tail (torchtune root)"


def torchtune_fsdp_groups(spec: ModelSpec, setup: TrainingSetup) -> list[FsdpGroup]:
    """torchtune/training/_distributed.py shard_model as the distributed recipes call it: `fully_shard` on every
    `layers.i`, then on the root (embedding, final norm, output), all with reshard_after_forward=True and no
    MixedPrecisionPolicy: every tensor sharded and gathered in its own bf16 (NF4's inner tensors as stored). The
    root's tensors are named by unit so the backward can tell the embedding's gradient, which arrives last."""
    units = {unit.name: unit for unit in torchtune_units(spec, setup)}

    def group(name: str, tensors: list[ParamTensor], count: int, extra: int) -> FsdpGroup:
        return FsdpGroup(name=name, count=count, tensors=tensors, extra_bytes=extra, reshard_after_forward=True,
                         sharded_widths=[t.width for t in tensors], gathered_width=None)

    groups = [group(kind, units[kind].tensors, units[kind].count, units[kind].extra_bytes)
              for kind in (DENSE_LAYER, MOE_LAYER) if kind in units]
    root = [t.model_copy(update={"name": t.name or name})
            for name in (EMBEDDING, FINAL_NORM, LM_HEAD) if name in units for t in units[name].tensors]
    extra = sum(units[name].extra_bytes for name in (EMBEDDING, FINAL_NORM, LM_HEAD) if name in units)
    groups.append(group(TORCHTUNE_ROOT, root, 1, extra))
    return groups
