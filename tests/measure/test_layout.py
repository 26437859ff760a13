"""measure/'s shape (issue 14): recipes on the public `fake_step` kernel, no module reaching into another's private
names, every module under STYLE.md's ~400 lines."""

import ast
from pathlib import Path

import pytest

MEASURE = Path(__file__).resolve().parents[2] / "vramplan" / "measure"
MODULES = sorted(MEASURE.rglob("*.py"))
MAX_LINES = 400


def _ids(paths):
    return [str(path.relative_to(MEASURE)) for path in paths]


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_no_private_names_from_other_vramplan_modules(path):
    tree = ast.parse(path.read_text(), str(path))
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vramplan")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.parametrize("path", MODULES, ids=_ids(MODULES))
def test_module_is_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_recipes_run_on_the_kernel():
    for recipe in ("hf_step.py", "torchtune_step.py", "fsdp/step.py"):
        assert "from vramplan.measure.fake_step import" in (MEASURE / recipe).read_text(), recipe
