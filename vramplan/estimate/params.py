"""The parameter inventory: every parameter tensor of a model with its shape, stored width, whether it trains,
whether it is 4-bit, and which decoder layers hold it, grouped by the module that owns it (embedding, final norm,
lm_head, each kind of decoder layer) with the dim-0 size FSDP2 and ZeRO-3 shard along.

The two stacks hold the same tensors differently: peft + bitsandbytes on the Hugging Face stacks (`model_units`)
and torchtune's bf16 modules with torchao NF4 (`torchtune_units`). Weights, gradients, optimizer states and every
strategy read these lists; nothing else in estimate/ lists parameters. Strategies regroup them into their own units:
FSDP2 under accelerate wraps each decoder layer, the embedding and a tail [final norm, lm_head]; ZeRO-1/2 flatten
the trainable tensors. Listing tensors (not totals) keeps each shard's padding and 512-byte block in the per-rank
bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from vramplan.estimate.dtypes import (
    FP32_BYTES,
    HALF_BYTES,
    tensor_bytes,
    unquantized_weight_bytes,
    weight_bytes_per_param,
)
from vramplan.estimate.lora_targets import (
    lora_plan,
    peft_adapted_linears,
    torchtune_adapted_linears,
    torchtune_layer_linears,
)
from vramplan.estimate.quant import nf4_bytes, packed_elements, quantized_linear_bytes
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import Method, TrainingSetup

# The modules parameters are grouped by (accelerate wraps each in its own FSDP2 unit: strategies/fsdp_units.py).
EMBEDDING = "embedding"
FINAL_NORM = "final norm"
LM_HEAD = "lm_head"
DENSE_LAYER = "decoder layer"
MOE_LAYER = "decoder layer (MoE)"
# transformers v5 experts are 3D parameters [E, ...]: dim 0 is the expert (never quantized by bnb).
EXPERT_NAMES = ("experts.gate_up_proj", "experts.down_proj", "experts.gate_up_proj_bias", "experts.down_proj_bias")


class ParamTensor(BaseModel):
    """One parameter: its shape, bytes per stored element, whether the optimizer updates it, whether it is a LoRA
    adapter, and whether it is a 4-bit weight (stored packed: its 4-bit bytes as an (n/4, 1) 16-bit tensor, the
    bnb_4bit_quant_storage=bf16 layout sharding needs)."""

    shape: tuple[int, ...]
    width: int
    trainable: bool
    adapter: bool = False
    quantized: bool = False
    name: str = ""  # the module's name for linears, experts and adapters (e.g. down_proj, down_proj.lora_B)

    @property
    def params(self) -> int:
        """Parameters it counts (a 4-bit weight: its unpacked values)."""
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Dim 0 of the stored tensor."""
        if self.quantized:
            return -(-packed_elements(self.params) // self.width)
        return self.shape[0]

    @property
    def numel(self) -> int:
        """Elements of the stored tensor."""
        return self.rows if self.quantized else self.params

    @property
    def cols(self) -> int:
        return self.numel // self.rows

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.numel * self.width)

    def shard_rows(self, world: int) -> int:
        """torch/distributed/fsdp/_fully_shard/_fsdp_param.py FSDPParam._init_sharded_param: dim 0 is chunked into
        `world` pieces and each rank's piece is padded to ceil(rows / world) rows."""
        return -(-self.rows // world)

    def shard_bytes(self, world: int, width: int | None = None) -> int:
        return tensor_bytes(self.shard_rows(world) * self.cols * (width or self.width))


class Unit(BaseModel):
    """The parameters of one module (or of one kind of decoder layer) and the decoder layers that hold them."""

    name: str
    tensors: list[ParamTensor]
    layers: tuple[int, ...] = ()  # the decoder layers of this kind; empty for the embedding, final norm and lm_head
    # Storage that belongs to the module but is not a parameter (bitsandbytes QuantState absmax and code tables,
    # torchao NF4 scalers and table, the fp32 e_score_correction_bias buffer): never sharded.
    extra_bytes: int = 0

    @property
    def count(self) -> int:
        """How many such modules the model has."""
        return len(self.layers) or 1

    def held_bytes(self, adapter: bool) -> int:
        """One module's stored bytes: its base parameters and extra storage, or its LoRA adapters."""
        params = sum(t.nbytes for t in self.tensors if t.adapter is adapter)
        return params if adapter else params + self.extra_bytes


@dataclass(frozen=True)
class _Storage:
    """How one stack stores the inventory's tensors."""

    dense_width: int  # parameters that are not a layer linear's weight: embeddings, norms, lm_head, biases, experts
    linear_width: int  # the layer linears' weights, unless 4-bit
    adapter_width: int
    trains_base: bool  # full fine-tuning
    quantized: frozenset[str]  # names of the 4-bit layer linears
    quant_state: Callable[[LinearShape], int]  # a 4-bit weight's bytes beyond its packed data
    adapted: Callable[[int], tuple[LinearShape, ...]]  # layer -> its LoRA-adapted linears
    rank: int  # LoRA rank (0 without LoRA)
    output_adapter: bool = False  # torchtune apply_lora_to_output
    v4_experts: bool = False  # transformers 4.x: router and experts are nn.Linear modules

    def dense(self, shape: tuple[int, ...], width: int | None = None, name: str = "") -> ParamTensor:
        """A parameter that is not a layer linear's weight (stored `width` wide, default the dense width)."""
        return ParamTensor(shape=shape, width=width or self.dense_width, trainable=self.trains_base, name=name)


def model_units(spec: ModelSpec, setup: TrainingSetup) -> list[Unit]:
    """The Hugging Face stacks: the load dtype (fp32 for the non-4-bit ones under k-bit preparation), bitsandbytes
    4-bit layer linears under QLoRA (transformers' 4-bit loader replaces nn.Linear modules only), peft's fp32
    adapters (autocast_adapter_dtype=True, peft/tuners/tuners_utils.py)."""
    qlora = setup.method is Method.QLORA

    def quant_state(lin: LinearShape) -> int:
        stored = quantized_linear_bytes(lin.in_features, lin.out_features, setup.quant.double_quant)
        return stored - tensor_bytes(packed_elements(lin.weight_params))

    storage = _Storage(
        dense_width=unquantized_weight_bytes(setup), linear_width=weight_bytes_per_param(setup.precision),
        adapter_width=FP32_BYTES, trains_base=setup.method is Method.FULL,
        quantized=frozenset(spec.linear_names) if qlora else frozenset(), quant_state=quant_state,
        adapted=lambda layer: peft_adapted_linears(spec, setup, layer), rank=setup.lora.rank if setup.lora else 0,
        v4_experts=setup.transformers == 4 and spec.moe is not None,
    )
    return _units(spec, storage)


def torchtune_units(spec: ModelSpec, setup: TrainingSetup) -> list[Unit]:
    """torchtune's recipes: everything bf16, adapters included; under QLoRA torchao NF4 layer linears
    (quantize_base=True), the embedding and the output staying bf16 ("quantize_base is not applied to final
    output_proj").

    lora_llama3_1 / lora_llama3_2: every layer linear is NF4 (LoRALinear, or FrozenNF4Linear where not adapted).
    lora_qwen2: only the adapted ones; the others are plain bf16 nn.Linear (models/qwen2/_component_builders.py
    has no FrozenNF4Linear).
    """
    adapted = torchtune_adapted_linears(spec, setup)
    quantized: tuple[LinearShape, ...] = ()
    if setup.method is Method.QLORA:
        quantized = adapted if spec.family == "qwen2" else torchtune_layer_linears(spec)
    storage = _Storage(
        dense_width=HALF_BYTES, linear_width=HALF_BYTES, adapter_width=HALF_BYTES,
        trains_base=setup.method is Method.FULL, quantized=frozenset(lin.name for lin in quantized),
        quant_state=lambda lin: nf4_bytes(lin.weight_params) - tensor_bytes(packed_elements(lin.weight_params)),
        adapted=lambda layer: adapted, rank=setup.lora.rank if setup.lora else 0,
        output_adapter=setup.lora is not None and lora_plan(setup).output,
    )
    return _units(spec, storage)


def _units(spec: ModelSpec, storage: _Storage) -> list[Unit]:
    """Embedding, final norm, lm_head (untied only), then one unit per kind of decoder layer (dense, MoE)."""
    matrix = (spec.vocab_size, spec.hidden_size)
    units = [Unit(name=EMBEDDING, tensors=[storage.dense(matrix)]),
             Unit(name=FINAL_NORM, tensors=[storage.dense((spec.hidden_size,))])]
    if spec.lm_head_params:
        units.append(Unit(name=LM_HEAD, tensors=[storage.dense(matrix)]))
    if storage.output_adapter:
        # torchtune LoRALinear on the output (on the tied embedding's unit when tied): lora_a [rank, hidden],
        # lora_b [vocab, rank].
        head = units[-1] if spec.lm_head_params else units[0]
        head.tensors += _adapter_tensors(LinearShape(name="output", in_features=spec.hidden_size,
                                                     out_features=spec.vocab_size, bias=False), storage)
    kinds: dict[bool, list[int]] = {}
    for layer in range(spec.num_layers):
        kinds.setdefault(spec.is_moe_layer(layer), []).append(layer)
    for moe, layers in kinds.items():
        units.append(_layer_unit(spec, storage, moe, tuple(layers)))
    return units


def _layer_unit(spec: ModelSpec, storage: _Storage, moe: bool, layers: tuple[int, ...]) -> Unit:
    """One kind of decoder layer: norms, biases, router and experts (MoE), linears, LoRA adapters."""
    layer = layers[0]
    tensors = [storage.dense(shape) for shape in spec.layer_norm_shapes()]
    tensors += [storage.dense((lin.out_features,)) for lin in spec.linears_of(layer) if lin.bias]
    extra = 0
    if moe:
        # DeepSeek-V3 keeps its router weight in fp32 whatever the load dtype and adds an fp32 [E] buffer,
        # e_score_correction_bias (transformers/models/deepseek_v3/modeling_deepseek_v3.py,
        # `_keep_in_fp32_modules_strict`).
        router_width = FP32_BYTES if spec.moe.router_fp32 else storage.dense_width
        weight, *bias = spec.router_tensor_shapes()
        if not storage.v4_experts:  # 4.x's router and experts are nn.Linear modules: with the linears below
            tensors += [storage.dense(weight, router_width)] + [storage.dense(shape) for shape in bias]
            tensors += [storage.dense(shape, name=name)
                        for shape, name in zip(spec.expert_tensor_shapes(), EXPERT_NAMES)]
        if spec.moe.router_fp32:
            extra += tensor_bytes(spec.moe.num_experts * FP32_BYTES)
    linears = [(lin, lin.name in storage.quantized) for lin in spec.linears_of(layer)]
    if moe and storage.v4_experts:  # the 4-bit loader quantizes every nn.Linear, these included, under QLoRA
        linears += [(lin, bool(storage.quantized)) for lin in _v4_router_and_experts(spec)]
    for lin, quantized in linears:
        shape = (lin.out_features, lin.in_features)
        if quantized:
            tensors.append(ParamTensor(shape=shape, width=HALF_BYTES, trainable=False, quantized=True, name=lin.name))
            extra += storage.quant_state(lin)
        else:
            tensors.append(ParamTensor(shape=shape, width=storage.linear_width, trainable=storage.trains_base,
                                       name=lin.name))
    for lin in storage.adapted(layer):
        tensors += _adapter_tensors(lin, storage)
    name = MOE_LAYER if moe else DENSE_LAYER
    return Unit(name=name, tensors=tensors, layers=layers, extra_bytes=extra)


def _v4_router_and_experts(spec: ModelSpec) -> list[LinearShape]:
    """transformers 4.x Mixtral / Qwen3-MoE: the router and every expert's w1/w3/w2 are nn.Linear modules, so the
    4-bit loader quantizes them under QLoRA (and k-bit preparation leaves them 4-bit); otherwise they are stored as
    layer linears."""
    h, inter = spec.hidden_size, spec.moe.expert_intermediate_size
    linears = [LinearShape(name="gate", in_features=h, out_features=spec.moe.num_experts, bias=False)]
    for expert in range(spec.moe.num_experts):
        linears += [LinearShape(name=f"experts.{expert}.{name}", in_features=i, out_features=o, bias=False)
                    for name, i, o in (("w1", h, inter), ("w3", h, inter), ("w2", inter, h))]
    return linears


def _adapter_tensors(lin: LinearShape, storage: _Storage) -> list[ParamTensor]:
    """peft LoraLayer / torchtune LoRALinear: lora_A [rank, in] and lora_B [out, rank]."""
    rank = storage.rank
    return [
        ParamTensor(shape=(rank, lin.in_features), width=storage.adapter_width, trainable=True, adapter=True,
                    name=f"{lin.name}.lora_A"),
        ParamTensor(shape=(lin.out_features, rank), width=storage.adapter_width, trainable=True, adapter=True,
                    name=f"{lin.name}.lora_B"),
    ]


def unit_named(units: list[Unit], name: str) -> Unit | None:
    return next((unit for unit in units if unit.name == name), None)


def layer_units(units: list[Unit]) -> list[Unit]:
    """The units of the decoder layers, one per kind."""
    return [unit for unit in units if unit.layers]


def unit_of_layer(units: list[Unit]) -> list[Unit]:
    """Decoder layer i -> the unit of its kind, for every layer."""
    by_layer: dict[int, Unit] = {i: unit for unit in layer_units(units) for i in unit.layers}
    return [by_layer[i] for i in sorted(by_layer)]


def trainable_shapes(units: list[Unit]) -> list[tuple[int, ...]]:
    """Every trainable tensor's shape, each module repeated as often as the model has it."""
    return [t.shape for unit in units for _ in range(unit.count) for t in unit.tensors if t.trainable]
