"""`vramplan serve-size`: table and JSON output, exit codes 0/2/3, and a cold start without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from vramplan.cli.app import main
from vramplan.output import SCHEMA_VERSION

SCHEMA = Path(__file__).resolve().parents[2] / "vramplan" / "schemas" / "serve-size.schema.json"


def run(args, capsys):
    code = main(["serve-size", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_shows_the_budget_and_the_capacity(capsys):
    code, out, err = run(["--model", "8b", "--gpu", "rtx-3090", "--context", "20000"], capsys)
    assert code == 0, err
    for text in ("vLLM 0.31.0 V1 engine", "weights (bf16)", "KV cache", "CUDA-graph estimate", "131,072 bytes",
                 "GPU KV cache size", "sequences of 20,000 tokens", "fits", "1 GiB = 2^30 bytes"):
        assert text in out


def test_json_is_versioned_valid_and_in_bytes(capsys):
    code, out, _ = run(["--model", "8b", "--gpu", "h100-sxm5-80gb", "--tp", "2", "--weights", "fp8",
                        "--kv-dtype", "fp8", "--context", "32768", "--concurrency", "8", "--format", "json"], capsys)
    assert code == 0
    document = json.loads(out)
    assert (document["schema"], document["kind"]) == (SCHEMA_VERSION, "serve-size")
    jsonschema.validate(document, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    budget = document["budget"]
    assert all(isinstance(budget[key], int) for key in ("requested_bytes", "weights_bytes", "kv_bytes"))
    assert document["tensor_parallel"] == 2 and document["kv"]["dtype_bytes"] == 1 and document["fits"] is True


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(["--model", "70b", "--gpu", "rtx-4090"], "No available memory for the cache blocks",
                     id="weights-too-big"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--context", "131072"], "max seq len (131072)",
                     id="context-too-long"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--context", "16384", "--concurrency", "50"],
                     "not 50", id="concurrency"),
    ],
)
def test_does_not_fit_is_exit_3_with_the_reason(args, fragment, capsys):
    code, out, _ = run(args, capsys)
    assert code == 3 and "DOES NOT FIT" in out and fragment in out and "fix:" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--weights", "int3"], "--weights", id="bad-weights"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--kv-dtype", "int8"], "--kv-dtype", id="bad-kv-dtype"),
        pytest.param(["--model", "nope-1b", "--gpu", "rtx-3090"], "not a catalog model", id="unknown-model"),
        pytest.param(["--model", "8b", "--gpu", "gtx-9999"], "--gpu", id="unknown-gpu"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--gpu-memory-utilization", "1.5"],
                     "--gpu-memory-utilization", id="bad-utilization"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--engine", "sglang"], "--engine", id="bad-engine"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--tp", "0"], "--tp", id="zero-tp"),
        pytest.param(["--model", "8b", "--gpu", "rtx-3090", "--format", "xml"], "--format", id="bad-format"),
        pytest.param(["--gpu", "rtx-3090"], "--model", id="missing-model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("vramplan: error:") and fragment in err


def test_serve_size_path_imports_no_torch_transformers_or_pandas():
    code = (
        "import sys; from vramplan.cli.app import main; main(['serve-size','--model','70b','--gpu','h100-sxm5-80gb',"
        "'--tp','4','--format','json']); heavy = [m for m in ('torch','transformers','pandas') if m in sys.modules]; "
        "sys.stderr.write(','.join(heavy))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert completed.returncode == 0 and completed.stderr == ""
