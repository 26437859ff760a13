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
    autocast_on,
    fsdp_gathers_in_half,
)
from vramplan.estimate.eager import eager_mask_bytes, eager_saved_bytes
from vramplan.estimate import liger
from vramplan.estimate.mla import mla_saved_bytes
from vramplan.estimate.moe import (
    experts_backward_in_flight_bytes,
    experts_forward_transient_bytes,
    experts_saved_bytes,
    routed_rows,
    router_saved_bytes,
    shared_gate_saved_bytes,
)
from vramplan.estimate.weights import adapter_tensor_elements
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import Attention, Method, Precision, TrainingSetup


class Flow(BaseModel):
    """Dtype widths along the residual stream of one setup, and whether the base weights train."""

    residual: int  # hidden states between layers and RMSNorm outputs (the embedding's and norms' dtype)
    compute: int  # matmul outputs under autocast (or fp32 without)
    linear_out: int  # what a base linear returns (Linear4bit casts back to its input dtype)
    weights_train: bool  # full fine-tuning: norm and linear weights need their inputs for their gradients
    autocast: bool = True  # Trainer's autocast wraps the forward (not under FSDP2: estimate/dtypes.autocast_on)
    adapter: int = FP32_BYTES  # LoRA adapters' dtype: fp32 from peft, FSDP2's 16-bit param_dtype when gathered
    liger: bool = False  # --liger: Liger's RMSNorm and SwiGLU kernels (estimate/liger.py)


def dtype_flow(setup: TrainingSetup) -> Flow:
    """Trace the dtypes a setup's tensors take through a layer."""
    load = weight_bytes_per_param(setup.precision)
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        load = FP32_BYTES  # prepare_model_for_kbit_training upcasts embeddings and norms to fp32
    compute = compute_bytes(setup.precision)
    quantized = setup.method is Method.QLORA
    if fsdp_gathers_in_half(setup):
        # FSDP2 gathers embeddings, norms, 4-bit storage and adapters alike in the 16-bit param_dtype.
        return Flow(residual=compute, compute=compute, linear_out=compute, weights_train=setup.method is Method.FULL,
                    autocast=False, adapter=compute)
    return Flow(
        residual=load,
        compute=compute,
        # bitsandbytes Linear4bit.forward: `matmul_4bit(x.to(compute_dtype), ...).to(inp_dtype)`
        linear_out=load if quantized else compute,
        weights_train=setup.method is Method.FULL,
        autocast=autocast_on(setup),
        liger=setup.liger,
    )


def _norm(width_in: int, size: int, flow: Flow, tokens: int, gemma: bool = False) -> list[int]:
    """RMSNorm: x.float() and rsqrt are saved by the multiply; the normalised tensor is saved by the weight multiply
    only when the weight trains. Llama-style norms cast it back to the input dtype first
    (modeling_llama.py LlamaRMSNorm.forward); Gemma's multiplies by (1 + weight) in fp32 (Gemma3RMSNorm.forward)."""
    if flow.liger:
        return liger.norm_saved_bytes(width_in, size, tokens)
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
    a_input = flow.compute if flow.autocast else flow.adapter
    saved = [tensor_bytes(tokens * lin.in_features * a_input), tensor_bytes(tokens * rank * a_input)]
    if setup.lora.dropout > 0:
        saved.append(tensor_bytes(tokens * lin.in_features * BOOL_BYTES))
    return saved


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
    layer = _default_layer(spec) if layer is None else layer
    adapted = _adapted(spec, setup, layer)
    linears = {lin.name: lin for lin in spec.linears_of(layer)}
    saved: list[int] = []
    gemma = spec.norms_per_layer == 4
    if input_needs_grad or flow.weights_train:
        input_norm = _norm(flow.residual, h, flow, tokens, gemma)
        if input_kept and (flow.residual == FP32_BYTES or flow.liger):  # Liger's norm saves the input itself
            input_norm = input_norm[1:]
        saved += input_norm
    # Base linears keep their input only when their weight trains (a frozen weight needs no input for its grad).
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"):
        if name in adapted:
            saved += _lora_input_copies(linears[name], setup, flow, tokens)
    if spec.has_qk_norm:
        # Qwen3/Gemma3 q_norm and k_norm: RMSNorm over head_dim on the projected queries and keys.
        normed = FP32_BYTES if gemma else flow.compute
        q, kv = spec.q_size, spec.kv_size
        saved += _norm(flow.compute, q, flow, tokens)[:1] + [tensor_bytes(tokens * spec.num_heads * FP32_BYTES)]
        saved += _norm(flow.compute, kv, flow, tokens)[:1] + [tensor_bytes(tokens * spec.num_kv_heads * FP32_BYTES)]
        if flow.weights_train and not flow.liger:
            saved += [tensor_bytes(tokens * q * normed), tensor_bytes(tokens * kv * normed)]
    if spec.mla is not None:
        saved += mla_saved_bytes(spec, tokens, flow.compute, flow.linear_out, flow.weights_train, flow.residual)
    else:
        saved += _sdpa_saved(spec, setup, flow, tokens, masked)
    if "o_proj" in adapted:
        saved += _lora_input_copies(linears["o_proj"], setup, flow, tokens)
    if gemma:  # post_attention_layernorm on the attention output, before the residual add
        saved += _norm(flow.compute, h, flow, tokens, gemma)
    saved += _norm(flow.residual, h, flow, tokens, gemma)
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * h * flow.residual))
    if spec.is_moe_layer(layer):
        saved += _moe_block_saved(spec, setup, flow, tokens, layer)
    else:
        saved += _swiglu_saved(spec.dense_mlp_linears, spec.intermediate_size, setup, flow, tokens, adapted)
    if gemma:  # post_feedforward_layernorm on the MLP output
        saved += _norm(flow.compute, h, flow, tokens, gemma)
    return sum(saved)


def _default_layer(spec: ModelSpec) -> int:
    return spec.moe_layer_ids[0] if spec.moe_layer_ids else 0


def _adapted(spec: ModelSpec, setup: TrainingSetup, layer: int) -> set[str]:
    return {lin.name for lin in spec.lora_linears(setup.lora.targets, layer)} if setup.lora else set()


def _swiglu_saved(
    mlp: tuple[LinearShape, ...], inter: int, setup: TrainingSetup, flow: Flow, tokens: int, adapted: set[str]
) -> list[int]:
    """A SwiGLU MLP (a dense layer's, or an MoE block's shared expert): act(gate) saves gate; act * up saves
    act(gate) and up; down_proj saves the product if it trains; plus each adapted projection's LoRA copies."""
    saved: list[int] = []
    by_suffix = {lin.name.rsplit(".", 1)[-1]: lin for lin in mlp}
    for suffix in ("gate_proj", "up_proj", "gate_up_proj"):
        if suffix in by_suffix and by_suffix[suffix].name in adapted:
            saved += _lora_input_copies(by_suffix[suffix], setup, flow, tokens)
    width = flow.linear_out
    saved += [tensor_bytes(tokens * inter * width)] * (liger.SWIGLU_SAVED_INTERMEDIATES if flow.liger else 3)
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * inter * width))
    if by_suffix["down_proj"].name in adapted:
        saved += _lora_input_copies(by_suffix["down_proj"], setup, flow, tokens)
    return saved


def _moe_block_saved(spec: ModelSpec, setup: TrainingSetup, flow: Flow, tokens: int, layer: int) -> list[int]:
    """Router, grouped_mm experts, and the shared expert with its gate (estimate/moe.py)."""
    saved = router_saved_bytes(spec, tokens, flow.compute)
    if flow.autocast and (spec.moe.router_fp32 or flow.residual == FP32_BYTES):
        # F.linear under autocast casts an fp32 router weight to the compute dtype and saves the copy for the
        # input gradient (aten/src/ATen/autocast_mode.cpp cached_cast).
        saved.append(tensor_bytes(spec.moe.num_experts * spec.hidden_size * flow.compute))
    if spec.moe.router_fp32 and flow.weights_train and flow.autocast:
        # DeepseekV3TopkRouter: F.linear(x.type(float32), weight) under autocast saves a compute-dtype copy of x
        # for the router weight's gradient.
        saved.append(tensor_bytes(tokens * spec.hidden_size * flow.compute))
    saved += experts_saved_bytes(spec, tokens, flow.residual, flow.compute, flow.weights_train)
    if spec.moe.shared_intermediate_size:
        adapted = _adapted(spec, setup, layer)
        shared = tuple(lin for lin in spec.moe_block_linears if lin.name != "shared_expert_gate")
        saved += _swiglu_saved(shared, spec.moe.shared_intermediate_size, setup, flow, tokens, adapted)
        saved += shared_gate_saved_bytes(spec, tokens, flow.compute)
        gate = [lin for lin in spec.moe_block_linears if lin.name == "shared_expert_gate"]
        if gate and gate[0].name in adapted:
            saved += _lora_input_copies(gate[0], setup, flow, tokens)
    return saved


def _sdpa_saved(spec: ModelSpec, setup: TrainingSetup, flow: Flow, tokens: int, masked: bool) -> list[int]:
    """SDPA (CUDA flash / efficient, CPU flash) saves q after RoPE, k, v, the output and an fp32 logsumexp per head.

    Without a mask transformers passes k and v with their own (fewer) heads and `enable_gqa=True`; with one,
    `use_gqa_in_sdpa` is false, so `repeat_kv` widens k and v to every query head, and SDPA also saves the mask,
    converted to the query dtype at full batch size (ATen `convert_boolean_attn_mask`), b x s x s
    (transformers integrations/sdpa_attention.py; traced in validation/matrix.toml's sliding-window cases).
    """
    if setup.attn is Attention.EAGER:
        return eager_saved_bytes(spec, setup, flow.compute, tokens)
    q, kv, sdpa = spec.q_size, spec.kv_size, flow.compute
    if masked:
        return [
            tensor_bytes(tokens * q * sdpa),
            tensor_bytes(tokens * q * sdpa),
            tensor_bytes(tokens * q * sdpa),
            tensor_bytes(tokens * q * sdpa),
            tensor_bytes(tokens * spec.num_heads * FP32_BYTES),
            tensor_bytes(tokens * setup.seq_len * sdpa),
        ]
    # Phi-3 slices v out of the fused qkv_proj output, so SDPA's saved v keeps that whole tensor alive, unless
    # autocast casts v for SDPA (a Linear4bit returns fp32 under k-bit preparation), which makes v its own copy.
    shares_qkv = spec.fused_projections and flow.linear_out == sdpa
    v_storage = q + 2 * kv if shares_qkv else kv
    return [
        tensor_bytes(tokens * q * sdpa),
        tensor_bytes(tokens * kv * sdpa),
        tensor_bytes(tokens * v_storage * sdpa),
        tensor_bytes(tokens * q * sdpa),
        tensor_bytes(tokens * spec.num_heads * FP32_BYTES),
    ]


def masked_layer_ids(spec: ModelSpec, setup: TrainingSetup) -> tuple[int, ...]:
    """Layers whose SDPA gets an explicit mask: sliding-window layers once the sequence reaches the window
    (transformers masking_utils._ignore_causal_mask_sdpa keeps the mask when kv_length >= local_attention_size);
    every layer when sequences are packed (create_causal_mask adds packed_sequence_mask_function and turns
    allow_is_causal_skip off). flash_attention_2 takes the window and packed positions (varlen) in the kernel: none."""
    if setup.attn is Attention.FLASH:
        return ()
    if setup.packing:
        return tuple(range(spec.num_layers))
    if spec.sliding_window is None or setup.seq_len < spec.sliding_window:
        return ()
    return spec.sliding_layer_ids


def masked_attention_layers(spec: ModelSpec, setup: TrainingSetup) -> int:
    return len(masked_layer_ids(spec, setup))


def model_mask_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The bool masks the model builds once, alive through forward and backward: the sliding-window one (1 x 1 x s x
    s); with packing one per batch row (b x 1 x s x s, the packed-sequence ids differ by row) for each attention kind
    (full, and sliding where the model has it)."""
    if setup.attn is Attention.EAGER:
        return eager_mask_bytes(spec, setup, dtype_flow(setup).compute)
    if not masked_attention_layers(spec, setup):
        return 0
    if setup.packing:
        kinds = 2 if spec.sliding_window is not None and spec.sliding_layer_ids else 1
        return kinds * tensor_bytes(setup.batch_size * setup.seq_len * setup.seq_len * BOOL_BYTES)
    return tensor_bytes(setup.seq_len * setup.seq_len * BOOL_BYTES)


class MlpLocals(BaseModel):
    """Unsaved tensors a frozen MLP's forward keeps alive while down_proj runs, as transformers and peft hold them."""

    frame: int  # the decoder layer's `residual` and the MLP's argument (the norm's output)
    product: int  # act(gate) * up, down_proj's input
    down_out: int
    adapted_down: bool
    lora_down_copies: int  # a LoRA-adapted down_proj's fp32 cast of the product and dropout output


def _mlp_locals(spec: ModelSpec, setup: TrainingSetup, tokens: int, flow: Flow) -> MlpLocals:
    hidden = tensor_bytes(tokens * spec.hidden_size * flow.residual)
    product_elements = tokens * spec.intermediate_size
    adapted = {lin.name for lin in spec.lora_linears(setup.lora.targets)} if setup.lora else set()
    copies = 0
    if "down_proj" in adapted:
        # peft casts the adapter's input to the adapter dtype (fp32; tuners_utils._cast_input_dtype, even under
        # autocast) and dropout returns a new fp32 tensor; both are alive until lora_B runs.
        if flow.linear_out != flow.adapter:
            copies += tensor_bytes(product_elements * flow.adapter)
        # Without autocast the dropout output is lora_A's saved input, already counted with the layer.
        if setup.lora.dropout > 0 and flow.autocast:
            copies += tensor_bytes(product_elements * flow.adapter)
    return MlpLocals(
        # An fp32 residual is itself the tensor the post-attention norm saves (its `.to(float32)` is a no-op),
        # counted there.
        # So is the residual under Liger, whose norm saves its input.
        frame=hidden + (hidden if flow.residual != FP32_BYTES and not flow.liger else 0),
        product=tensor_bytes(product_elements * flow.linear_out),
        down_out=tensor_bytes(tokens * spec.hidden_size * flow.linear_out),
        adapted_down="down_proj" in adapted,
        lora_down_copies=copies,
    )


def recompute_transient_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int, layer: int | None = None) -> int:
    """Unsaved tensors alive when checkpointing's recomputation of a layer stops, plus gradients already in flight.

    Non-reentrant checkpointing recomputes a layer when its backward first unpacks a saved tensor, and stops
    early once the last tensor the layer saves is recomputed (torch/utils/checkpoint.py, early stop). What else
    is alive at that moment depends on the layer's last saving op:
    - full fine-tuning: down_proj's matmul saves its input; nothing unsaved is alive;
    - Gemma: the post-feedforward norm saves last; down_proj's output is alive;
    - a LoRA-adapted down_proj: peft's lora_B saves last; the MLP product and the base output are alive;
    - a frozen torch Linear: it saves its weight, so recomputation runs through down_proj: product and output;
    - a frozen bitsandbytes Linear4bit: MatMul4Bit keeps its weight outside save_for_backward, so its input
      gradient is computed before the recomputation, which stops at the SwiGLU multiply: the product and its
      gradient are alive.
    An MoE block's recomputation runs on to its last saving op (the restoring gather, or the shared expert),
    past the experts' forward transient (estimate/moe.py).
    """
    flow = dtype_flow(setup)
    if spec.is_moe_layer(_default_layer(spec) if layer is None else layer):
        return _moe_forward_transient(spec, setup, tokens, flow)
    if flow.weights_train:  # only the decoder layer's `residual` (the post-attention sum) is alive
        return _unsaved_residual(spec, tokens, flow)
    mlp = _mlp_locals(spec, setup, tokens, flow)
    if spec.norms_per_layer == 4:
        return mlp.frame + mlp.down_out
    if mlp.adapted_down:
        return mlp.frame + mlp.product + mlp.lora_down_copies + mlp.down_out
    if setup.method is not Method.QLORA:
        return mlp.frame + mlp.product + mlp.down_out
    return mlp.frame + 2 * mlp.product  # the product and its gradient


def mlp_forward_transient_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int, layer: int | None = None) -> int:
    """Unsaved tensors alive while the last layer's down_proj runs in the forward: the residual and the MLP's
    argument (the decoder layer's locals), the SwiGLU product (saved only when down_proj trains), the cast
    copies the projection makes of it (peft's fp32 cast and dropout output; Linear4bit's compute-dtype cast) and
    its output. An MoE layer: its experts' transient (estimate/moe.py)."""
    flow = dtype_flow(setup)
    if spec.is_moe_layer(spec.num_layers - 1 if layer is None else layer):
        return _moe_forward_transient(spec, setup, tokens, flow)
    if flow.weights_train:
        return _unsaved_residual(spec, tokens, flow)
    mlp = _mlp_locals(spec, setup, tokens, flow)
    if mlp.adapted_down:
        return mlp.frame + mlp.product + mlp.lora_down_copies + mlp.down_out
    if setup.method is Method.QLORA and flow.linear_out != flow.compute:  # Linear4bit's compute-dtype cast
        return mlp.frame + mlp.product + tensor_bytes(tokens * spec.intermediate_size * flow.compute) + mlp.down_out
    return mlp.frame + mlp.product + mlp.down_out


def _unsaved_residual(spec: ModelSpec, tokens: int, flow: Flow) -> int:
    """The decoder layer's `residual`, unless Liger's post-attention norm saves it (counted with the layer)."""
    return 0 if flow.liger else tensor_bytes(tokens * spec.hidden_size * flow.residual)


# Gemma's post-feedforward norm runs in fp32 (Gemma3RMSNorm.forward: x.float(), * (1 + weight), type_as); its
# backward holds four fp32 hidden-state gradients at once (the upcast gradient, the (1 + weight) product's,
# the normalisation's and its reduction temporary). Count from our trace (validation/matrix.toml tiny-gemma3-v512).
GEMMA_NORM_BACKWARD_FP32_BUFFERS = 4


def post_mlp_norm_backward_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int) -> int:
    """Gradients in flight while a Gemma layer's post-feedforward norm runs its backward, before the MLP's:
    every tensor the layer saved is still alive then. Zero for families without a norm after the MLP."""
    if spec.norms_per_layer != 4:
        return 0
    flow = dtype_flow(setup)
    fp32 = tensor_bytes(tokens * spec.hidden_size * FP32_BYTES)
    return GEMMA_NORM_BACKWARD_FP32_BUFFERS * fp32 + tensor_bytes(tokens * spec.hidden_size * flow.residual)


def _moe_forward_transient(spec: ModelSpec, setup: TrainingSetup, tokens: int, flow: Flow) -> int:
    # An fp32 residual is itself the tensor the post-attention norm saves, counted there (as in _mlp_locals).
    frame = 1 if flow.residual == FP32_BYTES else 2
    return experts_forward_transient_bytes(spec, tokens, flow.residual, flow.residual, frame)


class MlpBackward(BaseModel):
    """The MLP's backward at the activation-function step: saved tensors already released, gradients in flight."""

    released_bytes: int
    in_flight_bytes: int


def mlp_backward(spec: ModelSpec, setup: TrainingSetup, tokens: int, layer: int | None = None) -> MlpBackward:
    """SwiGLU backward (torch autograd, transformers LlamaMLP): down_proj's backward gives d(product) and releases
    the product (saved when down_proj's weight trains) and a LoRA-adapted down_proj's input copies; the
    multiply's backward then allocates d(act) and d(up) while d(product), act and up are still held. Three
    intermediate-wide gradients and the layer output's gradient are in flight at that moment.
    An MoE layer: the same step inside the experts, S = tokens x top-k rows wide (estimate/moe.py)."""
    flow = dtype_flow(setup)
    if spec.is_moe_layer(_default_layer(spec) if layer is None else layer):
        released = tensor_bytes(routed_rows(spec, tokens) * spec.moe.expert_intermediate_size * flow.residual)
        in_flight = experts_backward_in_flight_bytes(spec, tokens, flow.residual, flow.residual)
        return MlpBackward(released_bytes=released if flow.weights_train else 0, in_flight_bytes=in_flight)
    inter = tokens * spec.intermediate_size
    mlp = flow.linear_out
    if flow.liger:
        down = tensor_bytes(spec.hidden_size * spec.intermediate_size * weight_bytes_per_param(setup.precision))
        in_flight = liger.down_proj_backward_in_flight_bytes(
            tensor_bytes(inter * mlp), hidden_state_bytes(spec, setup, tokens), down if flow.weights_train else 0
        )
        return MlpBackward(released_bytes=0, in_flight_bytes=in_flight)
    released = tensor_bytes(inter * mlp) if flow.weights_train else 0
    adapted = {lin.name: lin for lin in spec.lora_linears(setup.lora.targets)} if setup.lora else {}
    if "down_proj" in adapted:
        released += sum(_lora_input_copies(adapted["down_proj"], setup, flow, tokens))
    in_flight = 3 * tensor_bytes(inter * mlp) + tensor_bytes(tokens * spec.hidden_size * flow.residual)
    return MlpBackward(released_bytes=released, in_flight_bytes=in_flight)


def final_norm_saved_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int) -> int:
    """What the final norm and lm_head keep for backward: the norm's fp32 input and rsqrt, and when the weights
    train the normalised tensor (norm weight gradient) and lm_head's input (lm_head weight gradient)."""
    flow = dtype_flow(setup)
    saved = _norm(flow.residual, spec.hidden_size, flow, tokens, spec.norms_per_layer == 4)
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * spec.hidden_size * flow.residual))
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
    if not autocast_on(setup):
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
