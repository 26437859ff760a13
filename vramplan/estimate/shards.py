"""The parameter tensors of each sharding unit (the root module, each decoder layer), and their per-rank shards.

FSDP2 and ZeRO-3 shard every parameter along dim 0 and gather one unit at a time; ZeRO-1/2 and DDP keep the
parameters whole. The inventory here lists each unit's tensors with their dim-0 size, width and whether they train,
so the per-rank bytes include the padding and the 512-byte blocks of each shard.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes, weight_bytes_per_param
from vramplan.estimate.weights import quantized_linear_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup


class ParamTensor(BaseModel):
    """One parameter: dim-0 rows, elements, bytes per element, and whether the optimizer updates it."""

    rows: int
    numel: int
    width: int
    trainable: bool

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.numel * self.width)

    def shard_bytes(self, world: int) -> int:
        """torch/distributed/fsdp/_fully_shard/_fsdp_param.py FSDPParam._init_sharded_param: dim 0 is chunked
        into `world` pieces and each rank's piece is padded to ceil(rows / world) rows."""
        rows = -(-self.rows // world)
        return tensor_bytes(rows * (self.numel // self.rows) * self.width)


class Unit(BaseModel):
    """A module FSDP wraps on its own (HF/accelerate: each decoder layer, then the root model) and how many
    of it the model has."""

    name: str
    count: int
    tensors: list[ParamTensor]
    # Storage that belongs to the unit but is not a parameter (bitsandbytes QuantState absmax and code tables):
    # FSDP leaves it whole on every rank.
    unsharded_extra_bytes: int = 0

    def param_bytes(self, trainable: bool | None = None) -> int:
        return sum(t.nbytes for t in self.tensors if trainable is None or t.trainable is trainable)

    def shard_bytes(self, world: int, trainable: bool | None = None) -> int:
        return sum(t.shard_bytes(world) for t in self.tensors if trainable is None or t.trainable is trainable)

    def gathered_bytes(self, world: int, width: int | None = None) -> int:
        """The unsharded parameters FSDP2 all-gathers: every rank's padded shard, in `width` when a mixed-
        precision policy casts them (FSDPParam.init_unsharded_param), one tensor per parameter."""
        total = 0
        for t in self.tensors:
            rows = -(-t.rows // world) * world
            total += tensor_bytes(rows * (t.numel // t.rows) * (width or t.width))
        return total


def model_units(spec: ModelSpec, setup: TrainingSetup) -> list[Unit]:
    """The root unit (embeddings, final norm, lm_head) and the decoder-layer unit, with their parameters."""
    full = setup.method is Method.FULL
    width = weight_bytes_per_param(setup.precision)
    qlora = setup.method is Method.QLORA
    dense_width = FP32_BYTES if qlora and setup.quant.kbit_prep else width

    def dense(rows: int, cols: int = 1) -> ParamTensor:
        return ParamTensor(rows=rows, numel=rows * cols, width=dense_width, trainable=full)

    root = [dense(spec.vocab_size, spec.hidden_size), dense(spec.hidden_size)]
    if spec.lm_head_params:
        root.append(dense(spec.vocab_size, spec.hidden_size))
    layer = [dense(spec.hidden_size) for _ in range(spec.norms_per_layer)]
    if spec.has_qk_norm:
        layer += [dense(spec.head_dim), dense(spec.head_dim)]
    layer += [dense(lin.out_features) for lin in spec.layer_linears if lin.bias]
    extra = 0
    for lin in spec.layer_linears:
        if qlora:
            # bnb_4bit_quant_storage=bf16 (what FSDP-QLoRA needs): the packed 4-bit data as an (n/4, 1) bf16 tensor.
            packed = -(-lin.weight_params // 2)
            layer.append(ParamTensor(rows=-(-packed // HALF_BYTES), numel=-(-packed // HALF_BYTES),
                                     width=HALF_BYTES, trainable=False))
            extra += quantized_linear_bytes(lin.in_features, lin.out_features, setup.quant.double_quant) - tensor_bytes(
                packed
            )
        else:
            layer.append(ParamTensor(rows=lin.out_features, numel=lin.weight_params, width=width, trainable=full))
    if setup.lora is not None:
        rank = setup.lora.rank
        for lin in spec.lora_linears(setup.lora.targets):
            # peft: lora_A.weight is r x d_in, lora_B.weight d_out x r, kept in fp32 (autocast_adapter_dtype=True)
            layer.append(ParamTensor(rows=rank, numel=rank * lin.in_features, width=FP32_BYTES, trainable=True))
            layer.append(ParamTensor(rows=lin.out_features, numel=lin.out_features * rank, width=FP32_BYTES,
                                     trainable=True))
    return [
        Unit(name="root", count=1, tensors=root),
        Unit(name="decoder layer", count=spec.num_layers, tensors=layer, unsharded_extra_bytes=extra),
    ]
