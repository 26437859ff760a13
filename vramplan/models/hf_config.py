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
        )
    except KeyError as missing:
        raise ModelConfigError(f"{origin}: config.json lacks {missing.args[0]!r}") from None
    except (TypeError, ValueError) as bad:
        first_line = str(bad).splitlines()[0]
        raise ModelConfigError(f"{origin}: config.json has an invalid value ({first_line})") from None


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
