"""Weights held on the GPU: base weights by dtype, 4-bit storage (estimate/quant.py), LoRA adapters, and torchtune's
RoPE buffers; summed over the parameter inventory (estimate/params.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.estimate.params import Unit, model_units
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup

# build_rope_cache, values per position per head_dim: Llama3ScaledRoPE [max_seq_len, head_dim // 2, 2];
# Qwen2RotaryPositionalEmbeddings [max_seq_len, 2 * head_dim].
LLAMA_ROPE_VALUES_PER_POSITION = 1
QWEN2_ROPE_VALUES_PER_POSITION = 2


class WeightMemory(BaseModel):
    """Bytes of the model's own weights and of the LoRA adapters, and the parameter counts behind them."""

    base_bytes: int
    adapter_bytes: int
    total_params: int
    trainable_params: int

    @property
    def total_bytes(self) -> int:
        return self.base_bytes + self.adapter_bytes


def weights_of(units: list[Unit]) -> WeightMemory:
    """What an inventory holds: each module's base and adapter bytes times the number of such modules."""
    return WeightMemory(
        base_bytes=sum(unit.count * unit.held_bytes(adapter=False) for unit in units),
        adapter_bytes=sum(unit.count * unit.held_bytes(adapter=True) for unit in units),
        total_params=sum(unit.count * sum(t.params for t in unit.tensors) for unit in units),
        trainable_params=sum(unit.count * sum(t.params for t in unit.tensors if t.trainable) for unit in units),
    )


def weight_memory(spec: ModelSpec, setup: TrainingSetup) -> WeightMemory:
    """The Hugging Face stacks' weights: load dtype, k-bit preparation, bitsandbytes 4-bit, peft's fp32 adapters."""
    return weights_of(model_units(spec, setup))


def adapter_tensor_elements(spec: ModelSpec, setup: TrainingSetup) -> list[int]:
    """Elements of every peft LoRA tensor (lora_A r x d_in, lora_B d_out x r); none for full fine-tuning."""
    return [t.params for unit in model_units(spec, setup) for _ in range(unit.count) for t in unit.tensors
            if t.adapter]


def max_seq_len(config: dict[str, Any], seq_len: int) -> int:
    """The builder's max_seq_len: torchtune's model builders use the checkpoint's context length
    (models/llama3_1/_model_builders.py llama3_1_8b: 131072 = max_position_embeddings); it sizes the RoPE cache."""
    return max(int(config.get("max_position_embeddings", seq_len)), seq_len)


def rope_buffer_bytes(spec: ModelSpec, config: dict[str, Any], setup: TrainingSetup) -> int:
    """torchtune's RoPE buffers, fp32: theta [head_dim/2] and the cos/sin cache built by rope_init / build_rope_cache.

    Llama3ScaledRoPE (models/llama3_1/_position_embeddings.py): cache [max_seq_len, head_dim/2, 2], one module
    shared by every layer. Qwen2RotaryPositionalEmbeddings (models/qwen2/_positional_embeddings.py): cache
    [max_seq_len, 2 x head_dim] (cos and sin of the doubled frequencies); qwen2() shares one module, while
    lora_qwen2() builds one per layer inside lora_qwen2_self_attention.
    """
    per_position = QWEN2_ROPE_VALUES_PER_POSITION if spec.family == "qwen2" else LLAMA_ROPE_VALUES_PER_POSITION
    theta = tensor_bytes(spec.head_dim // 2 * FP32_BYTES)
    cache = tensor_bytes(max_seq_len(config, setup.seq_len) * per_position * spec.head_dim * FP32_BYTES)
    modules = spec.num_layers if spec.family == "qwen2" and setup.method is not Method.FULL else 1
    return modules * (theta + cache)
