"""Activations saved for backward by a Hugging Face decoder layer, tensor by tensor.

Each function lists the tensors autograd keeps (or Python keeps alive) for one layer, as bytes for the whole
micro-batch, from reading the transformers/peft forward code and confirmed by tests/estimate/test_trace_crosscheck.py.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.dtypes import (
    BOOL_BYTES,
    FP32_BYTES,
    HALF_BYTES,
    compute_bytes,
    tensor_bytes,
    weight_bytes_per_param,
)
from vramplan.estimate.weights import adapter_tensor_elements
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import Method, Precision, TrainingSetup


class Flow(BaseModel):
    """Dtype widths along the residual stream of one setup, and whether the base weights train."""

    residual: int  # hidden states between layers and RMSNorm outputs (the embedding's and norms' dtype)
    compute: int  # matmul outputs under autocast (or fp32 without)
    linear_out: int  # what a base linear returns (Linear4bit casts back to its input dtype)
    weights_train: bool  # full fine-tuning: norm and linear weights need their inputs for their gradients


def dtype_flow(setup: TrainingSetup) -> Flow:
    """Trace the dtypes a setup's tensors take through a layer."""
    load = weight_bytes_per_param(setup.precision)
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        load = FP32_BYTES  # prepare_model_for_kbit_training upcasts embeddings and norms to fp32
    compute = compute_bytes(setup.precision)
    quantized = setup.method is Method.QLORA
    return Flow(
        residual=load,
        compute=compute,
        # bitsandbytes Linear4bit.forward: `matmul_4bit(x.to(compute_dtype), ...).to(inp_dtype)`
        linear_out=load if quantized else compute,
        weights_train=setup.method is Method.FULL,
    )


def _norm(width_in: int, size: int, flow: Flow, tokens: int, gemma: bool = False) -> list[int]:
    """RMSNorm: x.float() and rsqrt are saved by the multiply; the normalised tensor is saved by the weight multiply
    only when the weight trains. Llama-style norms cast it back to the input dtype first
    (modeling_llama.py LlamaRMSNorm.forward); Gemma's multiplies by (1 + weight) in fp32 (Gemma3RMSNorm.forward)."""
    saved = [tensor_bytes(tokens * size * FP32_BYTES), tensor_bytes(tokens * FP32_BYTES)]
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * size * (FP32_BYTES if gemma else width_in)))
    return saved


def _lora_input_copies(lin: LinearShape, setup: TrainingSetup, flow: Flow, tokens: int) -> list[int]:
    """peft lora.Linear.forward: x.to(fp32) -> dropout -> lora_A -> lora_B.

    Saved: dropout's bool mask, lora_A's input (its autocast copy in the compute dtype, or the fp32 tensor when
    autocast is off) and lora_A's output (rank wide) for lora_B's weight gradient.
    """
    rank = setup.lora.rank
    a_input = flow.compute if setup.autocast else FP32_BYTES
    saved = [tensor_bytes(tokens * lin.in_features * a_input), tensor_bytes(tokens * rank * a_input)]
    if setup.lora.dropout > 0:
        saved.append(tensor_bytes(tokens * lin.in_features * BOOL_BYTES))
    return saved


def layer_saved_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int, input_needs_grad: bool = True) -> int:
    """Bytes one decoder layer keeps for backward when it runs without checkpointing."""
    flow = dtype_flow(setup)
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    adapted = {lin.name for lin in spec.lora_linears(setup.lora.targets)} if setup.lora else set()
    linears = {lin.name: lin for lin in spec.layer_linears}
    saved: list[int] = []
    gemma = spec.norms_per_layer == 4
    if input_needs_grad or flow.weights_train:
        saved += _norm(flow.residual, h, flow, tokens, gemma)
    # Base linears keep their input only when their weight trains (a frozen weight needs no input for its grad).
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    for name in ("q_proj", "k_proj", "v_proj", "qkv_proj"):
        if name in adapted:
            saved += _lora_input_copies(linears[name], setup, flow, tokens)
    if spec.has_qk_norm:
        # Qwen3/Gemma3 q_norm and k_norm: RMSNorm over head_dim on the projected queries and keys.
        normed = FP32_BYTES if gemma else flow.compute
        saved += _norm(flow.compute, q, flow, tokens)[:1] + [tensor_bytes(tokens * spec.num_heads * FP32_BYTES)]
        saved += _norm(flow.compute, kv, flow, tokens)[:1] + [tensor_bytes(tokens * spec.num_kv_heads * FP32_BYTES)]
        if flow.weights_train:
            saved += [tensor_bytes(tokens * q * normed), tensor_bytes(tokens * kv * normed)]
    # SDPA (flash / CPU flash) saves q after RoPE, k after RoPE, v, the output and a fp32 logsumexp per head.
    sdpa = flow.compute
    # Phi-3 slices v out of the fused qkv_proj output, so SDPA's saved v keeps that whole tensor alive.
    v_storage = q + 2 * kv if spec.fused_projections else kv
    saved += [
        tensor_bytes(tokens * q * sdpa),
        tensor_bytes(tokens * kv * sdpa),
        tensor_bytes(tokens * v_storage * sdpa),
        tensor_bytes(tokens * q * sdpa),
        tensor_bytes(tokens * spec.num_heads * FP32_BYTES),
    ]
    if "o_proj" in adapted:
        saved += _lora_input_copies(linears["o_proj"], setup, flow, tokens)
    if gemma:  # post_attention_layernorm on the attention output, before the residual add
        saved += _norm(flow.compute, h, flow, tokens, gemma)
    saved += _norm(flow.residual, h, flow, tokens, gemma)
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    for name in ("gate_proj", "up_proj", "gate_up_proj"):
        if name in adapted:
            saved += _lora_input_copies(linears[name], setup, flow, tokens)
    mlp = flow.linear_out
    # SwiGLU: act(gate) saves gate; act * up saves act(gate) and up; down_proj saves the product if it trains.
    saved += [tensor_bytes(tokens * inter * mlp)] * 3
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * inter * mlp))
    if "down_proj" in adapted:
        saved += _lora_input_copies(linears["down_proj"], setup, flow, tokens)
    if gemma:  # post_feedforward_layernorm on the MLP output
        saved += _norm(flow.compute, h, flow, tokens, gemma)
    return sum(saved)


def hidden_state_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int) -> int:
    """One residual-stream tensor (a checkpointed layer's saved input, or a layer's output)."""
    return tensor_bytes(tokens * spec.hidden_size * dtype_flow(setup).residual)


class AutocastCopies(BaseModel):
    """Autocast's low-precision copies of fp32 weights alive at the forward peak, at the start of the loss backward,
    and for one layer in the layer backward."""

    forward_bytes: int
    loss_backward_bytes: int
    layer_bytes: int


def autocast_weight_copies(spec: ModelSpec, setup: TrainingSetup) -> AutocastCopies:
    """Low-precision copies of fp32 weights that autocast makes for each matmul.

    torch autocast casts an fp32 weight to the autocast dtype for every linear (aten/src/ATen/autocast_mode.cpp,
    cached_cast, which caches casts of leaf tensors that require grad until the autocast region exits); the matmul
    saves the copy for its input gradient. fp32 linears: every base linear under bf16-mixed/fp16-mixed (not the 4-bit
    ones), lm_head whenever the dense weights are fp32 (mixed precision, or QLoRA k-bit preparation), and the LoRA
    adapters. Under checkpointing a layer's forward saves nothing, so only the cached (trainable) copies outlive it,
    until autocast exits at the end of the forward.
    """
    if not setup.autocast:
        return AutocastCopies(forward_bytes=0, loss_backward_bytes=0, layer_bytes=0)
    half = HALF_BYTES
    lm_head = tensor_bytes(spec.vocab_size * spec.hidden_size * half) if dtype_flow(setup).residual == FP32_BYTES else 0
    layer_base = 0
    if setup.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED) and setup.method is not Method.QLORA:
        layer_base = sum(tensor_bytes(lin.weight_params * half) for lin in spec.layer_linears)
    layer_adapters = sum(tensor_bytes(n * half) for n in adapter_tensor_elements(spec, setup)) // spec.num_layers
    layer = layer_base + layer_adapters
    if not setup.gradient_checkpointing:
        kept = spec.num_layers * layer + lm_head
        return AutocastCopies(forward_bytes=kept, loss_backward_bytes=kept, layer_bytes=layer)
    cached = layer_adapters + (layer_base if setup.method is Method.FULL else 0)
    return AutocastCopies(
        forward_bytes=spec.num_layers * cached + lm_head, loss_backward_bytes=lm_head, layer_bytes=layer
    )
