"""The OpenAPI document of `vramplan serve`: FastAPI's, with each answer's JSON Schema (the published
vramplan/schemas/<kind>.schema.json, from the same result models) as the route's 200 response; and a docs page of
its own (FastAPI's Swagger UI loads from a CDN, and the page must work offline)."""

from __future__ import annotations

import html
from typing import Any

from vramplan.output import document_schema

DEFS_PREFIX = "#/$defs/"
COMPONENTS_PREFIX = "#/components/schemas/"


def with_document_schemas(app, route_kinds: dict[str, str]) -> dict[str, Any]:
    """app.openapi(), once, with each route's answer typed by its document's schema."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for path, kind in route_kinds.items():
        schema = document_schema(kind)
        for name, definition in schema.pop("$defs", {}).items():
            components.setdefault(name, _components_refs(definition))
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        title = "Document_" + kind.replace("-", "_")
        components[title] = _components_refs(schema)
        for operation in spec["paths"].get(path, {}).values():
            operation.setdefault("responses", {})["200"] = {
                "description": f"the {kind} document, as `--format json` prints it",
                "content": {"application/json": {"schema": {"$ref": COMPONENTS_PREFIX + title}}}}
            operation["responses"]["422"] = {
                "description": "bad input or a setting vramplan does not model: the CLI's one-line message",
                "content": {"application/json": {"schema": {"$ref": COMPONENTS_PREFIX + "Error"}}}}
    components["Error"] = {"type": "object", "required": ["error", "exit_code"], "properties": {
        "error": {"type": "string", "description": "the CLI's one-line message"},
        "exit_code": {"type": "integer", "description": "the CLI's exit code for it (2: usage)"}}}
    app.openapi_schema = spec
    return spec


def _components_refs(node: Any) -> Any:
    """A schema with its `#/$defs/X` references pointing at the OpenAPI document's components."""
    if isinstance(node, dict):
        return {key: (COMPONENTS_PREFIX + value[len(DEFS_PREFIX):]
                      if key == "$ref" and isinstance(value, str) and value.startswith(DEFS_PREFIX)
                      else _components_refs(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [_components_refs(value) for value in node]
    return node


def docs_page(spec: dict[str, Any]) -> str:
    """Every route, its summary, body and answer, as plain HTML; the full document at /api/openapi.json."""
    rows = []
    for path, operations in sorted(spec.get("paths", {}).items()):
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            answer = operation.get("responses", {}).get("200", {}).get("description", "")
            rows.append(f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                        f"<td>{html.escape(operation.get('summary', ''))}</td>"
                        f"<td><code>{html.escape(body.get('$ref', '').rsplit('/', 1)[-1])}</code></td>"
                        f"<td>{html.escape(answer)}</td></tr>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>vramplan API</title>"
            "<link rel='stylesheet' href='/static/app.css'></head><body class='docs'><main>"
            f"<h1>vramplan API {html.escape(spec.get('info', {}).get('version', ''))}</h1>"
            "<p>Every answer is the JSON document the CLI prints with <code>--format json</code>; errors are "
            "<code>{\"error\": ..., \"exit_code\": ...}</code> with a 4xx status. The whole OpenAPI document, with "
            "each body's and answer's schema: <a href='/api/openapi.json'>/api/openapi.json</a>.</p>"
            "<table><thead><tr><th>route</th><th>what</th><th>body</th><th>answer</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></main></body></html>")
