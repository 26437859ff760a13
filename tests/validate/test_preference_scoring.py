"""scripts/score_preference.py: every published DPO/GRPO row is scored or says why not, and
validation/preference/RESULTS.md is what the script writes today. Structure only, no error thresholds."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "score_preference.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("score_preference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def scores(script):
    return script.score_all()


def test_every_tsv_row_is_scored_or_has_a_reason(script, scores):
    tsv_ids = [row["id"] for row in script.read_rows()]
    assert [score.id for score in scores] == tsv_ids
    for score in scores:
        scored = score.error is not None
        assert scored != bool(score.reason), score.id
        if scored:
            assert score.published_bytes > 0 and score.ours_bytes > 0, score.id


def test_every_option_used_has_a_why_line(scores):
    for score in scores:
        assert set(score.options) <= set(score.assumptions), score.id


def test_a_mapping_without_a_reason_or_a_why_is_refused(script):
    rows = [{"id": "PF1"}]
    with pytest.raises(ValueError, match="needs a reason"):
        script.check_mapping(rows, {"PF1": {"scorable": False}})
    with pytest.raises(ValueError, match="without a why"):
        script.check_mapping(rows, {"PF1": {"scorable": True, "options": {"batch_size": 1}, "why": {}}})
    with pytest.raises(ValueError, match="no entry for PF1"):
        script.check_mapping(rows, {})


@pytest.mark.parametrize(("text", "unit_means", "expected"), [
    pytest.param("49273MiB", None, 49273 * 2**20, id="MiB"),
    pytest.param("~15.1GiB", None, round(15.1 * 2**30), id="GiB"),
    pytest.param("17GB", "GB", 17 * 10**9, id="GB-as-SI"),
    pytest.param("70G per GPU", "GiB", 70 * 2**30, id="G-as-GiB"),
])
def test_published_units(script, text, unit_means, expected):
    assert script.published_bytes(text, unit_means) == expected


def test_an_ambiguous_unit_must_be_resolved(script):
    with pytest.raises(ValueError, match="unit_means"):
        script.published_bytes("17GB")


def test_results_md_is_what_the_script_writes(script):
    assert script.RESULTS.read_text() == script.build(), "run: python scripts/score_preference.py"


def test_the_script_runs_from_the_repo_root_without_torch():
    probe = (f"import runpy, sys; module = runpy.run_path({str(SCRIPT)!r}); "
             f"code = module['main'](['--check']); print('torch' in sys.modules, code)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0"]
