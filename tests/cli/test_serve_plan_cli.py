"""`vramplan serve-size` without --gpu: the serving plan across the catalog, its JSON, exit 3, and a cold start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from vramplan.cli.app import main
from vramplan.output import SCHEMA_VERSION

SCHEMA = Path(__file__).resolve().parents[2] / "vramplan" / "schemas" / "serve-plan.schema.json"


def run(args, capsys):
    code = main(["serve-size", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_lists_systems_and_names_the_cheapest(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run(["--model", "llama-3.1-70b", "--context", "8192", "--concurrency", "16"], capsys)
    assert code == 0, err
    words = " ".join(out.split())  # long lines wrap at 100 columns
    for text in ("systems serve it, cheapest rent first", "TP x rep", "KV tok/rep", "rent/h", "buy",
                 "cheapest to rent:", "cheapest to buy:", "rule read from source, not traced", "hgx-h100-8gpu",
                 "does not fit: aws-g6e.xlarge at TP 1", "ROCm systems are left out"):
        assert text in words
    assert max(len(line) for line in out.splitlines()) <= 100


def test_json_is_versioned_valid_and_in_bytes(capsys):
    code, out, _ = run(["--model", "8b", "--context", "8192", "--concurrency", "4", "--format", "json"], capsys)
    assert code == 0
    document = json.loads(out)
    assert (document["schema"], document["kind"]) == (SCHEMA_VERSION, "serve-plan")
    jsonschema.validate(document, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    rows = {row["system"]: row for row in document["rows"]}
    assert rows["hgx-h100-8gpu"]["tensor_parallel"] == 1 and rows["hgx-h100-8gpu"]["replicas"] == 8
    assert all(isinstance(row[key], int) for row in document["rows"] for key in ("kv_bytes", "weights_bytes"))
    assert document["concurrency_wanted"] == 4 and document["fits"] is True


def test_tp_given_without_gpu_is_the_only_size_tried(capsys):
    code, out, _ = run(["--model", "70b", "--context", "8192", "--tp", "8", "--format", "json"], capsys)
    document = json.loads(out)
    assert code == 0 and document["tensor_parallel_sizes"] == [8]
    assert {row["tensor_parallel"] for row in document["rows"]} == {8}


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_no_system_fits_is_exit_3(fmt, capsys):
    code, out, _ = run(["--model", "405b", "--context", "8192", "--tp", "1", "--format", fmt], capsys)
    assert code == 3
    if fmt == "json":
        assert json.loads(out)["fits"] is False
    else:
        assert "DOES NOT FIT on any catalog system" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(["--model", "8b", "--weights", "int3"], "--weights", id="bad-weights"),
        pytest.param(["--model", "nope-1b"], "not a catalog model", id="unknown-model"),
        pytest.param(["--model", "8b", "--catalog", "/no/such/folder"], "--catalog", id="bad-catalog"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("vramplan: error:") and fragment in err


def test_serve_plan_path_imports_no_torch_transformers_or_pandas():
    code = (
        "import sys; from vramplan.cli.app import main; main(['serve-size','--model','70b','--context','8192']); "
        "heavy = [m for m in ('torch','transformers','pandas') if m in sys.modules]; sys.stderr.write(','.join(heavy))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert completed.returncode == 0 and completed.stderr == ""
