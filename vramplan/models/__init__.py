"""Architecture specs, the named-model catalog and config.json parsing."""

from vramplan.models.catalog import ResolvedModel, load_catalog, resolve_model
from vramplan.models.spec import LinearShape, ModelSpec

__all__ = ["LinearShape", "ModelSpec", "ResolvedModel", "load_catalog", "resolve_model"]
