"""The activation peak of vLLM's profiling run, modelled from the source (read, not traced).

vllm 0.31.0 vllm/v1/worker/gpu_model_runner.py profile_run: one eager forward of max_num_batched_tokens tokens spread
over min(max_num_seqs, tokens) requests (_dummy_run), then the sampler on one row per request (_dummy_sampler_run).
memory_profiling takes the rise of torch's allocated-bytes peak over what stays allocated afterwards: the tensors
alive at the worst moment, below. Weights and the rotary cache are not in it (they stay allocated).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from vramplan.models.spec import ModelSpec
from vramplan.serving.formats import HALF_BYTES, ceil_div
from vramplan.serving.weights import kv_heads_per_rank, padded_vocab

ACT_BYTES = HALF_BYTES  # activations in the model dtype (16-bit)
# Bytes per logit alive at the sampler's peak (vllm/v1/sample/sampler.py Sampler.forward and
# ops/topk_topp_sampler.py forward_native, run twice by _dummy_sampler_run): the model-dtype logits _dummy_sampler_run
# holds (2), their float32 copy (4), softmax probs in float32 (4) and the exponential noise q (4; random_sample).
SAMPLER_BYTES_PER_LOGIT = HALF_BYTES + 4 + 4 + 4


class ActivationPeak(BaseModel):
    """Transient bytes of the profiling run on one GPU."""

    tokens: int  # max_num_batched_tokens
    requests: int  # rows the sampler sees: min(max_num_seqs, tokens)
    layer_bytes: int  # the worst decoder layer's live tensors
    layer_kind: str
    sampler_bytes: int  # hidden states held + the sampler's logits copies
    peak_bytes: int
    at: Literal["decoder layer", "sampler"]


def _dense_mlp_elements(spec: ModelSpec, inter: int, tp: int) -> int:
    """vllm/model_executor/models/llama.py LlamaMLP.forward: gate_up [T, 2I/tp] and SiluAndMul's [T, I/tp] alive at
    once."""
    return 3 * ceil_div(inter, tp)


def _attention_elements(spec: ModelSpec, tp: int) -> int:
    """LlamaAttention.forward at o_proj: qkv (q, k, v are views of it), the attention output and o_proj's output.
    MLA (deepseek_v2.py, the prefill path): q, the kv latent, kv_b_proj's expansion, the assembled k, the output."""
    heads = ceil_div(spec.num_heads, tp)
    if spec.mla is not None:
        mla = spec.mla
        q_lora = mla.q_lora_rank or 0
        return (q_lora + heads * mla.qk_head_dim + mla.kv_lora_rank + mla.qk_rope_head_dim
                + heads * (mla.qk_nope_head_dim + mla.v_head_dim) + heads * mla.qk_head_dim
                + heads * mla.v_head_dim + spec.hidden_size)
    kv = kv_heads_per_rank(spec, tp) * spec.head_dim
    q = heads * spec.head_dim
    return (q + 2 * kv) + q + spec.hidden_size


def _moe_elements(spec: ModelSpec, tp: int) -> int:
    """FusedMoE with the Triton experts (fused_moe/experts/triton_moe.py workspace_shapes): workspace1
    [T, topk, max(I/tp, H)], workspace2 [T, topk, max(2I/tp, H)], the output [T, H]; the router logits [T, E];
    plus a shared expert's MLP."""
    moe = spec.moe
    assert moe is not None
    inter = ceil_div(moe.expert_intermediate_size, tp)
    hidden = spec.hidden_size
    workspaces = moe.experts_per_token * (max(inter, hidden) + max(2 * inter, hidden))
    shared = _dense_mlp_elements(spec, moe.shared_intermediate_size, tp) if moe.shared_intermediate_size else 0
    return workspaces + hidden + moe.num_experts + shared


def layer_elements(spec: ModelSpec, tp: int) -> tuple[int, str]:
    """Activation elements per token alive at the worst point of a decoder layer, and where: the residual stream
    (hidden_states and residual, [T, H] each) plus the largest of attention, dense MLP and MoE block."""
    residual = 2 * spec.hidden_size
    parts = {"attention": _attention_elements(spec, tp)}
    if spec.dense_layer_ids:
        parts["dense MLP"] = _dense_mlp_elements(spec, spec.intermediate_size, tp)
    if spec.moe is not None:
        parts["MoE block"] = _moe_elements(spec, tp)
    kind = max(parts, key=lambda name: parts[name])
    return residual + parts[kind], kind


def profile_peak(spec: ModelSpec, tokens: int, max_num_seqs: int, tensor_parallel: int = 1) -> ActivationPeak:
    """The profiling run's transient peak: the worst decoder layer at `tokens` tokens, or the sampler phase
    (hidden states [T, H] still held, logits gathered to the full vocabulary on every rank, [R, V])."""
    requests = min(max_num_seqs, tokens)
    elements, kind = layer_elements(spec, tensor_parallel)
    layer = tokens * elements * ACT_BYTES
    lm_head_local = requests * padded_vocab(spec.vocab_size, tensor_parallel) * ACT_BYTES  # before the all-gather
    held = tokens * spec.hidden_size * ACT_BYTES  # _dummy_run's hidden_states, alive until profile_run returns
    last = 2 * requests * spec.hidden_size * ACT_BYTES  # last_hidden_states and its torch.rand_like copy
    sampler = held + last + lm_head_local + requests * spec.vocab_size * SAMPLER_BYTES_PER_LOGIT
    at: Literal["decoder layer", "sampler"] = "decoder layer" if layer >= sampler else "sampler"
    return ActivationPeak(tokens=tokens, requests=requests, layer_bytes=layer, layer_kind=kind,
                          sampler_bytes=sampler, peak_bytes=max(layer, sampler), at=at)
