"""transformers 4.x's mixture-of-experts layout (Mixtral, Qwen3-MoE), rebuilt on a transformers 5 model for the
trace: each expert its own nn.Linear modules (which bitsandbytes quantizes and peft's all-linear adapts), the router
an nn.Linear, and the forward looping over the experts with a gather, the expert MLP, the routing-weight multiply
and an index_add_.

The module is vramplan's own statement of what transformers 4.x's MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock
and their expert MLPs (models/mixtral, models/qwen3_moe in 4.x) allocate, not their code: the installed
transformers is 5. Routing is balanced (each expert gets tokens x top-k / experts rows) so that shapes do not depend
on values, as fake tensors need; the estimate assumes the same.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from vramplan.estimate.components.activations.moe import balanced_rows  # the routing the estimate assumes too


class PerExpertMlp(nn.Module):
    """One expert: w2(act(w1(x)) * w3(x)), nn.Linear each, no bias (4.x MixtralBlockSparseTop2MLP)."""

    def __init__(self, hidden: int, intermediate: int, act: str):
        super().__init__()
        self.w1 = nn.Linear(hidden, intermediate, bias=False)
        self.w2 = nn.Linear(intermediate, hidden, bias=False)
        self.w3 = nn.Linear(hidden, intermediate, bias=False)
        self.act_fn = ACT2FN[act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states))


class PerExpertMoeBlock(nn.Module):
    """4.x MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock: an nn.Linear router, softmax in fp32, top-k (renormalised
    in Mixtral, and in Qwen3-MoE with norm_topk_prob) cast back, a one-hot expert mask, then per expert: gather its
    rows, run the expert, scale by the routing weights, index_add_."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = getattr(config, "num_local_experts", None) or config.num_experts
        self.top_k = config.num_experts_per_tok
        self.renormalize = config.model_type == "mixtral" or bool(getattr(config, "norm_topk_prob", False))
        intermediate = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        self.gate = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            PerExpertMlp(config.hidden_size, intermediate, config.hidden_act) for _ in range(self.num_experts))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = hidden_states.shape
        flat = hidden_states.view(-1, hidden)
        tokens = flat.shape[0]
        router_logits = self.gate(flat)
        routing_weights = torch.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.renormalize:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(flat.dtype)
        final = torch.zeros((tokens, hidden), dtype=flat.dtype, device=flat.device)
        expert_mask = torch.nn.functional.one_hot(selected, num_classes=self.num_experts).permute(2, 1, 0)
        rows = balanced_rows(tokens, self.top_k, self.num_experts)
        start = 0
        for expert, count in zip(self.experts, rows):
            # torch.where(expert_mask[e]) in 4.x: the chosen (top-k slot, token) pairs, int64 each
            slot = torch.zeros(count, dtype=torch.long, device=flat.device)
            token = torch.arange(start, start + count, device=flat.device) % tokens
            start += count
            current = flat[None, token].reshape(-1, hidden)
            out = expert(current) * routing_weights[token, slot, None]
            final.index_add_(0, token, out.to(flat.dtype))
        del expert_mask
        return final.reshape(batch, length, hidden)


# The transformers 5 blocks rebuilt (their 4.x counterparts had the same per-expert nn.Linear structure).
V5_SPARSE_BLOCKS = ("MixtralSparseMoeBlock", "Qwen3MoeSparseMoeBlock")
V4_FAMILIES = ("mixtral", "qwen3_moe")


def use_v4_experts(model) -> int:
    """Swap every decoder layer's v5 MoE block for the 4.x layout (before quantization and peft); the count."""
    swapped = 0
    for layer in model.model.layers:
        if type(layer.mlp).__name__ in V5_SPARSE_BLOCKS:
            dtype = next(layer.mlp.parameters()).dtype  # the load dtype from_config gave the v5 block
            layer.mlp = PerExpertMoeBlock(model.config).to(dtype)
            swapped += 1
    return swapped
