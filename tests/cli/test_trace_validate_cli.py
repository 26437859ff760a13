"""`vramplan trace` and `vramplan validate` from the command line (small configs, fake tensors)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vramplan.cli.app import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "validation" / "configs" / "tiny-llama.json")
pytestmark = pytest.mark.trace


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_trace_json_has_the_estimate_shape(capsys):
    code, out, err = run(["trace", "--model", TINY, "--method", "qlora", "--batch-size", "1", "--seq-len", "128",
                          "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert set(data["components"]) == {"parameters", "gradients", "optimizer_states", "activations", "temporaries"}
    assert data["peak_allocated_bytes"] == sum(data["components"].values())
    assert data["peak_phase"] in {phase["phase"] for phase in data["phases"]}
    assert data["setup"]["method"] == "qlora" and data["by_module"]


def test_trace_by_module_table(capsys):
    code, out, err = run(["trace", "--model", TINY, "--method", "lora", "--batch-size", "1", "--seq-len", "128",
                          "--by-module", "--top", "5"], capsys)
    assert code == 0, err
    for text in ("traced peak in", "where the peak's bytes are", "model.layers.*", "GPU corrections"):
        assert text in out


def test_trace_refuses_paged_optimizers_in_one_line(capsys):
    code, out, err = run(["trace", "--model", TINY, "--method", "lora", "--optimizer", "paged-adamw-8bit"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "managed memory" in err


def test_validate_one_case_writes_csv_and_png(tmp_path, capsys):
    code, out, err = run(["validate", "--matrix", str(ROOT / "validation" / "matrix.toml"),
                          "--case", "tiny-llama-lora", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "tiny-llama-lora" in out and "median |error|" in out
    assert (tmp_path / "matrix.csv").read_text().count("\n") == 2
    assert (tmp_path / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_published_needs_a_mapping(capsys):
    code, _, err = run(["validate", "--subset", "none", "--published", "x.tsv"], capsys)
    assert code == 2 and "--mapping" in err


def test_validate_published_rows(tmp_path, capsys):
    fixtures = ROOT / "tests" / "fixtures"
    code, out, err = run(["validate", "--subset", "none", "--published", str(fixtures / "published.tsv"),
                          "--mapping", str(fixtures / "published_mapping.toml"), "--out", str(tmp_path),
                          "--format", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["published"]
    assert {row["metric"] for row in rows} == {"allocated", "device"}
    assert (tmp_path / "published.csv").exists()
