"""Display units. Memory is computed in bytes; these convert for printing only."""

from __future__ import annotations

GIB = 1024**3  # gibibyte, 2^30 bytes
GB = 1000**3  # gigabyte, 10^9 bytes

# GPU memory kept free unless told otherwise, by check, fit and plan alike: the caching allocator's fragmentation and
# the CUDA context vary by run, and vramplan's reserved figure is a lower bound for now (README, "What is modelled").
DEFAULT_HEADROOM = 0.10
# Most passes over the training tokens a plan takes (`--epochs`): finite, so no answer holds inf.
MAX_EPOCHS = 10_000


def gib(nbytes: int) -> float:
    return nbytes / GIB


def gb(nbytes: int) -> float:
    return nbytes / GB


def parse_fraction(text: str, option: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    from vramplan.errors import UsageError

    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: write a percentage like 10% or a fraction like 0.1") from None
    if not 0 <= value < 1:
        raise UsageError(f"{option} {text!r}: must be at least 0% and under 100%")
    return value


def parse_count(text: str | int, option: str) -> int:
    """'50M' -> 50_000_000; '2B', '500k', '1e9' and plain integers too; at least 1."""
    import math

    from vramplan.errors import UsageError

    scale = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    cleaned = str(text).strip().lower().replace("_", "").replace(",", "")
    try:
        if cleaned and cleaned[-1] in scale:
            value = float(cleaned[:-1]) * scale[cleaned[-1]]
        else:
            value = float(cleaned)
        if not math.isfinite(value) or value < 1:
            raise ValueError
        return round(value)
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {text!r}: write a positive count like 50M, 2B or 500000") from None
