"""vramplan: how much GPU memory an LLM fine-tuning run needs, component by component."""

from __future__ import annotations

# The rules package is imported first, so that `vramplan.estimate` below is the API function: Python binds a
# subpackage to its parent's attribute when the subpackage is first imported, and by then it already has been.
from vramplan import estimate as _rules  # noqa: F401

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
