"""vramplan: how much GPU memory an LLM fine-tuning run needs, component by component."""

from __future__ import annotations

__version__ = "0.1.0"


def estimate(model: str, method: str = "lora", **options):
    """See vramplan.api.estimate."""
    from vramplan.api import estimate as _estimate

    return _estimate(model, method, **options)


def preflight(model: str, method: str = "lora", **options):
    """See vramplan.api.preflight."""
    from vramplan.api import preflight as _preflight

    return _preflight(model, method, **options)


__all__ = ["__version__", "estimate", "preflight"]
