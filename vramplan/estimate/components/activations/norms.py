"""RMSNorm activations: the decoder layers' norms (Llama-style, Gemma's fp32, Liger's kernel), the final norm, and
Gemma's fp32 post-feedforward norm backward."""

from __future__ import annotations

from vramplan.estimate.components.activations import liger
from vramplan.estimate.components.activations.flow import Flow, dtype_flow
from vramplan.estimate.dtypes import FP32_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


def rms_norm_saved(width_in: int, size: int, flow: Flow, tokens: int, gemma: bool = False) -> list[int]:
    """RMSNorm: x.float() and rsqrt are saved by the multiply; the normalised tensor is saved by the weight multiply
    only when the weight trains. Llama-style norms cast it back to the input dtype first
    (modeling_llama.py LlamaRMSNorm.forward); Gemma's multiplies by (1 + weight) in fp32 (Gemma3RMSNorm.forward)."""
    if flow.liger:
        return liger.norm_saved_bytes(width_in, size, tokens)
    saved = [tensor_bytes(tokens * size * FP32_BYTES), tensor_bytes(tokens * FP32_BYTES)]
    if flow.weights_train:
        saved.append(tensor_bytes(tokens * size * (FP32_BYTES if gemma else width_in)))
    return saved


def final_norm_saved_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int) -> int:
    """What the final norm and lm_head keep for backward: the norm's fp32 input and rsqrt, and when the weights
    train the normalised tensor (norm weight gradient) and lm_head's input (lm_head weight gradient)."""
    flow = dtype_flow(setup)
    saved = rms_norm_saved(flow.residual, spec.hidden_size, flow, tokens, spec.norms_per_layer == 4)
    if flow.keeps_linear_inputs:
        saved.append(tensor_bytes(tokens * spec.hidden_size * flow.residual))
    return sum(saved)


def final_norm_forward_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """The final norm's fp32 copy of its input; Liger's saves the input itself and an fp32 RSTD (liger.py)."""
    tokens = setup.tokens_per_step
    if setup.liger:
        return liger.final_norm_forward_bytes(tokens)
    return tensor_bytes(tokens * spec.hidden_size * FP32_BYTES)


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
