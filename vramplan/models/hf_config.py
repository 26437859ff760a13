"""Parse a Hugging Face config.json (as a dict) into a ModelSpec, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vramplan.errors import ModelConfigError, NotModelledError
from vramplan.models.spec import ModelSpec

# Each family's config-class defaults for keys a config.json may omit (transformers/models/<family>/configuration_*.py).
_TIED_BY_DEFAULT = {"gemma2": True, "gemma3_text": True}
# Qwen2 hard-codes bias=True on q/k/v (transformers/models/qwen2/modeling_qwen2.py, Qwen2Attention).
_ALWAYS_QKV_BIAS = {"qwen2"}
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "deepseek_v2", "gpt_oss", "dbrx", "olmoe")


def spec_from_config(config: dict[str, Any], origin: str = "config") -> ModelSpec:
    """The ModelSpec for a config.json dict; unknown or unmodelled architectures are refused clearly."""
    model_type = config.get("model_type")
    if model_type in MOE_FAMILIES:
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
        bias = bool(config.get("attention_bias", False))
        return ModelSpec(
            family=model_type,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", _TIED_BY_DEFAULT.get(model_type, False))),
            qkv_bias=bias or model_type in _ALWAYS_QKV_BIAS,
            o_bias=bias and model_type not in _ALWAYS_QKV_BIAS,
            mlp_bias=bool(config.get("mlp_bias", False)),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            **_sliding_window(model_type, config, int(config["num_hidden_layers"]), origin),
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
    if model_type in ("qwen2", "qwen3"):
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
