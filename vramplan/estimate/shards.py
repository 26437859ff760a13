"""Every parameter tensor of a model, grouped by the module that owns it (embedding, final norm, lm_head, each kind
of decoder layer), with the dim-0 size FSDP2 and ZeRO-3 shard along.

Strategies regroup these into their own units: FSDP2 under accelerate wraps each decoder layer, the embedding and a
tail [final norm, lm_head]; ZeRO-1/2 flatten the trainable tensors. Listing tensors (not totals) keeps each shard's
padding and 512-byte block in the per-rank bytes.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, tensor_bytes, weight_bytes_per_param
from vramplan.estimate.weights import quantized_linear_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup


class ParamTensor(BaseModel):
    """One parameter: dim-0 rows, elements, bytes per element, whether the optimizer updates it, and whether it is
    a LoRA adapter."""

    rows: int
    numel: int
    width: int
    trainable: bool
    adapter: bool = False
    name: str = ""  # the module's name for linears, experts and adapters (e.g. down_proj, down_proj.lora_B)

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.numel * self.width)

    @property
    def cols(self) -> int:
        return self.numel // self.rows

    def shard_rows(self, world: int) -> int:
        """torch/distributed/fsdp/_fully_shard/_fsdp_param.py FSDPParam._init_sharded_param: dim 0 is chunked into
        `world` pieces and each rank's piece is padded to ceil(rows / world) rows."""
        return -(-self.rows // world)

    def shard_bytes(self, world: int, width: int | None = None) -> int:
        return tensor_bytes(self.shard_rows(world) * self.cols * (width or self.width))


class Unit(BaseModel):
    """The parameters of one module (or of one decoder layer) and how many such modules the model has."""

    name: str
    count: int
    tensors: list[ParamTensor]
    # Storage that belongs to the module but is not a parameter (bitsandbytes QuantState absmax and code tables, the
    # fp32 e_score_correction_bias buffer): never sharded.
    extra_bytes: int = 0

    def param_bytes(self, trainable: bool | None = None) -> int:
        return sum(t.nbytes for t in self.tensors if trainable is None or t.trainable is trainable)

    def elements(self, trainable: bool | None = None) -> int:
        return sum(t.numel for t in self.tensors if trainable is None or t.trainable is trainable)


EMBEDDING = "embedding"
FINAL_NORM = "final norm"
LM_HEAD = "lm_head"
DENSE_LAYER = "decoder layer"
MOE_LAYER = "decoder layer (MoE)"


def model_units(spec: ModelSpec, setup: TrainingSetup) -> list[Unit]:
    """Embedding, final norm, lm_head (untied only), then one unit per kind of decoder layer (dense, MoE)."""
    full = setup.method is Method.FULL
    width = weight_bytes_per_param(setup.precision)
    qlora = setup.method is Method.QLORA
    # prepare_model_for_kbit_training upcasts every non-4-bit parameter to fp32 (peft/utils/other.py).
    dense_width = FP32_BYTES if qlora and setup.quant.kbit_prep else width

    def dense(rows: int, cols: int = 1, at: int | None = None) -> ParamTensor:
        return ParamTensor(rows=rows, numel=rows * cols, width=at or dense_width, trainable=full)

    units = [Unit(name=EMBEDDING, count=1, tensors=[dense(spec.vocab_size, spec.hidden_size)]),
             Unit(name=FINAL_NORM, count=1, tensors=[dense(spec.hidden_size)])]
    if spec.lm_head_params:
        units.append(Unit(name=LM_HEAD, count=1, tensors=[dense(spec.vocab_size, spec.hidden_size)]))
    kinds: dict[bool, list[int]] = {}
    for layer in range(spec.num_layers):
        kinds.setdefault(spec.is_moe_layer(layer), []).append(layer)
    for moe, layers in kinds.items():
        layer = layers[0]
        tensors = [dense(shape[0], _cols(shape)) for shape in spec.layer_norm_shapes()]
        tensors += [dense(lin.out_features) for lin in spec.linears_of(layer) if lin.bias]
        extra = 0
        if moe:
            # DeepSeek-V3 keeps its router in fp32 with an fp32 [E] buffer (`_keep_in_fp32_modules_strict`).
            router_width = FP32_BYTES if spec.moe.router_fp32 else None
            tensors += [dense(shape[0], _cols(shape), router_width) for shape in spec.router_tensor_shapes()]
            # transformers v5 experts are 3D parameters [E, ...]: dim 0 is the expert (never quantized by bnb).
            names = ("experts.gate_up_proj", "experts.down_proj", "experts.gate_up_proj_bias", "experts.down_proj_bias")
            tensors += [dense(shape[0], _cols(shape)).model_copy(update={"name": name})
                        for shape, name in zip(spec.expert_tensor_shapes(), names)]
            if spec.moe.router_fp32:
                extra += tensor_bytes(spec.moe.num_experts * FP32_BYTES)
        for lin in spec.linears_of(layer):
            if qlora:
                # bnb_4bit_quant_storage=bf16 (what sharding needs): the packed 4-bit bytes as an (n/4, 1) bf16 tensor.
                packed = -(-lin.weight_params // 2)
                rows = -(-packed // HALF_BYTES)
                tensors.append(ParamTensor(rows=rows, numel=rows, width=HALF_BYTES, trainable=False, name=lin.name))
                extra += quantized_linear_bytes(lin.in_features, lin.out_features, setup.quant.double_quant)
                extra -= tensor_bytes(packed)
            else:
                tensors.append(ParamTensor(rows=lin.out_features, numel=lin.weight_params, width=width, trainable=full,
                                           name=lin.name))
        if setup.lora is not None:
            rank = setup.lora.rank
            for lin in spec.lora_linears(setup.lora.targets, layer):
                # peft: lora_A.weight r x d_in, lora_B.weight d_out x r, fp32 (autocast_adapter_dtype=True)
                tensors.append(ParamTensor(rows=rank, numel=rank * lin.in_features, width=FP32_BYTES,
                                           trainable=True, adapter=True, name=f"{lin.name}.lora_A"))
                tensors.append(ParamTensor(rows=lin.out_features, numel=lin.out_features * rank, width=FP32_BYTES,
                                           trainable=True, adapter=True, name=f"{lin.name}.lora_B"))
        units.append(Unit(name=MOE_LAYER if moe else DENSE_LAYER, count=len(layers), tensors=tensors,
                          extra_bytes=extra))
    return units


def _cols(shape: tuple[int, ...]) -> int:
    cols = 1
    for size in shape[1:]:
        cols *= size
    return cols


def unit_named(units: list[Unit], name: str) -> Unit | None:
    return next((unit for unit in units if unit.name == name), None)


def layer_units(units: list[Unit]) -> list[Unit]:
    return [unit for unit in units if unit.name in (DENSE_LAYER, MOE_LAYER)]
