"""`--model org/name` through the local HF cache (a fake cache laid out as huggingface_hub writes it) and the
errors when neither the cache nor the Hub has it. No test touches the network: HF_HUB_OFFLINE is set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vramplan.cli.app import main
from vramplan.errors import ModelConfigError
from vramplan.models.catalog import resolve_model

LLAMA_CONFIG = Path(__file__).parents[2] / "validation" / "configs" / "tiny-llama.json"


def _cache_repo(cache: Path, repo_id: str, config: dict) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_a_hub_id_in_the_local_cache_resolves_offline(hf_cache):
    config = json.loads(LLAMA_CONFIG.read_text())
    _cache_repo(hf_cache, "someorg/tiny-llama-test", config)
    resolved = resolve_model("someorg/tiny-llama-test")
    assert resolved.resolved_from == "hub someorg/tiny-llama-test (local HF cache)"
    assert resolved.spec.hidden_size == config["hidden_size"]


def test_a_catalog_repo_name_never_needs_the_hub(hf_cache):
    assert resolve_model("meta-llama/Llama-3.1-8B").id == "llama-3.1-8b"


def test_an_uncached_hub_id_offline_is_one_line_exit_2(hf_cache, capsys):
    with pytest.raises(ModelConfigError, match="not in the local HF cache"):
        resolve_model("someorg/not-downloaded")
    assert main(["estimate", "--model", "someorg/not-downloaded"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE" in err
