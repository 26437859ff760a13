"""file -> ImportedRun -> resolve_setup -> estimate_memory: every example config gives an estimate.

The core options (those resolve_setup took before the stack switches) must always give an estimate. With every
option resolve_setup accepts now, the estimator either answers or refuses a switch it does not model yet with a
NotModelledError; it never meets a value resolve_setup rejects.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from vramplan.errors import NotModelledError
from vramplan.estimate import estimate_memory
from vramplan.importers import OPTION_NAMES, load_run_config
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
CORE = ("batch_size", "seq_len", "precision", "optimizer", "gradient_checkpointing", "lora_rank", "lora_targets",
        "lora_dropout", "double_quant", "gpus", "nodes", "strategy", "offload")
ACCEPTED = set(inspect.signature(resolve_setup).parameters) - {"method"}

CASES = [
    pytest.param("axolotl-llama3-qlora.yml", "llama-3-8b", id="axolotl-qlora"),
    pytest.param("axolotl-full-fsdp.yml", "llama-3.1-8b", id="axolotl-full-fsdp"),
    pytest.param("axolotl-unknown-key.yml", "llama-3.2-1b", id="axolotl-unknown-key"),
    pytest.param("llama-factory-lora.yaml", "llama-3-8b", id="llama-factory-lora"),
    pytest.param("torchtune-8B_lora_single_device.yaml", "llama-3.1-8b", id="torchtune-lora"),
    pytest.param("torchtune-8B_qlora.yaml", "llama-3.1-8b", id="torchtune-qlora"),
    pytest.param("trl-sft", "llama-3.2-1b", id="trl-folder"),
    pytest.param("trl-sft.yaml", "qwen2.5-7b", id="trl-yaml"),
    pytest.param("deepspeed-zero3-offload.json", "llama-3.1-8b", id="deepspeed"),
]


def _setup(run, names):
    options = {key: value for key, value in run.options.given().items() if key in names}
    setup = resolve_setup(run.method or "full", **options)
    for key, value in options.items():
        if key.startswith("lora_") or key == "double_quant":
            continue  # kept in the nested LoraSettings / QuantSettings
        field = getattr(setup, key)
        assert getattr(field, "value", field) == value, key
    return setup


@pytest.mark.parametrize("name, catalog_id", CASES)
def test_core_options_give_an_estimate(name, catalog_id):
    run = load_run_config(CONFIGS / name)
    assert set(run.options.given()) <= set(OPTION_NAMES)
    result = estimate_memory(resolve_model(catalog_id), _setup(run, set(CORE) & ACCEPTED))
    assert result.peak_allocated_bytes > 0


@pytest.mark.parametrize("name, catalog_id", CASES)
def test_all_accepted_options_estimate_or_refuse_clearly(name, catalog_id):
    run = load_run_config(CONFIGS / name)
    setup = _setup(run, ACCEPTED)
    try:
        result = estimate_memory(resolve_model(catalog_id), setup)
    except NotModelledError as err:
        assert "not modelled" in str(err)
    else:
        assert result.peak_allocated_bytes > 0
    for key in set(OPTION_NAMES) - ACCEPTED:
        assert key not in run.options or run.options.given()[key] is not None


@pytest.mark.parametrize("name, catalog_id", CASES)
def test_model_as_written_resolves_where_the_catalog_has_it(name, catalog_id):
    """The model string is kept as written; for these configs the catalog knows it by repo name or id."""
    run = load_run_config(CONFIGS / name)
    if run.model is None or run.model == "meta-llama/Meta-Llama-3-8B-Instruct":
        pytest.skip("no model, or an instruct repo the catalog does not list")
    assert resolve_model(run.model).id == catalog_id
