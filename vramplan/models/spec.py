"""ModelSpec: the architecture facts that decide training memory, and the parameter counts they imply."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal[
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
    "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss",
]


class LinearShape(BaseModel):
    """One nn.Linear inside a decoder layer, named as in the transformers module tree."""

    model_config = ConfigDict(frozen=True)

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.weight_params + (self.out_features if self.bias else 0)


class MoeSpec(BaseModel):
    """The mixture-of-experts block as transformers v5 builds it: 3D expert parameters, a router, shared experts.

    Experts are `nn.Parameter`s of shape [E, 2I, H] (gate_up_proj) and [E, H, I] (down_proj), not nn.Linear
    (transformers/models/mixtral/modeling_mixtral.py, MixtralExperts); the router is a custom module holding a
    [E, H] weight (MixtralTopKRouter).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    # One dense SwiGLU MLP every token passes through (DeepSeek n_shared_experts x moe_intermediate_size,
    # Qwen2-MoE shared_expert_intermediate_size); 0 when there is none.
    shared_intermediate_size: int = Field(0, ge=0)
    shared_expert_gate: bool = False  # Qwen2-MoE: nn.Linear(hidden, 1) gating the shared expert
    norm_topk_prob: bool = True  # the router renormalises its top-k weights (Mixtral always; Qwen-MoE by config)
    expert_bias: bool = False  # gpt-oss: gate_up_proj_bias [E, 2I] and down_proj_bias [E, H]
    router_bias: bool = False  # gpt-oss: the router's bias [E]
    # DeepSeek-V3: the router weight stays fp32 (`_keep_in_fp32_modules_strict`) and a [E] fp32 buffer
    # e_score_correction_bias sits next to it.
    router_fp32: bool = False
    # Layers with a dense MLP (intermediate_size) instead of the MoE block: DeepSeek first_k_dense_replace,
    # Qwen-MoE mlp_only_layers / decoder_sparse_step.
    dense_layer_ids: tuple[int, ...] = ()


class MlaSpec(BaseModel):
    """DeepSeek multi-head latent attention (transformers/models/deepseek_v3/modeling_deepseek_v3.py,
    DeepseekV3Attention): low-rank q and compressed kv with a shared rotary key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    q_lora_rank: int | None = Field(default=None, gt=0)
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class ModelSpec(BaseModel):
    """A decoder-only transformer as transformers builds it from its config.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    final_logit_softcapping: float | None = None
    # Sliding-window attention: the window and how many layers use it (0 when the model has none).
    sliding_window: int | None = Field(default=None, gt=0)
    sliding_layer_ids: tuple[int, ...] = ()
    moe: MoeSpec | None = None
    mla: MlaSpec | None = None
    # gpt-oss: one learned attention-sink logit per head (GptOssAttention.sinks).
    attention_sinks: bool = False

    @property
    def sliding_layers(self) -> int:
        return len(self.sliding_layer_ids)

    @property
    def fused_projections(self) -> bool:
        """Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`."""
        return self.family == "phi3"

    @property
    def norms_per_layer(self) -> int:
        """RMSNorms around attention and MLP: Gemma 2/3 add post-attention and post-feedforward norms."""
        return 4 if self.family in ("gemma2", "gemma3_text") else 2

    @property
    def has_qk_norm(self) -> bool:
        """Qwen3 and Gemma 3 normalise queries and keys per head (q_norm, k_norm of size head_dim)."""
        return self.family in ("qwen3", "gemma3_text", "qwen3_moe")

    @property
    def q_size(self) -> int:
        """Width of the queries SDPA sees (MLA: heads x (nope + rope))."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the keys SDPA sees (MLA expands the latent to every head)."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_kv_heads * self.head_dim

    @property
    def v_size(self) -> int:
        if self.mla is not None:
            return self.num_heads * self.mla.v_head_dim
        return self.kv_size

    @property
    def attn_out_size(self) -> int:
        """Width of the attention output that o_proj reads."""
        if self.mla is not None:
            return self.num_heads * self.mla.v_head_dim
        return self.q_size

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer not in self.moe.dense_layer_ids

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.is_moe_layer(i))

    @property
    def dense_layer_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if not self.is_moe_layer(i))

    @cached_property
    def attention_linears(self) -> tuple[LinearShape, ...]:
        """The attention's nn.Linear modules, in forward order."""
        h, q, kv = self.hidden_size, self.q_size, self.kv_size
        if self.mla is not None:
            return _mla_linears(h, self.num_heads, self.mla, self.o_bias)
        if self.fused_projections:
            return (
                LinearShape(name="qkv_proj", in_features=h, out_features=q + 2 * kv, bias=self.qkv_bias),
                LinearShape(name="o_proj", in_features=q, out_features=h, bias=self.o_bias),
            )
        return (
            LinearShape(name="q_proj", in_features=h, out_features=q, bias=self.qkv_bias),
            LinearShape(name="k_proj", in_features=h, out_features=kv, bias=self.qkv_bias),
            LinearShape(name="v_proj", in_features=h, out_features=kv, bias=self.qkv_bias),
            LinearShape(name="o_proj", in_features=q, out_features=h, bias=self.o_bias),
        )

    @cached_property
    def dense_mlp_linears(self) -> tuple[LinearShape, ...]:
        """The dense SwiGLU MLP of a non-MoE layer."""
        h, inter = self.hidden_size, self.intermediate_size
        if self.fused_projections:
            return (
                LinearShape(name="gate_up_proj", in_features=h, out_features=2 * inter, bias=self.mlp_bias),
                LinearShape(name="down_proj", in_features=inter, out_features=h, bias=self.mlp_bias),
            )
        return _swiglu("", h, inter, self.mlp_bias)

    @cached_property
    def moe_block_linears(self) -> tuple[LinearShape, ...]:
        """nn.Linear modules of an MoE block: the shared expert and its gate (the experts are 3D parameters)."""
        if self.moe is None or not self.moe.shared_intermediate_size:
            return ()
        prefix = "shared_expert." if self.family == "qwen2_moe" else "shared_experts."
        shared = _swiglu(prefix, self.hidden_size, self.moe.shared_intermediate_size, False)
        if self.moe.shared_expert_gate:
            gate = LinearShape(name="shared_expert_gate", in_features=self.hidden_size, out_features=1, bias=False)
            shared += (gate,)
        return shared

    def linears_of(self, layer: int) -> tuple[LinearShape, ...]:
        """The nn.Linear modules of decoder layer `layer`, in forward order."""
        mlp = self.moe_block_linears if self.is_moe_layer(layer) else self.dense_mlp_linears
        return self.attention_linears + mlp

    @cached_property
    def linear_names(self) -> frozenset[str]:
        """The names of every decoder layer's nn.Linear modules (each layer is dense or MoE: two shapes at most)."""
        dense, moe = self.dense_layer_ids, self.moe_layer_ids
        examples = dense[:1] + moe[:1]
        return frozenset(linear.name for layer in examples for linear in self.linears_of(layer))

    @cached_property
    def layer_linears(self) -> tuple[LinearShape, ...]:
        """The linear layers of one decoder layer, in forward order (an MoE model: of its first MoE layer)."""
        return self.linears_of(self.moe_layer_ids[0] if self.moe_layer_ids else 0)

    @property
    def all_layer_linears(self) -> list[LinearShape]:
        """Every decoder layer's nn.Linear modules, layer after layer."""
        return [lin for i in range(self.num_layers) for lin in self.linears_of(i)]

    def expert_tensor_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of one MoE layer's 3D expert and router parameters (not nn.Linear: never quantized by bnb)."""
        if self.moe is None:
            return []
        e, i, h = self.moe.num_experts, self.moe.expert_intermediate_size, self.hidden_size
        shapes: list[tuple[int, ...]] = [(e, 2 * i, h), (e, h, i)]
        if self.moe.expert_bias:
            shapes += [(e, 2 * i), (e, h)]
        return shapes

    def router_tensor_shapes(self) -> list[tuple[int, ...]]:
        if self.moe is None:
            return []
        e = self.moe.num_experts
        return [(e, self.hidden_size)] + ([(e,)] if self.moe.router_bias else [])

    def layer_norm_shapes(self) -> list[tuple[int, ...]]:
        """Norm weights (and gpt-oss sinks) of one decoder layer."""
        shapes: list[tuple[int, ...]] = [(self.hidden_size,)] * self.norms_per_layer
        if self.has_qk_norm:
            shapes += [(self.head_dim,), (self.head_dim,)]
        if self.mla is not None:
            if self.mla.q_lora_rank is not None:
                shapes.append((self.mla.q_lora_rank,))
            shapes.append((self.mla.kv_lora_rank,))
        if self.attention_sinks:
            shapes.append((self.num_heads,))
        return shapes

    @property
    def layer_norm_params(self) -> int:
        return sum(math.prod(shape) for shape in self.layer_norm_shapes())

    @property
    def layer_linear_params(self) -> int:
        return sum(linear.params for linear in self.layer_linears)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of a separate lm_head; 0 when it shares the embedding matrix."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def final_norm_params(self) -> int:
        return self.hidden_size

    @property
    def expert_params(self) -> int:
        """Routed-expert and router parameters of all MoE layers."""
        per_layer = sum(math.prod(s) for s in self.expert_tensor_shapes() + self.router_tensor_shapes())
        return len(self.moe_layer_ids) * per_layer

    @property
    def total_params(self) -> int:
        """What `sum(p.numel() for p in model.parameters())` gives (tied weights once)."""
        layers = sum(lin.params for lin in self.all_layer_linears) + self.num_layers * self.layer_norm_params
        return self.embedding_params + self.lm_head_params + self.final_norm_params + layers + self.expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: the routed experts count top-k of E."""
        if self.moe is None:
            return self.total_params
        e, k = self.moe.num_experts, self.moe.experts_per_token
        routed = len(self.moe_layer_ids) * sum(math.prod(s) for s in self.expert_tensor_shapes())
        return self.total_params - routed + routed * k // e

    @property
    def linear_weight_params(self) -> int:
        """Weights of the decoder layers' nn.Linear modules: what bitsandbytes quantizes."""
        return sum(linear.weight_params for linear in self.all_layer_linears)

    @property
    def non_quantized_params(self) -> int:
        """Embeddings, lm_head, norms, biases, and an MoE's 3D experts and router: kept in the load dtype by
        transformers' 4-bit loader, which replaces nn.Linear modules only."""
        return self.total_params - self.linear_weight_params

    def lora_linears(self, targets: tuple[str, ...] | str, layer: int | None = None) -> tuple[LinearShape, ...]:
        """The decoder linears peft adapts for `targets` (`all-linear` = every linear except lm_head), in `layer`
        (default: the layer `layer_linears` describes)."""
        linears = self.layer_linears if layer is None else self.linears_of(layer)
        if targets == "all-linear":
            return linears
        names = self.linear_names | {linear.name.rsplit(".", 1)[-1] for linear in linears}
        unknown = [t for t in targets if t not in names]
        if unknown:
            from vramplan.errors import UsageError

            raise UsageError(
                f"--lora-targets {','.join(unknown)} not in this model's layers; choose from {','.join(sorted(names))}"
            )
        return tuple(lin for lin in linears if lin.name in targets or lin.name.rsplit(".", 1)[-1] in targets)


def _swiglu(prefix: str, hidden: int, inter: int, bias: bool) -> tuple[LinearShape, ...]:
    return (
        LinearShape(name=f"{prefix}gate_proj", in_features=hidden, out_features=inter, bias=bias),
        LinearShape(name=f"{prefix}up_proj", in_features=hidden, out_features=inter, bias=bias),
        LinearShape(name=f"{prefix}down_proj", in_features=inter, out_features=hidden, bias=bias),
    )


def _mla_linears(hidden: int, heads: int, mla: MlaSpec, bias: bool) -> tuple[LinearShape, ...]:
    """DeepseekV3Attention's projections; `attention_bias` applies to q_a, kv_a and o_proj."""
    q_out = heads * mla.qk_head_dim
    if mla.q_lora_rank is None:
        q: tuple[LinearShape, ...] = (LinearShape(name="q_proj", in_features=hidden, out_features=q_out, bias=False),)
    else:
        q = (
            LinearShape(name="q_a_proj", in_features=hidden, out_features=mla.q_lora_rank, bias=bias),
            LinearShape(name="q_b_proj", in_features=mla.q_lora_rank, out_features=q_out, bias=False),
        )
    return q + (
        LinearShape(
            name="kv_a_proj_with_mqa", in_features=hidden, out_features=mla.kv_lora_rank + mla.qk_rope_head_dim,
            bias=bias,
        ),
        LinearShape(
            name="kv_b_proj",
            in_features=mla.kv_lora_rank,
            out_features=heads * (mla.qk_nope_head_dim + mla.v_head_dim),
            bias=False,
        ),
        LinearShape(name="o_proj", in_features=heads * mla.v_head_dim, out_features=hidden, bias=bias),
    )
