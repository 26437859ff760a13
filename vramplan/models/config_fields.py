"""Typed, bounded reads of config.json fields: a bad value is a one-line ModelConfigError naming the field and file.

The bounds are sanity limits, far above every released model, so that an absurd value (a fuzzed or mistyped
config) is refused instead of answered with meaningless or never-ending arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

from vramplan.errors import ModelConfigError

# Largest published vocabulary: Gemma 3, 262,208 tokens (google/gemma-3-*/config.json); 2^24 leaves 64x headroom.
MAX_VOCAB_SIZE = 2**24
# Widest published hidden size: Llama 3.1 405B, 16,384 (meta-llama/Llama-3.1-405B/config.json); 8x headroom.
MAX_HIDDEN_SIZE = 2**17
# Widest MLP: Llama 3.1 405B intermediate_size 53,248; 2^20 leaves about 20x headroom.
MAX_INTERMEDIATE_SIZE = 2**20
# Deepest published decoder: Llama 3.1 405B, 126 layers; 1,024 leaves 8x headroom (plan's cost grows with layers).
MAX_LAYERS = 1024
# Most attention heads: DeepSeek-V3 and Llama 3.1 405B, 128; 1,024 leaves 8x headroom.
MAX_HEADS = 1024
# Widest head: Gemma 2/3, head_dim 256 (DeepSeek-V3 qk_nope 128 + rope 64); 4,096 leaves 16x headroom.
MAX_HEAD_DIM = 4096
# Most routed experts: DeepSeek-V3, 256 (Kimi K2, 384); 8,192 leaves 20x headroom.
MAX_EXPERTS = 8192
# Longest context window a config names: Mistral Nemo max_position_embeddings 1,024,000; 2^24 leaves 16x headroom.
MAX_WINDOW = 2**24

_MISSING = object()


class ConfigFields:
    """Reads one config.json dict; every getter names `origin` (the file or catalog id) and the field on failure."""

    def __init__(self, config: dict[str, Any], origin: str):
        self.config = config
        self.origin = origin

    def fail(self, key: str, expected: str, value: Any = _MISSING) -> ModelConfigError:
        got = "" if value is _MISSING else f", got {_shown(value)}"
        return ModelConfigError(f"{self.origin}: config.json field {key!r} must be {expected}{got}")

    def raw(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def integer(self, key: str, high: int, *, low: int = 1, default: Any = _MISSING) -> int:
        """A whole number in [low, high]; a missing key (or null) takes `default`, or is an error without one."""
        value = self.config.get(key)
        if value is None:
            if default is _MISSING:
                raise ModelConfigError(f"{self.origin}: config.json lacks {key!r}")
            value = default
        return self.check_integer(key, value, low, high)

    def optional_integer(self, key: str, high: int, *, low: int = 1, default: Any = None) -> int | None:
        """Like `integer`, but null (or a missing key without a default) is None."""
        value = self.config.get(key, default)
        return None if value is None else self.check_integer(key, value, low, high)

    def check_integer(self, key: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"a whole number from {low} to {high}", value)
        if not low <= value <= high:
            raise self.fail(key, f"from {low} to {high}", value)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """true or false; null counts as false, as transformers' `bool(...)` reads it."""
        value = self.config.get(key, default)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def positive_number(self, key: str) -> float | None:
        """A finite number above 0, or None when missing or null."""
        value = self.config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise self.fail(key, "a finite number above 0, or null", value)
        return float(value)

    def layer_ids(self, key: str, layers: int) -> set[int]:
        """A list of layer indices below `layers` (null or missing: none)."""
        value = self.config.get(key) or []
        if not isinstance(value, list):
            raise self.fail(key, "a list of layer indices", value)
        return {self.check_integer(key, item, 0, layers - 1) for item in value}

    def layer_types(self, layers: int) -> list[str] | None:
        """`layer_types`: one attention kind per layer, or None when missing or empty."""
        value = self.config.get("layer_types")
        if not value:
            return None
        if not isinstance(value, list) or not all(isinstance(kind, str) for kind in value):
            raise self.fail("layer_types", "a list of strings, one per layer", value)
        if len(value) != layers:
            raise self.fail("layer_types", f"one entry per layer ({layers}), not {len(value)}")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
