"""A whole Hugging Face decoder layer's saved tensors (norms, attention, MLP or MoE block, LoRA copies), and what all
layers keep through the forward, with or without gradient checkpointing."""

from __future__ import annotations

from vramplan.estimate.components.activations.adapters import adapted_names, lora_input_copies
from vramplan.estimate.components.activations.attention import masked_layer_ids, mla_saved_bytes, sdpa_saved
from vramplan.estimate.components.activations.flow import Flow, default_layer, dtype_flow, hidden_state_bytes
from vramplan.estimate.components.activations.mlp import swiglu_saved
from vramplan.estimate.components.activations.moe import (
    experts_saved_bytes,
    v4_experts_saved_bytes,
    router_saved_bytes,
    shared_gate_saved_bytes,
)
from vramplan.estimate.components.activations.norms import rms_norm_saved
from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup


def layer_saved_bytes(
    spec: ModelSpec,
    setup: TrainingSetup,
    tokens: int,
    input_needs_grad: bool = True,
    masked: bool = False,
    input_kept: bool = False,
    layer: int | None = None,
) -> int:
    """Bytes one decoder layer keeps for backward when it runs without checkpointing.

    `masked`: the layer's SDPA call gets an explicit mask (a sliding-window layer at or past its window).
    `input_kept`: the layer's input is already counted (checkpointing keeps it); an fp32 residual stream makes
    the input norm's `x.to(float32)` that same tensor rather than a copy.
    `layer`: which layer (an MoE model's dense and sparse layers differ); default the one `layer_linears` describes.
    """
    flow = dtype_flow(setup)
    h = spec.hidden_size
    layer = default_layer(spec) if layer is None else layer
    adapted = adapted_names(spec, setup, layer)
    saved: list[int] = []
    gemma = spec.norms_per_layer == 4
    if input_needs_grad or flow.weights_train:
        input_norm = rms_norm_saved(flow.residual, h, flow, tokens, gemma)
        if input_kept and (flow.residual == FP32_BYTES or flow.liger):  # Liger's norm saves the input itself
            input_norm = input_norm[1:]
        saved += input_norm
    # Base linears keep their input only when their weight trains (a frozen weight needs no input for its grad).
    if flow.keeps_linear_inputs:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    saved += _attention_saved(spec, setup, flow, tokens, masked, layer)
    if gemma:  # post_attention_layernorm on the attention output, before the residual add
        saved += rms_norm_saved(flow.compute, h, flow, tokens, gemma)
    saved += rms_norm_saved(flow.residual, h, flow, tokens, gemma)
    if flow.keeps_linear_inputs:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    if spec.is_moe_layer(layer):
        saved += moe_block_saved(spec, setup, flow, tokens, layer)
    else:
        saved += swiglu_saved(spec.dense_mlp_linears, spec.intermediate_size, setup, flow, tokens, adapted)
    if gemma:  # post_feedforward_layernorm on the MLP output
        saved += rms_norm_saved(flow.compute, h, flow, tokens, gemma)
    return sum(saved)


def _attention_saved(
    spec: ModelSpec, setup: TrainingSetup, flow: Flow, tokens: int, masked: bool, layer: int
) -> list[int]:
    """The attention block between the two norms: the projections' LoRA copies, q/k norms, SDPA or MLA."""
    adapted = adapted_names(spec, setup, layer)
    linears = {lin.name: lin for lin in spec.linears_of(layer)}
    gemma = spec.norms_per_layer == 4
    saved: list[int] = []
    for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"):
        if name in adapted:
            saved += lora_input_copies(linears[name], setup, flow, tokens)
    if spec.has_qk_norm:
        # Qwen3/Gemma3 q_norm and k_norm: RMSNorm over head_dim on the projected queries and keys.
        normed = FP32_BYTES if gemma else flow.compute
        q, kv = spec.q_size, spec.kv_size
        for size, heads in ((q, spec.num_heads), (kv, spec.num_kv_heads)):
            saved += rms_norm_saved(flow.compute, size, flow, tokens)[:1] + [tensor_bytes(tokens * heads * FP32_BYTES)]
        if flow.weights_train and not flow.liger:
            saved += [tensor_bytes(tokens * q * normed), tensor_bytes(tokens * kv * normed)]
    if spec.mla is not None:
        saved += mla_saved_bytes(spec, tokens, flow.compute, flow.linear_out, flow.weights_train, flow.residual)
    else:
        saved += sdpa_saved(spec, setup, flow, tokens, masked)
    if "o_proj" in adapted:
        saved += lora_input_copies(linears["o_proj"], setup, flow, tokens)
    return saved


def moe_block_saved(spec: ModelSpec, setup: TrainingSetup, flow: Flow, tokens: int, layer: int) -> list[int]:
    """Router, grouped_mm experts, and the shared expert with its gate (moe.py)."""
    saved = router_saved_bytes(spec, tokens, flow.compute)
    if flow.autocast and (spec.moe.router_fp32 or flow.residual == FP32_BYTES):
        # F.linear under autocast casts an fp32 router weight to the compute dtype and saves the copy for the
        # input gradient (aten/src/ATen/autocast_mode.cpp cached_cast).
        saved.append(tensor_bytes(spec.moe.num_experts * spec.hidden_size * flow.compute))
    if spec.moe.router_fp32 and flow.weights_train and flow.autocast:
        # DeepseekV3TopkRouter: F.linear(x.type(float32), weight) under autocast saves a compute-dtype copy of x
        # for the router weight's gradient.
        saved.append(tensor_bytes(tokens * spec.hidden_size * flow.compute))
    if setup.transformers == 4:
        saved += v4_experts_saved_bytes(spec, tokens, flow.residual)
    else:
        saved += experts_saved_bytes(spec, tokens, flow.residual, flow.compute, flow.weights_train)
    if spec.moe.shared_intermediate_size:
        adapted = adapted_names(spec, setup, layer)
        shared = tuple(lin for lin in spec.moe_block_linears if lin.name != "shared_expert_gate")
        saved += swiglu_saved(shared, spec.moe.shared_intermediate_size, setup, flow, tokens, adapted)
        saved += shared_gate_saved_bytes(spec, tokens, flow.compute)
        gate = [lin for lin in spec.moe_block_linears if lin.name == "shared_expert_gate"]
        if gate and gate[0].name in adapted:
            saved += lora_input_copies(gate[0], setup, flow, tokens)
    return saved


def activation_bytes(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, int]:
    """(bytes kept through the forward by all layers, bytes of one recomputed layer under checkpointing)."""
    tokens = setup.tokens_per_step
    masked = masked_layer_ids(spec, setup)
    if setup.gradient_checkpointing:
        # transformers GradientCheckpointingLayer: each layer keeps only its input; backward recomputes one layer.
        recompute = layer_saved_bytes(spec, setup, tokens, masked=spec.num_layers - 1 in masked, input_kept=True)
        return spec.num_layers * hidden_state_bytes(spec, setup, tokens), recompute
    first_needs_grad = setup.method is Method.FULL
    saved = saved_by_layer(spec, setup, input_needs_grad_first=first_needs_grad, input_kept=False)
    return sum(saved), 0


def saved_by_layer(spec: ModelSpec, setup: TrainingSetup, input_needs_grad_first: bool, input_kept: bool) -> list[int]:
    """Each layer's saved bytes; layers of one kind (first or not, masked or not, dense or MoE) are computed once."""
    tokens = setup.tokens_per_step
    masked = set(masked_layer_ids(spec, setup))
    by_kind: dict[tuple[bool, bool, bool], int] = {}
    saved = []
    for i in range(spec.num_layers):
        kind = (i == 0, i in masked, spec.is_moe_layer(i))
        if kind not in by_kind:
            by_kind[kind] = layer_saved_bytes(
                spec, setup, tokens, input_needs_grad=input_needs_grad_first or i > 0, masked=i in masked,
                input_kept=input_kept, layer=i,
            )
        saved.append(by_kind[kind])
    return saved
