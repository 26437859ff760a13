"""Training FLOPs per token, and tokens per second on a GPU at a stated utilisation.

Matmul FLOPs only (the other ops are memory-bound and small next to them), counted from the model's shapes:
- forward: 2 FLOPs per weight per token for every linear layer and lm_head (Kaplan et al. 2020, section 2.1);
  causal attention adds 2 x seq_len x q_size per layer per token (QK^T and AV, half the square kept);
- backward: the input gradient costs one forward again; weight gradients cost another, but only for weights
  that train (full fine-tuning; for LoRA/QLoRA just the adapters);
- gradient checkpointing recomputes the forward once more.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.estimate.weights import adapter_tensor_elements
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, TrainingSetup

FLOPS_PER_MAC = 2


class StepFlops(BaseModel):
    """FLOPs of one training step per token, split the way they are counted."""

    forward_per_token: int
    backward_per_token: int
    recompute_per_token: int

    @property
    def per_token(self) -> int:
        return self.forward_per_token + self.backward_per_token + self.recompute_per_token


def step_flops(spec: ModelSpec, setup: TrainingSetup) -> StepFlops:
    linear_weights = spec.num_layers * sum(lin.weight_params for lin in spec.layer_linears)
    lm_head = spec.vocab_size * spec.hidden_size
    adapters = sum(adapter_tensor_elements(spec, setup))
    # Causal attention: QK^T and AV are each seq_len x q_size MACs per token, halved by the causal mask.
    attention = spec.num_layers * 2 * setup.seq_len * spec.q_size // 2
    forward = FLOPS_PER_MAC * (linear_weights + lm_head + adapters + attention)
    input_grads = forward
    if setup.method is Method.FULL:
        weight_grads = FLOPS_PER_MAC * (linear_weights + lm_head)
    else:
        weight_grads = FLOPS_PER_MAC * adapters
    # Attention's backward recomputes nothing but needs gradients for q, k and v: two more passes.
    attention_backward = FLOPS_PER_MAC * attention
    recompute = forward - FLOPS_PER_MAC * lm_head if setup.gradient_checkpointing else 0
    return StepFlops(
        forward_per_token=forward,
        backward_per_token=input_grads + weight_grads + attention_backward,
        recompute_per_token=recompute,
    )


def tokens_per_second(flops_per_token: int, bf16_dense_tflops: float, utilisation: float) -> float:
    """Tokens per second for one GPU running at `utilisation` of its dense BF16 tensor rate."""
    return bf16_dense_tflops * 1e12 * utilisation / flops_per_token
