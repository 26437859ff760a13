"""Parse a Hugging Face config.json (as a dict) into a ModelSpec, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramplan.errors import ModelConfigError, NotModelledError
from vramplan.models.config_fields import (
    MAX_EXPERTS,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN_SIZE,
    MAX_INTERMEDIATE_SIZE,
    MAX_LAYERS,
    MAX_VOCAB_SIZE,
    MAX_WINDOW,
    ConfigFields,
)
from vramplan.models.spec import MlaSpec, ModelSpec, MoeSpec
from vramplan.models.structure import read_json_object

# Each family's config-class defaults for keys a config.json may omit (transformers/models/<family>/configuration_*.py).
_TIED_BY_DEFAULT = {"gemma2": True, "gemma3_text": True}
# Qwen2 hard-codes bias=True on q/k/v (transformers/models/qwen2/modeling_qwen2.py, Qwen2Attention).
_ALWAYS_QKV_BIAS = {"qwen2"}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss")
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", *MOE_FAMILIES)
# Mixture-of-experts families we know of but have not modelled.
UNMODELLED_MOE_FAMILIES = ("deepseek_v2", "dbrx", "olmoe", "qwen3_next", "llama4", "jamba", "granitemoe")


def spec_from_config(config: dict[str, Any], origin: str = "config") -> ModelSpec:
    """The ModelSpec for a config.json dict; unknown or unmodelled architectures and out-of-range fields are refused
    clearly, naming the field."""
    model_type = config.get("model_type")
    if model_type in UNMODELLED_MOE_FAMILIES:
        raise NotModelledError(f"{origin}: mixture-of-experts model_type {model_type!r} is not yet modelled")
    if model_type == "gemma3":
        raise NotModelledError(
            f"{origin}: multimodal gemma3 (vision tower) is not modelled; use its text decoder, e.g. --model gemma-3-4b"
        )
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelConfigError(
            f"{origin}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    fields = ConfigFields(config, origin)
    layers = fields.integer("num_hidden_layers", MAX_LAYERS)
    try:
        return ModelSpec(
            family=model_type,
            vocab_size=fields.integer("vocab_size", MAX_VOCAB_SIZE),
            **_attention_fields(model_type, fields),
            intermediate_size=_intermediate_size(fields),
            num_layers=layers,
            tie_word_embeddings=fields.flag("tie_word_embeddings", _TIED_BY_DEFAULT.get(model_type, False)),
            mlp_bias=fields.flag("mlp_bias", False),
            final_logit_softcapping=fields.positive_number("final_logit_softcapping"),
            **_sliding_window(model_type, fields, layers),
            **_moe_fields(model_type, fields, layers),
        )
    except ValueError as bad:  # pydantic's ValidationError: a cross-field rule the checks above missed
        first_line = str(bad).splitlines()[0]
        raise ModelConfigError(f"{origin}: config.json has an invalid value ({first_line})") from None


def _attention_fields(model_type: str, fields: ConfigFields) -> dict[str, Any]:
    """Heads, kv heads, head width and biases, checked against each other as transformers' attention uses them."""
    hidden = fields.integer("hidden_size", MAX_HIDDEN_SIZE)
    heads = fields.integer("num_attention_heads", MAX_HEADS)
    kv_heads = fields.optional_integer("num_key_value_heads", MAX_HEADS) or heads
    if kv_heads > heads or heads % kv_heads:
        # repeat_kv (transformers/models/llama/modeling_llama.py) shares each kv head among heads / kv_heads queries.
        raise fields.fail("num_key_value_heads", f"a divisor of num_attention_heads ({heads})", kv_heads)
    head_dim = fields.optional_integer("head_dim", MAX_HEAD_DIM)
    if head_dim is None:
        if hidden % heads:  # LlamaAttention: head_dim = hidden_size // num_attention_heads when config.json omits it
            raise fields.fail("hidden_size", f"a multiple of num_attention_heads ({heads}) when head_dim is absent",
                              hidden)
        head_dim = hidden // heads
    bias = fields.flag("attention_bias", _DEFAULT_ATTENTION_BIAS.get(model_type, False))
    if model_type == "qwen2_moe":  # Qwen2MoeConfig.qkv_bias (default True) on q/k/v; o_proj has none
        bias = False
    qkv_bias = bias or model_type in _ALWAYS_QKV_BIAS or (model_type == "qwen2_moe" and fields.flag("qkv_bias", True))
    return {
        "hidden_size": hidden, "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
        "qkv_bias": qkv_bias, "o_bias": bias and model_type not in _ALWAYS_QKV_BIAS,
    }


def _intermediate_size(fields: ConfigFields) -> int:
    if fields.raw("intermediate_size"):
        return fields.integer("intermediate_size", MAX_INTERMEDIATE_SIZE)
    return fields.integer("moe_intermediate_size", MAX_INTERMEDIATE_SIZE)


# The transformers config classes' defaults where config.json leaves a key out (MistralConfig sliding_window=4096,
# Gemma2Config/Gemma3TextConfig sliding_window=4096 and sliding_window_pattern 2/6, Phi3Config sliding_window=None).
_DEFAULT_SLIDING_WINDOW = {"mistral": 4096, "gemma2": 4096, "gemma3_text": 4096}
_DEFAULT_SLIDING_PATTERN = {"gemma2": 2, "gemma3_text": 6}


def _sliding_window(model_type: str, fields: ConfigFields, layers: int) -> dict[str, Any]:
    """Which layers attend through a sliding window, as transformers decides from the config."""
    origin = fields.origin
    if model_type in ("mixtral", "deepseek_v3"):
        if model_type == "mixtral" and fields.raw("sliding_window") is not None:
            raise NotModelledError(f"{origin}: mixtral with a sliding_window is not modelled")
        return {}
    if model_type == "gpt_oss":  # GptOssConfig: alternating sliding (even layers) and full attention
        window = fields.optional_integer("sliding_window", MAX_WINDOW) or 128
        kinds = fields.layer_types(layers) or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)
        ]
        sliding = tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention")
        return {"sliding_window": window, "sliding_layer_ids": sliding}
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        if fields.flag("use_sliding_window", False):
            raise NotModelledError(f"{origin}: use_sliding_window=true is not modelled for {model_type}")
        return {}
    if model_type == "llama":
        return {}
    window = fields.optional_integer("sliding_window", MAX_WINDOW, default=_DEFAULT_SLIDING_WINDOW.get(model_type))
    if window is None:
        return {}
    if model_type in _DEFAULT_SLIDING_PATTERN:
        layer_types = fields.layer_types(layers)
        if layer_types:
            sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
        else:  # Gemma3TextConfig: layer i slides unless (i + 1) is a multiple of the pattern
            pattern = fields.integer("sliding_window_pattern", MAX_LAYERS, default=_DEFAULT_SLIDING_PATTERN[model_type])
            sliding = tuple(i for i in range(layers) if (i + 1) % pattern)
    else:
        sliding = tuple(range(layers))
    return {"sliding_window": window, "sliding_layer_ids": sliding}


# Config-class defaults for attention_bias (GptOssConfig.attention_bias=True).
_DEFAULT_ATTENTION_BIAS = {"gpt_oss": True}


def _moe_fields(model_type: str, fields: ConfigFields, layers: int) -> dict[str, Any]:
    """MoeSpec/MlaSpec from the config keys each family's configuration_*.py reads."""
    if model_type not in MOE_FAMILIES:
        return {}
    if model_type in ("mixtral", "gpt_oss"):
        # MixtralConfig: every layer is sparse, experts are intermediate_size wide. GptOssExperts: biased experts, a
        # biased router, attention sinks.
        gpt_oss = model_type == "gpt_oss"
        moe = _checked_moe(
            fields,
            num_experts=fields.integer("num_local_experts", MAX_EXPERTS, default=128 if gpt_oss else 8),
            experts_per_token=fields.integer("num_experts_per_tok", MAX_EXPERTS, default=4 if gpt_oss else 2),
            expert_intermediate_size=fields.integer("intermediate_size", MAX_INTERMEDIATE_SIZE),
            expert_bias=gpt_oss,
            router_bias=gpt_oss,
        )
        return {"moe": moe, "attention_sinks": True} if gpt_oss else {"moe": moe}
    if model_type in ("qwen2_moe", "qwen3_moe"):
        return {"moe": _qwen_moe(model_type, fields, layers)}
    return _deepseek_v3(fields, layers)


def _checked_moe(fields: ConfigFields, **values: Any) -> MoeSpec:
    if values["experts_per_token"] > values["num_experts"]:
        raise fields.fail("num_experts_per_tok", f"at most the number of experts ({values['num_experts']})",
                          values["experts_per_token"])
    return MoeSpec(**values)


def _qwen_moe(model_type: str, fields: ConfigFields, layers: int) -> MoeSpec:
    """Qwen2MoeDecoderLayer: sparse unless in mlp_only_layers or (i + 1) % decoder_sparse_step != 0."""
    qwen2 = model_type == "qwen2_moe"
    experts = fields.integer("num_experts", MAX_EXPERTS, default=60 if qwen2 else 128)
    step = fields.integer("decoder_sparse_step", MAX_LAYERS, default=1)
    only = fields.layer_ids("mlp_only_layers", layers)
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
    shared = fields.integer("shared_expert_intermediate_size", MAX_INTERMEDIATE_SIZE, low=0, default=5632) if qwen2 \
        else 0
    return _checked_moe(
        fields,
        num_experts=experts,
        experts_per_token=fields.integer("num_experts_per_tok", MAX_EXPERTS, default=4 if qwen2 else 8),
        expert_intermediate_size=fields.integer("moe_intermediate_size", MAX_INTERMEDIATE_SIZE,
                                                default=1408 if qwen2 else 768),
        shared_intermediate_size=shared,
        shared_expert_gate=qwen2,
        norm_topk_prob=fields.flag("norm_topk_prob", False),
        dense_layer_ids=dense,
    )


def _deepseek_v3(fields: ConfigFields, layers: int) -> dict[str, Any]:
    """DeepseekV3Config defaults; first_k_dense_replace dense layers, then MoE with shared experts, and MLA."""
    origin = fields.origin
    shared_experts = fields.optional_integer("n_shared_experts", MAX_EXPERTS, low=0, default=1)
    if not shared_experts:
        raise NotModelledError(f"{origin}: deepseek_v3 without shared experts is not modelled")
    fields.optional_integer("n_group", MAX_EXPERTS, low=0, default=8)  # 0 or null: one group
    expert_inter = fields.integer("moe_intermediate_size", MAX_INTERMEDIATE_SIZE, default=2048)
    moe = _checked_moe(
        fields,
        num_experts=fields.integer("n_routed_experts", MAX_EXPERTS, default=256),
        experts_per_token=fields.integer("num_experts_per_tok", MAX_EXPERTS, default=8),
        expert_intermediate_size=expert_inter,
        shared_intermediate_size=expert_inter * shared_experts,
        router_fp32=True,
        norm_topk_prob=fields.flag("norm_topk_prob", True),
        dense_layer_ids=tuple(range(min(layers, fields.integer("first_k_dense_replace", MAX_LAYERS, low=0,
                                                               default=3)))),
    )
    mla = MlaSpec(
        q_lora_rank=fields.optional_integer("q_lora_rank", MAX_HIDDEN_SIZE, default=1536),
        kv_lora_rank=fields.integer("kv_lora_rank", MAX_HIDDEN_SIZE, default=512),
        qk_nope_head_dim=fields.integer("qk_nope_head_dim", MAX_HEAD_DIM, default=128),
        qk_rope_head_dim=fields.integer("qk_rope_head_dim", MAX_HEAD_DIM, default=64),
        v_head_dim=fields.integer("v_head_dim", MAX_HEAD_DIM, default=128),
    )
    return {"moe": moe, "mla": mla}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read config.json from a file or from a folder that holds one."""
    try:
        file = path / "config.json" if path.is_dir() else path
        found = file.is_file()
    except OSError as err:  # a name too long for the file system, a path through a file, ...
        raise ModelConfigError(f"{str(path)[:80]}: not a readable path ({err.strerror or err.__class__.__name__})") \
            from None
    if not found:
        raise ModelConfigError(f"{path}: no config.json there")
    return read_json_object(file, "model config", ModelConfigError)
