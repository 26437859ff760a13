"""ModelSpec: the architecture facts that decide training memory, and the parameter counts they imply."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]


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
        return self.family in ("qwen3", "gemma3_text")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @cached_property
    def layer_linears(self) -> tuple[LinearShape, ...]:
        """The linear layers of one decoder layer, in forward order."""
        h, q, kv, inter = self.hidden_size, self.q_size, self.kv_size, self.intermediate_size
        if self.fused_projections:
            return (
                LinearShape(name="qkv_proj", in_features=h, out_features=q + 2 * kv, bias=self.qkv_bias),
                LinearShape(name="o_proj", in_features=q, out_features=h, bias=self.o_bias),
                LinearShape(name="gate_up_proj", in_features=h, out_features=2 * inter, bias=self.mlp_bias),
                LinearShape(name="down_proj", in_features=inter, out_features=h, bias=self.mlp_bias),
            )
        return (
            LinearShape(name="q_proj", in_features=h, out_features=q, bias=self.qkv_bias),
            LinearShape(name="k_proj", in_features=h, out_features=kv, bias=self.qkv_bias),
            LinearShape(name="v_proj", in_features=h, out_features=kv, bias=self.qkv_bias),
            LinearShape(name="o_proj", in_features=q, out_features=h, bias=self.o_bias),
            LinearShape(name="gate_proj", in_features=h, out_features=inter, bias=self.mlp_bias),
            LinearShape(name="up_proj", in_features=h, out_features=inter, bias=self.mlp_bias),
            LinearShape(name="down_proj", in_features=inter, out_features=h, bias=self.mlp_bias),
        )

    @property
    def layer_norm_params(self) -> int:
        norms = self.norms_per_layer * self.hidden_size
        return norms + (2 * self.head_dim if self.has_qk_norm else 0)

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
    def total_params(self) -> int:
        """What `sum(p.numel() for p in model.parameters())` gives (tied weights once)."""
        per_layer = self.layer_linear_params + self.layer_norm_params
        return self.embedding_params + self.lm_head_params + self.final_norm_params + self.num_layers * per_layer

    @property
    def linear_weight_params(self) -> int:
        """Weights of the decoder layers' nn.Linear modules: what bitsandbytes quantizes."""
        return self.num_layers * sum(linear.weight_params for linear in self.layer_linears)

    @property
    def non_quantized_params(self) -> int:
        """Embeddings, lm_head, norms and biases: kept in the load dtype by transformers' 4-bit loader."""
        return self.total_params - self.linear_weight_params

    def lora_linears(self, targets: tuple[str, ...] | str) -> tuple[LinearShape, ...]:
        """The decoder linears peft adapts for `targets` (`all-linear` = every linear except lm_head)."""
        if targets == "all-linear":
            return self.layer_linears
        names = {linear.name for linear in self.layer_linears}
        unknown = [t for t in targets if t not in names]
        if unknown:
            from vramplan.errors import UsageError

            raise UsageError(
                f"--lora-targets {','.join(unknown)} not in this model's layers; choose from {','.join(sorted(names))}"
            )
        return tuple(linear for linear in self.layer_linears if linear.name in targets)
