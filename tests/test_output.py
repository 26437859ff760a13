"""Versioned JSON: the published schemas match the result models, and every command's JSON validates against them."""

import json
from pathlib import Path

import jsonschema
import pytest

from vramplan.cli.app import main
from vramplan.output import SCHEMA_VERSION, document_kinds, document_schema

SCHEMAS = Path(__file__).resolve().parents[1] / "vramplan" / "schemas"


@pytest.mark.parametrize("kind", sorted(document_kinds()))
def test_published_schema_is_the_models_schema(kind):
    """vramplan/schemas/ is written by `python -m vramplan.output`; a model change without it fails here."""
    published = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    assert published == json.loads(json.dumps(document_schema(kind))), "rerun: python -m vramplan.output"
    jsonschema.Draft202012Validator.check_schema(published)


COMMANDS = [
    pytest.param(["estimate", "--model", "8b", "--method", "qlora"], "estimate", 0, id="estimate"),
    pytest.param(["estimate", "--model", "mixtral-8x7b", "--method", "full", "--gpus", "8", "--strategy", "zero3"],
                 "estimate", 0, id="estimate-zero3"),
    pytest.param(["plan", "--model", "8b", "--method", "lora"], "plan", 0, id="plan"),
    pytest.param(["plan", "--model", "405b", "--method", "full", "--max-nodes", "1"], "plan", 3, id="plan-none"),
    pytest.param(["fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "qlora"], "fit", 0, id="fit"),
    pytest.param(["fit", "--gpu", "24GB", "--model", "70b", "--method", "full"], "fit", 3, id="fit-none"),
    pytest.param(["check", "--gpu", "4090", "--model", "8b", "--method", "lora", "--batch-size", "4"], "check", 3,
                 id="check"),
    pytest.param(["models"], "models", 0, id="models"),
    pytest.param(["catalog", "gpus"], "catalog-gpus", 0, id="catalog-gpus"),
    pytest.param(["catalog", "systems"], "catalog-systems", 0, id="catalog-systems"),
    pytest.param(["catalog", "show", "h100-sxm5-80gb"], "catalog-show", 0, id="catalog-show"),
]


@pytest.mark.parametrize("args, kind, code", COMMANDS)
def test_command_json_is_versioned_and_valid(args, kind, code, capsys):
    assert main([*args, "--format", "json"]) == code
    document = json.loads(capsys.readouterr().out)
    assert (document["schema"], document["kind"]) == (SCHEMA_VERSION, kind)
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
