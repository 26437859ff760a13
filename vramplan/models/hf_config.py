"""Parse a Hugging Face config.json (as a dict) into a ModelSpec, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vramplan.errors import ModelConfigError, NotModelledError
from vramplan.models.spec import MlaSpec, ModelSpec, MoeSpec

# Each family's config-class defaults for keys a config.json may omit (transformers/models/<family>/configuration_*.py).
_TIED_BY_DEFAULT = {"gemma2": True, "gemma3_text": True}
# Qwen2 hard-codes bias=True on q/k/v (transformers/models/qwen2/modeling_qwen2.py, Qwen2Attention).
_ALWAYS_QKV_BIAS = {"qwen2"}
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss")
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", *MOE_FAMILIES)
# Mixture-of-experts families we know of but have not modelled.
UNMODELLED_MOE_FAMILIES = ("deepseek_v2", "dbrx", "olmoe", "qwen3_next", "llama4", "jamba", "granitemoe")


def spec_from_config(config: dict[str, Any], origin: str = "config") -> ModelSpec:
    """The ModelSpec for a config.json dict; unknown or unmodelled architectures are refused clearly."""
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
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or hidden // heads
        bias = bool(config.get("attention_bias", _DEFAULT_ATTENTION_BIAS.get(model_type, False)))
        if model_type == "qwen2_moe":  # Qwen2MoeConfig.qkv_bias (default True) on q/k/v; o_proj has none
            bias = False
        return ModelSpec(
            family=model_type,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config.get("intermediate_size") or config["moe_intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(model_type, False))),
            qkv_bias=bias or model_type in _ALWAYS_QKV_BIAS
            or (model_type == "qwen2_moe" and bool(config.get("qkv_bias", True))),
            o_bias=bias and model_type not in _ALWAYS_QKV_BIAS,
            mlp_bias=bool(config.get("mlp_bias", False)),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            **_sliding_window(model_type, config, int(config["num_hidden_layers"]), origin),
            **_moe_fields(model_type, config, int(config["num_hidden_layers"]), origin),
        )
    except KeyError as missing:
        raise ModelConfigError(f"{origin}: config.json lacks {missing.args[0]!r}") from None
    except (TypeError, ValueError) as bad:
        first_line = str(bad).splitlines()[0]
        raise ModelConfigError(f"{origin}: config.json has an invalid value ({first_line})") from None


# The transformers config classes' defaults where config.json leaves a key out (MistralConfig sliding_window=4096,
# Gemma2Config/Gemma3TextConfig sliding_window=4096 and sliding_window_pattern 2/6, Phi3Config sliding_window=None).
_DEFAULT_SLIDING_WINDOW = {"mistral": 4096, "gemma2": 4096, "gemma3_text": 4096}
_DEFAULT_SLIDING_PATTERN = {"gemma2": 2, "gemma3_text": 6}


def _sliding_window(model_type: str, config: dict[str, Any], layers: int, origin: str) -> dict[str, Any]:
    """Which layers attend through a sliding window, as transformers decides from the config."""
    if model_type in ("mixtral", "deepseek_v3"):
        if model_type == "mixtral" and config.get("sliding_window") is not None:
            raise NotModelledError(f"{origin}: mixtral with a sliding_window is not modelled")
        return {}
    if model_type == "gpt_oss":  # GptOssConfig: alternating sliding (even layers) and full attention
        window = int(config.get("sliding_window") or 128)
        kinds = config.get("layer_types") or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)
        ]
        sliding = tuple(i for i, kind in enumerate(kinds) if kind == "sliding_attention")
        return {"sliding_window": window, "sliding_layer_ids": sliding}
    if model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        if config.get("use_sliding_window"):
            raise NotModelledError(f"{origin}: use_sliding_window=true is not modelled for {model_type}")
        return {}
    if model_type == "llama":
        return {}
    window = config.get("sliding_window", _DEFAULT_SLIDING_WINDOW.get(model_type))
    if window is None:
        return {}
    if model_type in _DEFAULT_SLIDING_PATTERN:
        layer_types = config.get("layer_types")
        if layer_types:
            sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
        else:  # Gemma3TextConfig: layer i slides unless (i + 1) is a multiple of the pattern
            pattern = int(config.get("sliding_window_pattern", _DEFAULT_SLIDING_PATTERN[model_type]))
            sliding = tuple(i for i in range(layers) if (i + 1) % pattern)
    else:
        sliding = tuple(range(layers))
    return {"sliding_window": int(window), "sliding_layer_ids": sliding}


# Config-class defaults for attention_bias (GptOssConfig.attention_bias=True).
_DEFAULT_ATTENTION_BIAS = {"gpt_oss": True}


def _moe_fields(model_type: str, config: dict[str, Any], layers: int, origin: str) -> dict[str, Any]:
    """MoeSpec/MlaSpec from the config keys each family's configuration_*.py reads."""
    if model_type not in MOE_FAMILIES:
        return {}
    if model_type == "mixtral":  # MixtralConfig: every layer is sparse, experts are intermediate_size wide
        moe = MoeSpec(
            num_experts=int(config.get("num_local_experts", 8)),
            experts_per_token=int(config.get("num_experts_per_tok", 2)),
            expert_intermediate_size=int(config["intermediate_size"]),
        )
        return {"moe": moe}
    if model_type == "gpt_oss":  # GptOssExperts: biased experts, a biased router, attention sinks
        moe = MoeSpec(
            num_experts=int(config.get("num_local_experts", 128)),
            experts_per_token=int(config.get("num_experts_per_tok", 4)),
            expert_intermediate_size=int(config["intermediate_size"]),
            expert_bias=True,
            router_bias=True,
        )
        return {"moe": moe, "attention_sinks": True}
    if model_type in ("qwen2_moe", "qwen3_moe"):
        # Qwen2MoeDecoderLayer: sparse unless in mlp_only_layers or (i + 1) % decoder_sparse_step != 0.
        experts = int(config.get("num_experts", 60 if model_type == "qwen2_moe" else 128))
        step = int(config.get("decoder_sparse_step", 1))
        only = set(config.get("mlp_only_layers") or [])
        dense = tuple(i for i in range(layers) if i in only or experts == 0 or (i + 1) % step)
        shared = int(config.get("shared_expert_intermediate_size", 5632)) if model_type == "qwen2_moe" else 0
        moe = MoeSpec(
            num_experts=experts,
            experts_per_token=int(config.get("num_experts_per_tok", 4 if model_type == "qwen2_moe" else 8)),
            expert_intermediate_size=int(
                config.get("moe_intermediate_size", 1408 if model_type == "qwen2_moe" else 768)
            ),
            shared_intermediate_size=shared,
            shared_expert_gate=model_type == "qwen2_moe",
            norm_topk_prob=bool(config.get("norm_topk_prob", False)),
            dense_layer_ids=dense,
        )
        return {"moe": moe}
    # deepseek_v3: DeepseekV3Config defaults; first_k_dense_replace dense layers, then MoE with shared experts.
    expert_inter = int(config.get("moe_intermediate_size", 2048))
    moe = MoeSpec(
        num_experts=int(config.get("n_routed_experts", 256)),
        experts_per_token=int(config.get("num_experts_per_tok", 8)),
        expert_intermediate_size=expert_inter,
        shared_intermediate_size=expert_inter * int(config.get("n_shared_experts", 1)),
        router_fp32=True,
        norm_topk_prob=bool(config.get("norm_topk_prob", True)),
        dense_layer_ids=tuple(range(min(layers, int(config.get("first_k_dense_replace", 3))))),
    )
    if config.get("n_shared_experts", 1) in (None, 0):
        raise NotModelledError(f"{origin}: deepseek_v3 without shared experts is not modelled")
    if int(config.get("n_group", 8) or 1) < 1:
        raise ModelConfigError(f"{origin}: n_group must be positive")
    mla = MlaSpec(
        q_lora_rank=config.get("q_lora_rank", 1536),
        kv_lora_rank=int(config.get("kv_lora_rank", 512)),
        qk_nope_head_dim=int(config.get("qk_nope_head_dim", 128)),
        qk_rope_head_dim=int(config.get("qk_rope_head_dim", 64)),
        v_head_dim=int(config.get("v_head_dim", 128)),
    )
    return {"moe": moe, "mla": mla}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read config.json from a file or from a folder that holds one."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelConfigError(f"{path}: no config.json there")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelConfigError(f"{file}: not a readable JSON config ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{file}: config.json must hold a JSON object")
    return data
