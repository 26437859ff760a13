"""Which linears LoRA adapts, per stack: peft's `target_modules` on the Hugging Face stacks (with peft's rewrite of
mixture-of-experts targets), and torchtune's lora_attn_modules / apply_lora_to_mlp / apply_lora_to_output."""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.errors import NotModelledError, UsageError
from vramplan.models.spec import LinearShape, ModelSpec
from vramplan.training import ALL_LINEAR, TrainingSetup

# torchtune's names for the adapted linears (torchtune/models/llama3_1/_component_builders.py, lora_llama3_1):
# attention through lora_attn_modules; the MLP's w1 (gate), w2 (down), w3 (up) all at once by apply_lora_to_mlp.
ATTENTION_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
MLP_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}

# peft 0.21 (peft/utils/transformers_weight_conversion.py, _convert_peft_config_moe) rewrites LoRA targets of the
# model types transformers converts from v4 checkpoints: the v4 expert and router names become `target_parameters`
# on the 3D experts (gate_up_proj, down_proj) and the router weight (gate.weight), wrapped by lora.ParamWrapper.
# "all-linear" counts as naming all of them. Keys: model_type -> the v4 module names peft remaps.
PEFT_PARAMETER_TARGETS = {
    "mixtral": ("gate", "w1", "w2", "w3"),
    "qwen3_moe": ("gate", "gate_proj", "up_proj", "down_proj"),
    "deepseek_v3": ("gate", "gate_proj", "up_proj", "down_proj"),
}


def peft_adapted_linears(spec: ModelSpec, setup: TrainingSetup, layer: int) -> tuple[LinearShape, ...]:
    """The linears of decoder layer `layer` that peft wraps in lora.Linear (none without LoRA)."""
    if setup.lora is None:
        return ()
    return spec.lora_linears(setup.lora.targets, layer)


def peft_parameter_targets(spec: ModelSpec, targets: tuple[str, ...] | str) -> list[str]:
    """The requested LoRA targets that peft turns into adapters on the experts or the router."""
    remapped = PEFT_PARAMETER_TARGETS.get(spec.family, ())
    if targets == "all-linear":
        return list(remapped)
    return [t for t in targets if t in remapped]


def default_lora_targets(spec: ModelSpec) -> str | None:
    """The LoRA targets vramplan picks when the user names none on an MoE model whose `all-linear` peft would put on
    the experts (not modelled): the attention projections, which every MoE LoRA recipe adapts. None otherwise."""
    if spec.moe is None or not PEFT_PARAMETER_TARGETS.get(spec.family):
        return None
    return ",".join(lin.name for lin in spec.attention_linears)


class LoraPlan(BaseModel):
    """vramplan's lora_targets in torchtune's terms (vramplan names kept for the spec's LinearShapes)."""

    attn: tuple[str, ...]  # vramplan names among q_proj, k_proj, v_proj, o_proj
    mlp: bool
    output: bool

    @property
    def adapted(self) -> set[str]:
        return set(self.attn) | (set(MLP_NAMES) if self.mlp else set())

    @property
    def torchtune_attn(self) -> list[str]:
        return [ATTENTION_NAMES[name] for name in self.attn]


def lora_plan(setup: TrainingSetup) -> LoraPlan:
    """Map q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (and lm_head) onto torchtune's switches."""
    targets = setup.lora.targets
    names = tuple(ATTENTION_NAMES) + tuple(MLP_NAMES) if targets == ALL_LINEAR else targets
    unknown = [name for name in names if name not in {**ATTENTION_NAMES, **MLP_NAMES, "lm_head": ""}]
    if unknown:
        raise UsageError(
            f"--lora-targets {unknown[0]}: torchtune adapts q_proj, k_proj, v_proj, o_proj (output_proj), "
            "gate_proj/up_proj/down_proj (w1/w3/w2, all three together) and lm_head (output)"
        )
    mlp = [name for name in names if name in MLP_NAMES]
    if mlp and len(mlp) != len(MLP_NAMES):
        raise NotModelledError(
            "torchtune adapts the MLP's w1, w2 and w3 together (apply_lora_to_mlp); "
            f"--lora-targets with only {','.join(mlp)} cannot be expressed"
        )
    attn = tuple(name for name in ATTENTION_NAMES if name in names)
    if not attn:
        raise NotModelledError("torchtune's LoRA builders need at least one attention projection (lora_attn_modules)")
    return LoraPlan(attn=attn, mlp=bool(mlp), output="lm_head" in names)


def torchtune_layer_linears(spec: ModelSpec) -> tuple[LinearShape, ...]:
    """A TransformerSelfAttentionLayer's linears: the attention projections and the dense MLP (no MoE in torchtune)."""
    return spec.attention_linears + spec.dense_mlp_linears


def torchtune_adapted_linears(spec: ModelSpec, setup: TrainingSetup) -> tuple[LinearShape, ...]:
    """The layer linears torchtune's LoRA builders make LoRALinear (none for full fine-tuning)."""
    if setup.lora is None:
        return ()
    adapted = lora_plan(setup).adapted
    return tuple(lin for lin in torchtune_layer_linears(spec) if lin.name in adapted)
