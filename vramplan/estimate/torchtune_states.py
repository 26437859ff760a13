"""What a torchtune single-device recipe keeps on the GPU for the whole step: weights (bf16 or torchao NF4), the
RoPE cache, LoRA adapters, optimizer states, and the batch. Pure arithmetic; no torch import.

Sources are torchtune 0.6.1 and torchao 0.16.0 (the NF4 code in torchao/dtypes/nf4tensor.py is the same in 0.15;
torchtune.training needs two torchao names 0.16 dropped, restored by vramplan/measure/torchtune_compat.py).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from vramplan.errors import NotModelledError, UsageError
from vramplan.estimate.dtypes import FP32_BYTES, HALF_BYTES, INT64_BYTES, tensor_bytes
from vramplan.estimate.optimizer import optimizer_memory
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import ALL_LINEAR, Method, TrainingSetup

# torchtune's names for the adapted linears (torchtune/models/llama3_1/_component_builders.py, lora_llama3_1):
# attention through lora_attn_modules; the MLP's w1 (gate), w2 (down), w3 (up) all at once by apply_lora_to_mlp.
ATTENTION_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
MLP_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
SUPPORTED_FAMILIES = ("llama", "qwen2")
# torchao/dtypes/nf4tensor.py to_nf4: block_size=64 (one scaler per 64 values), scaler_block_size=256 (the
# scalers are themselves quantized to int8 in blocks of 256, with one factor per block in the weight's dtype).
NF4_BLOCK = 64
NF4_SCALER_BLOCK = 256
# NF4Tensor.from_tensor: the 16-entry `nf4` lookup table, kept per weight in the weight's dtype.
NF4_TABLE_VALUES = 16
# build_rope_cache, values per position per head_dim: Llama3ScaledRoPE [max_seq_len, head_dim // 2, 2];
# Qwen2RotaryPositionalEmbeddings [max_seq_len, 2 * head_dim].
LLAMA_ROPE_VALUES_PER_POSITION = 1
QWEN2_ROPE_VALUES_PER_POSITION = 2


class LoraPlan(BaseModel):
    """vramplan's lora_targets in torchtune's terms (vramplan names kept for the spec's LinearShapes)."""

    attn: tuple[str, ...]  # vramplan names among q_proj, k_proj, v_proj, o_proj
    mlp: bool
    output: bool

    @property
    def adapted(self) -> set[str]:
        return set(self.attn) | (set(MLP_NAMES) if self.mlp else set())

    @property
    def torchtune_attn(self) -> list[str]:
        return [ATTENTION_NAMES[name] for name in self.attn]


def lora_plan(setup: TrainingSetup) -> LoraPlan:
    """Map q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (and lm_head) onto torchtune's switches."""
    targets = setup.lora.targets
    names = tuple(ATTENTION_NAMES) + tuple(MLP_NAMES) if targets == ALL_LINEAR else targets
    unknown = [name for name in names if name not in {**ATTENTION_NAMES, **MLP_NAMES, "lm_head": ""}]
    if unknown:
        raise UsageError(
            f"--lora-targets {unknown[0]}: torchtune adapts q_proj, k_proj, v_proj, o_proj (output_proj), "
            "gate_proj/up_proj/down_proj (w1/w3/w2, all three together) and lm_head (output)"
        )
    mlp = [name for name in names if name in MLP_NAMES]
    if mlp and len(mlp) != len(MLP_NAMES):
        raise NotModelledError(
            "torchtune adapts the MLP's w1, w2 and w3 together (apply_lora_to_mlp); "
            f"--lora-targets with only {','.join(mlp)} cannot be expressed"
        )
    attn = tuple(name for name in ATTENTION_NAMES if name in names)
    if not attn:
        raise NotModelledError("torchtune's LoRA builders need at least one attention projection (lora_attn_modules)")
    return LoraPlan(attn=attn, mlp=bool(mlp), output="lm_head" in names)


def refuse_unmodelled_family(spec: ModelSpec) -> None:
    if spec.family not in SUPPORTED_FAMILIES or spec.is_moe or spec.mla is not None:
        raise NotModelledError(
            f"--stack torchtune: the {spec.family} family is not modelled (torchtune builders for llama and qwen2)"
        )


def max_seq_len(config: dict[str, Any], seq_len: int) -> int:
    """The builder's max_seq_len: torchtune's model builders use the checkpoint's context length
    (models/llama3_1/_model_builders.py llama3_1_8b: 131072 = max_position_embeddings); it sizes the RoPE cache."""
    return max(int(config.get("max_position_embeddings", seq_len)), seq_len)


def nf4_bytes(numel: int) -> int:
    """torchao NF4Tensor.from_tensor storage: packed nibbles (uint8, numel/2), int8 scalers (numel/64), one bf16
    factor per 256 scalers, the bf16 scaler mean, and the 16-value bf16 table; each its own allocation."""
    if numel % (NF4_BLOCK * NF4_SCALER_BLOCK):
        raise NotModelledError(
            f"torchao to_nf4 needs a weight size divisible by {NF4_BLOCK * NF4_SCALER_BLOCK}; got {numel}"
        )
    scalers = numel // NF4_BLOCK
    return (
        tensor_bytes(numel // 2)
        + tensor_bytes(scalers)
        + tensor_bytes(scalers // NF4_SCALER_BLOCK * HALF_BYTES)
        + tensor_bytes(HALF_BYTES)
        + tensor_bytes(NF4_TABLE_VALUES * HALF_BYTES)
    )


def layer_linears(spec: ModelSpec) -> tuple[LinearShape, ...]:
    return spec.attention_linears + spec.dense_mlp_linears


def quantized_linears(spec: ModelSpec, setup: TrainingSetup) -> tuple[LinearShape, ...]:
    """The layer linears whose weight is NF4 under QLoRA (quantize_base=True); the embedding and the output stay
    bf16 ("quantize_base is not applied to final output_proj").

    lora_llama3_1 / lora_llama3_2: every layer linear (LoRALinear, or FrozenNF4Linear where not adapted).
    lora_qwen2: only the adapted ones; the others are plain bf16 nn.Linear (models/qwen2/_component_builders.py
    has no FrozenNF4Linear).
    """
    if setup.method is not Method.QLORA:
        return ()
    if spec.family == "qwen2":
        adapted = lora_plan(setup).adapted
        return tuple(lin for lin in layer_linears(spec) if lin.name in adapted)
    return layer_linears(spec)


def adapter_shapes(spec: ModelSpec, setup: TrainingSetup) -> list[tuple[int, int]]:
    """LoRALinear.lora_a [rank, in] and lora_b [out, rank] of every adapted linear (modules/peft/lora.py)."""
    if setup.method is Method.FULL:
        return []
    plan, rank = lora_plan(setup), setup.lora.rank
    shapes = [
        shape
        for lin in layer_linears(spec) if lin.name in plan.adapted
        for shape in ((rank, lin.in_features), (lin.out_features, rank))
    ] * spec.num_layers
    if plan.output:
        shapes += [(rank, spec.hidden_size), (spec.vocab_size, rank)]
    return shapes


def base_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Every base parameter: embedding, output (unless tied, TiedLinear), norms' scale, the layer linears, biases."""
    shapes: list[tuple[int, ...]] = [(spec.vocab_size, spec.hidden_size), (spec.hidden_size,)]
    if not spec.tie_word_embeddings:
        shapes.append((spec.vocab_size, spec.hidden_size))
    per_layer: list[tuple[int, ...]] = [(spec.hidden_size,), (spec.hidden_size,)]
    for lin in layer_linears(spec):
        per_layer.append((lin.out_features, lin.in_features))
        if lin.bias:
            per_layer.append((lin.out_features,))
    return shapes + per_layer * spec.num_layers


class ModelState(BaseModel):
    """Bytes held for the whole step."""

    weights: int  # base weights (bf16 or NF4) and the RoPE buffers
    lora_adapters: int
    optimizer_states: int
    optimizer_temporaries: int
    gradients: int  # every trainable parameter's bf16 gradient (what exists at optimizer.step)
    largest_gradient: int  # one parameter's gradient: all that exists at once with optimizer_in_bwd
    embedding_gradient: int  # full fine-tuning, untied: the embedding's gradient, which arrives last
    output_gradient: int  # full fine-tuning: the output projection's (or tied matrix's) gradient, arriving first
    batch: int  # tokens and labels (int64) and the recipe's ignore_labels_cache
    total_params: int
    trainable_params: int


def model_state(spec: ModelSpec, config: dict[str, Any], setup: TrainingSetup) -> ModelState:
    base = base_shapes(spec)
    adapters = adapter_shapes(spec, setup)
    weights = sum(tensor_bytes(math.prod(shape) * HALF_BYTES) for shape in base)
    for lin in quantized_linears(spec, setup):
        numel = lin.in_features * lin.out_features
        weights += spec.num_layers * (nf4_bytes(numel) - tensor_bytes(numel * HALF_BYTES))
    weights += rope_buffer_bytes(spec, config, setup)
    trainable = base if setup.method is Method.FULL else adapters
    opt = optimizer_memory(setup.optimizer, trainable, HALF_BYTES)
    grads = [tensor_bytes(math.prod(shape) * HALF_BYTES) for shape in trainable]
    full = setup.method is Method.FULL
    vocab_matrix = tensor_bytes(spec.vocab_size * spec.hidden_size * HALF_BYTES) if full else 0
    tokens = setup.tokens_per_step
    return ModelState(
        weights=weights,
        lora_adapters=sum(tensor_bytes(math.prod(shape) * HALF_BYTES) for shape in adapters),
        optimizer_states=opt.state_bytes,
        optimizer_temporaries=opt.step_temporary_bytes,
        gradients=sum(grads),
        largest_gradient=max(grads, default=0),
        # A tied output (TiedLinear) accumulates into the embedding's gradient: one V x h gradient, arriving first.
        embedding_gradient=0 if spec.tie_word_embeddings else vocab_matrix,
        output_gradient=vocab_matrix,
        batch=2 * tensor_bytes(tokens * INT64_BYTES) + tensor_bytes(setup.batch_size * INT64_BYTES),
        total_params=sum(math.prod(shape) for shape in base) + sum(math.prod(shape) for shape in adapters),
        trainable_params=sum(math.prod(shape) for shape in trainable),
    )


def rope_buffer_bytes(spec: ModelSpec, config: dict[str, Any], setup: TrainingSetup) -> int:
    """The RoPE buffers, fp32: theta [head_dim/2] and the cos/sin cache built by rope_init / build_rope_cache.

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
