"""The SwiGLU MLP's activations (a dense layer's, or an MoE block's shared expert): saved tensors, the forward's and
recomputation's transients, and the activation-function step of its backward; an MoE layer's experts through
moe.py."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.components.activations import liger
from vramplan.estimate.components.activations.adapters import lora_input_copies
from vramplan.estimate.components.activations.flow import Flow, default_layer, dtype_flow, hidden_state_bytes
from vramplan.estimate.components.activations.moe import (
    experts_backward_in_flight_bytes,
    experts_forward_transient_bytes,
    routed_rows,
    v4_experts_backward_in_flight_bytes,
    v4_experts_forward_transient_bytes,
)
from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes, weight_bytes_per_param
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import Method, TrainingSetup


def swiglu_saved(
    mlp: tuple[LinearShape, ...], inter: int, setup: TrainingSetup, flow: Flow, tokens: int, adapted: set[str]
) -> list[int]:
    """A SwiGLU MLP (a dense layer's, or an MoE block's shared expert): act(gate) saves gate; act * up saves
    act(gate) and up; down_proj saves the product if it trains; plus each adapted projection's LoRA copies."""
    saved: list[int] = []
    by_suffix = {lin.name.rsplit(".", 1)[-1]: lin for lin in mlp}
    for suffix in ("gate_proj", "up_proj", "gate_up_proj"):
        if suffix in by_suffix and by_suffix[suffix].name in adapted:
            saved += lora_input_copies(by_suffix[suffix], setup, flow, tokens)
    width = flow.linear_out
    saved += [tensor_bytes(tokens * inter * width)] * (liger.SWIGLU_SAVED_INTERMEDIATES if flow.liger else 3)
    if flow.keeps_linear_inputs:
        saved.append(tensor_bytes(tokens * inter * width))
    if by_suffix["down_proj"].name in adapted:
        saved += lora_input_copies(by_suffix["down_proj"], setup, flow, tokens)
    return saved


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
    past the experts' forward transient (moe.py).
    """
    flow = dtype_flow(setup)
    if spec.is_moe_layer(default_layer(spec) if layer is None else layer):
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
    its output. An MoE layer: its experts' transient (moe.py)."""
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


def _moe_forward_transient(spec: ModelSpec, setup: TrainingSetup, tokens: int, flow: Flow) -> int:
    # An fp32 residual is itself the tensor the post-attention norm saves, counted there (as in _mlp_locals).
    frame = 1 if flow.residual == FP32_BYTES else 2
    if setup.transformers == 4:
        return v4_experts_forward_transient_bytes(spec, tokens, flow.residual, flow.residual, frame)
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
    An MoE layer: the same step inside the experts, S = tokens x top-k rows wide (moe.py)."""
    flow = dtype_flow(setup)
    if spec.is_moe_layer(default_layer(spec) if layer is None else layer):
        released = tensor_bytes(routed_rows(spec, tokens) * spec.moe.expert_intermediate_size * flow.residual)
        in_flight = experts_backward_in_flight_bytes(spec, tokens, flow.residual, flow.residual)
        if setup.transformers == 4:
            in_flight = v4_experts_backward_in_flight_bytes(spec, tokens, flow.residual, flow.residual)
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
        released += sum(lora_input_copies(adapted["down_proj"], setup, flow, tokens))
    in_flight = 3 * tensor_bytes(inter * mlp) + tensor_bytes(tokens * spec.hidden_size * flow.residual)
    return MlpBackward(released_bytes=released, in_flight_bytes=in_flight)
