"""The validation matrix file: its coverage (issue 3's minimums) and how it is read."""

from pathlib import Path

import pytest

from vramplan.errors import UsageError
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup
from vramplan.validate.matrix import load_matrix, select_cases

MATRIX = Path(__file__).resolve().parents[2] / "validation" / "matrix.toml"


@pytest.fixture(scope="module")
def cases():
    return load_matrix(MATRIX)


def test_matrix_covers_the_required_ground(cases):
    assert len(cases) >= 60
    setups = [(case, resolve_model(case.model), resolve_setup(case.method, **case.options)) for case in cases]
    families = {model.spec.family for _, model, _ in setups}
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"} <= families
    assert any(model.spec.tie_word_embeddings and model.spec.family == "qwen2" for _, model, _ in setups)
    assert {setup.method.value for *_, setup in setups} == {"full", "lora", "qlora"}
    assert {setup.gradient_checkpointing for *_, setup in setups} == {True, False}
    assert {"adamw", "adamw-fused", "adamw-8bit", "sgd"} <= {setup.optimizer.value for *_, setup in setups}
    assert {"bf16", "bf16-mixed"} <= {setup.precision.value for *_, setup in setups}
    ranks = {setup.lora.rank for *_, setup in setups if setup.lora}
    assert min(ranks) <= 8 and max(ranks) >= 128
    assert len({str(setup.lora.targets) for *_, setup in setups if setup.lora}) >= 3
    batches = {setup.batch_size for *_, setup in setups}
    seqs = {setup.seq_len for *_, setup in setups}
    assert min(batches) == 1 and max(batches) >= 16
    assert min(seqs) <= 256 and max(seqs) >= 16384


def test_config_paths_resolve_against_the_matrix_folder(cases):
    tiny = [case for case in cases if case.ci]
    assert tiny and all(Path(case.model).is_file() for case in tiny if case.model.endswith(".json"))


def test_subsets(cases):
    ci = select_cases(cases, "ci")
    full = select_cases(cases, "full")
    assert len(ci) + len(full) == len(cases)
    assert select_cases(cases, "all") == cases
    assert [case.id for case in select_cases(cases, "ci", [ci[1].id, ci[0].id])] == [ci[1].id, ci[0].id]
    with pytest.raises(UsageError, match="--case nope"):
        select_cases(cases, "ci", ["nope"])
    with pytest.raises(UsageError, match="--subset"):
        select_cases(cases, "most")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[case]]\nid = 'a'\nmodel = '8b'\n", "method"),
        ("[[case]]\nid = 'a'\nmodel = '8b'\nmethod = 'lora'\n[[case]]\nid = 'a'\nmodel = '8b'\nmethod = 'full'\n",
         "twice"),
        ("nonsense = [", "not valid TOML"),
        ("", "no \\[\\[case\\]\\]"),
    ],
)
def test_bad_matrix_files_are_usage_errors(tmp_path, text, message):
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_matrix(path)
