"""Versioned JSON documents: every `--format json` answer is {"schema": SCHEMA_VERSION, "kind": ..., ...}.

`SCHEMA_VERSION` changes when a field is removed, renamed or changes meaning (adding a field does not). The JSON
Schema of each kind is published in vramplan/schemas/<kind>.schema.json, written by `python -m vramplan.output`
from the result models below; tests/test_output.py holds the files to the models and the CLI's output to the files.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_VERSION = 1
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
LIST_KINDS = ("models", "catalog-gpus", "catalog-systems")  # documents that carry a list, under "items"


def versioned(kind: str, payload: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """The document of `kind`: a dict payload's keys after "schema" and "kind", a list under "items"."""
    if kind not in document_kinds():
        raise ValueError(f"unknown document kind {kind!r}")
    head = {"schema": SCHEMA_VERSION, "kind": kind}
    if isinstance(payload, dict) and head.keys() & payload.keys():
        raise ValueError(f"a {kind} payload may not carry its own 'schema' or 'kind' key")
    return {**head, "items": payload} if isinstance(payload, list) else {**head, **payload}


def json_text(document: Any) -> str:
    """JSON text; a non-finite number is a bug (inputs are bounded), so it raises instead of writing `Infinity`."""
    return json.dumps(document, indent=2, allow_nan=False)


def document_kinds() -> dict[str, Any]:
    """kind -> a callable returning the payload's JSON Schema (imports stay lazy: the estimate path is fast)."""
    return {
        "estimate": _estimate, "trace": _trace, "plan": _plan, "fit": _fit, "check": _check, "probe": _probe,
        "validate": _free_form, "models": _models, "catalog-gpus": _gpus, "catalog-systems": _systems,
        "catalog-show": _record, "serve-size": _serve_size, "serve-plan": _serve_plan,
    }


def document_schema(kind: str) -> dict[str, Any]:
    """The published JSON Schema of one kind of document."""
    payload = document_kinds()[kind]()
    defs: dict[str, Any] = {}
    _hoist_defs(payload, defs)
    head = {"schema": {"const": SCHEMA_VERSION}, "kind": {"const": kind}}
    if kind in LIST_KINDS:
        body = {"type": "object", "properties": {**head, "items": payload}, "required": ["schema", "kind", "items"]}
    else:
        body = dict(payload)
        body["properties"] = {**head, **payload.get("properties", {})}
        body["required"] = ["schema", "kind", *payload.get("required", [])]
    schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"vramplan/schemas/{kind}.schema.json",
              "title": f"vramplan {kind} (schema {SCHEMA_VERSION})", **body}
    if defs:
        schema["$defs"] = defs
    return schema


def _hoist_defs(node: Any, defs: dict[str, Any]) -> None:
    """Move every nested "$defs" to the top (pydantic names them by model, so they merge)."""
    if isinstance(node, dict):
        for name, definition in node.pop("$defs", {}).items():
            defs[name] = definition
            _hoist_defs(definition, defs)
        for value in node.values():
            _hoist_defs(value, defs)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, defs)


def _with(model, **extra: Any) -> dict[str, Any]:
    """A model's JSON Schema plus properties the CLI adds to its document."""
    schema = model.model_json_schema(mode="serialization")
    schema.setdefault("properties", {}).update({name: spec for name, (spec, _) in extra.items()})
    schema["required"] = [*schema.get("required", []), *(name for name, (_, req) in extra.items() if req)]
    return schema


def _suggestions_schema() -> dict[str, Any]:
    from vramplan.hardware.suggest import Suggestion

    item = Suggestion.model_json_schema(mode="serialization")
    item["properties"]["command"] = {"type": "string", "description": "the user's command with this change"}
    item["required"] = [*item.get("required", []), "command"]
    return {"type": "array", "items": item}


def _estimate():
    from vramplan.result import Estimate

    return Estimate.model_json_schema(mode="serialization")


def _trace():
    from vramplan.measure.trace import Trace

    return Trace.model_json_schema(mode="serialization")


def _plan():
    from vramplan.hardware.plan import Plan

    return _with(Plan, suggestions=(_suggestions_schema(), True))


def _fit():
    from vramplan.hardware.fit import FitResult
    from vramplan.hardware.targets import GpuTarget

    return _with(FitResult, gpu=(GpuTarget.model_json_schema(mode="serialization"), True),
                 suggestions=(_suggestions_schema(), True))


def _check():
    from vramplan.check.preflight import Verdict

    schema = _with(Verdict, exit_code=({"type": "integer", "enum": [0, 3]}, True),
                   commands=({"type": "array", "items": {"type": "string"}}, True))
    return schema


def _probe():
    from vramplan.measure.probe import ProbeRecord

    return ProbeRecord.model_json_schema(mode="serialization")


def _serve_size():
    from vramplan.serving.sizing import ServePlan

    return ServePlan.model_json_schema(mode="serialization")


def _serve_plan():
    from vramplan.serving.fleet import FleetPlan

    return FleetPlan.model_json_schema(mode="serialization")


def _free_form():
    return {"type": "object"}


def _models():
    from vramplan.models.listing import ModelRow

    return {"type": "array", "items": ModelRow.model_json_schema(mode="serialization")}


def _gpus():
    from vramplan.hardware.catalog import Gpu

    return {"type": "array", "items": Gpu.model_json_schema(mode="serialization")}


def _systems():
    from vramplan.hardware.catalog import System

    return {"type": "array", "items": System.model_json_schema(mode="serialization")}


def _record():
    from vramplan.hardware.catalog import Gpu, System

    record = {"oneOf": [Gpu.model_json_schema(mode="serialization"), System.model_json_schema(mode="serialization")]}
    return {"type": "object", "properties": {"record": record}, "required": ["record"]}


def write_schemas(folder) -> list:
    """Write every kind's schema into `folder`; returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in document_kinds():
        path = folder / f"{kind}.schema.json"
        path.write_text(json.dumps(document_schema(kind), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    from pathlib import Path

    for written in write_schemas(Path(__file__).parent / "schemas"):
        print(written)
