"""Weights held on the GPU: base weights by dtype, bitsandbytes 4-bit storage, LoRA adapters."""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes, weight_bytes_per_param
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup

# bitsandbytes/functional.py quantize_4bit: blocksize 64, two 4-bit values per uint8.
QUANT_BLOCK = 64
# Double quantization (compress_statistics=True): absmax stored as uint8, re-quantized in blocks of 256.
NESTED_QUANT_BLOCK = 256
# QuantState.code: the 16-value NF4/FP4 lookup table (fp32) kept per quantized weight; state2.code: 256-value table.
QUANT_CODE_VALUES = 16
NESTED_CODE_VALUES = 256


class WeightMemory(BaseModel):
    """Bytes of the model's own weights and of the LoRA adapters, and the parameter counts behind them."""

    base_bytes: int
    adapter_bytes: int
    total_params: int
    trainable_params: int

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + self.adapter_bytes


def adapter_tensor_shapes(spec: ModelSpec, setup: TrainingSetup) -> list[tuple[int, ...]]:
    """Shape of every LoRA tensor (peft LoraLayer: lora_A is r x d_in, lora_B d_out x r); none for full."""
    return [shape for layer in range(spec.num_layers) for shape in layer_adapter_shapes(spec, setup, layer)]


def layer_adapter_shapes(spec: ModelSpec, setup: TrainingSetup, layer: int) -> list[tuple[int, ...]]:
    """The LoRA tensors of one decoder layer (an MoE model's dense and sparse layers adapt different linears)."""
    if setup.lora is None:
        return []
    rank = setup.lora.rank
    return [
        shape
        for lin in spec.lora_linears(setup.lora.targets, layer)
        for shape in ((rank, lin.in_features), (lin.out_features, rank))
    ]


def adapter_tensor_elements(spec: ModelSpec, setup: TrainingSetup) -> list[int]:
    return [math.prod(shape) for shape in adapter_tensor_shapes(spec, setup)]


def quantized_linear_bytes(in_features: int, out_features: int, double_quant: bool) -> int:
    """Storage of one Linear4bit weight as bitsandbytes allocates it (packed data, absmax, code tables)."""
    numel = in_features * out_features
    blocks = -(-numel // QUANT_BLOCK)
    packed = tensor_bytes(-(-numel // 2))
    code = tensor_bytes(QUANT_CODE_VALUES * FP32_BYTES)
    if not double_quant:
        return packed + tensor_bytes(blocks * FP32_BYTES) + code
    nested_blocks = -(-blocks // NESTED_QUANT_BLOCK)
    absmax_uint8 = tensor_bytes(blocks)
    nested_absmax = tensor_bytes(nested_blocks * FP32_BYTES)
    nested_code = tensor_bytes(NESTED_CODE_VALUES * FP32_BYTES)
    offset = tensor_bytes(FP32_BYTES)
    return packed + absmax_uint8 + nested_absmax + nested_code + offset + code


def _dense_tensor_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Shapes of every parameter that is not an nn.Linear weight: embeddings, lm_head, norms, biases, and an MoE's
    3D experts and router (transformers' 4-bit loader replaces nn.Linear modules only)."""
    shapes: list[tuple[int, ...]] = [(spec.vocab_size, spec.hidden_size), (spec.final_norm_params,)]
    if spec.lm_head_params:
        shapes.append((spec.vocab_size, spec.hidden_size))
    for layer in range(spec.num_layers):
        shapes += _layer_dense_shapes(spec, layer)
    return shapes


def _layer_dense_shapes(spec: ModelSpec, layer: int) -> list[tuple[int, ...]]:
    shapes = spec.layer_norm_shapes() + [(lin.out_features,) for lin in spec.linears_of(layer) if lin.bias]
    if spec.is_moe_layer(layer):
        shapes += spec.router_tensor_shapes() + spec.expert_tensor_shapes()
    return shapes


def _fp32_router_bytes(spec: ModelSpec, width: int) -> int:
    """DeepSeek-V3 keeps its router weight in fp32 whatever the load dtype and adds an fp32 [E] buffer,
    e_score_correction_bias (transformers/models/deepseek_v3/modeling_deepseek_v3.py,
    `_keep_in_fp32_modules_strict`): the extra bytes over counting the router at `width`."""
    if spec.moe is None or not spec.moe.router_fp32:
        return 0
    e = spec.moe.num_experts
    per_layer = tensor_bytes(e * spec.hidden_size * FP32_BYTES) - tensor_bytes(e * spec.hidden_size * width)
    return len(spec.moe_layer_ids) * (per_layer + tensor_bytes(e * FP32_BYTES))


def _dense_tensors(spec: ModelSpec) -> list[int]:
    return [math.prod(shape) for shape in _dense_tensor_shapes(spec)]


def weight_memory(spec: ModelSpec, setup: TrainingSetup) -> WeightMemory:
    width = weight_bytes_per_param(setup.precision)
    dense = _dense_tensors(spec)
    linears = spec.all_layer_linears
    if setup.method is Method.QLORA:
        # peft prepare_model_for_kbit_training casts every non-4-bit bf16/fp16 parameter to fp32 (peft/utils/other.py).
        dense_width = FP32_BYTES if setup.quant.kbit_prep else width
        base = sum(tensor_bytes(n * dense_width) for n in dense)
        base += sum(
            quantized_linear_bytes(lin.in_features, lin.out_features, setup.quant.double_quant) for lin in linears
        )
        base += _fp32_router_bytes(spec, dense_width)
    else:
        base = sum(tensor_bytes(n * width) for n in dense) + sum(
            tensor_bytes(lin.weight_params * width) for lin in linears
        )
        base += _fp32_router_bytes(spec, width)
    adapter_tensors = adapter_tensor_elements(spec, setup)
    # peft autocast_adapter_dtype=True keeps adapters in fp32 (peft/tuners/tuners_utils.py).
    adapters = sum(tensor_bytes(n * FP32_BYTES) for n in adapter_tensors)
    adapter_params = sum(adapter_tensors)
    trainable = spec.total_params if setup.method is Method.FULL else adapter_params
    return WeightMemory(
        base_bytes=base,
        adapter_bytes=adapters,
        total_params=spec.total_params + adapter_params,
        trainable_params=trainable,
    )


def trainable_tensor_shapes(spec: ModelSpec, setup: TrainingSetup) -> list[tuple[int, ...]]:
    """Shape of each trainable tensor (for per-tensor gradients, optimizer states and temporaries)."""
    if setup.method is Method.FULL:
        linears = [(lin.out_features, lin.in_features) for lin in spec.all_layer_linears]
        return _dense_tensor_shapes(spec) + linears
    return adapter_tensor_shapes(spec, setup)


def layer_gradient_bytes(spec: ModelSpec, setup: TrainingSetup, layer: int | None = None) -> int:
    """Gradient bytes of one decoder layer's trainable tensors (linears, norms, biases, experts; or its adapters).

    `layer` defaults to the layer `spec.layer_linears` describes (an MoE model's first sparse layer)."""
    if layer is None:
        layer = spec.moe_layer_ids[0] if spec.moe_layer_ids else 0
    width = trainable_bytes_per_param(setup)
    if setup.method is Method.FULL:
        per_layer = _layer_dense_shapes(spec, layer)
        per_layer += [(lin.out_features, lin.in_features) for lin in spec.linears_of(layer)]
    else:
        per_layer = layer_adapter_shapes(spec, setup, layer)
    return sum(tensor_bytes(math.prod(shape) * width) for shape in per_layer)


def trainable_bytes_per_param(setup: TrainingSetup) -> int:
    """Trainable tensors' dtype: the load dtype for full fine-tuning, fp32 for peft adapters."""
    if setup.method is Method.FULL:
        return weight_bytes_per_param(setup.precision)
    return FP32_BYTES
