import json

import pytest

from vramplan.errors import ModelConfigError, NotModelledError
from vramplan.models.catalog import load_catalog, resolve_model
from vramplan.models.hf_config import spec_from_config

LLAMA_8B = load_catalog()["llama-3.1-8b"].config


def test_config_file_and_folder_resolve_the_same(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    by_file = resolve_model(str(tmp_path / "config.json"))
    by_folder = resolve_model(str(tmp_path))
    assert by_file.spec == by_folder.spec == spec_from_config(LLAMA_8B)
    assert by_file.spec.total_params == 8_030_261_248


def test_malformed_json_is_a_usage_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not a readable JSON object"):
        resolve_model(str(tmp_path))


def test_missing_key_named(tmp_path):
    broken = {k: v for k, v in LLAMA_8B.items() if k != "hidden_size"}
    with pytest.raises(ModelConfigError, match="hidden_size"):
        spec_from_config(broken)


def test_non_positive_size_rejected():
    with pytest.raises(ModelConfigError, match="'num_hidden_layers' must be from 1 to"):
        spec_from_config({**LLAMA_8B, "num_hidden_layers": 0})


@pytest.mark.parametrize("model_type", ["deepseek_v2", "dbrx", "olmoe"])
def test_unmodelled_moe_refused_clearly(model_type):
    with pytest.raises(NotModelledError, match="mixture-of-experts"):
        spec_from_config({**LLAMA_8B, "model_type": model_type})


def test_unknown_family_refused():
    with pytest.raises(ModelConfigError, match="not supported"):
        spec_from_config({**LLAMA_8B, "model_type": "bert"})


def test_qwen2_always_has_qkv_bias_and_phi3_fuses_projections():
    qwen = load_catalog()["qwen2.5-7b"].spec
    assert qwen.qkv_bias and not qwen.o_bias
    phi = load_catalog()["phi-3-mini-4k"].spec
    assert [lin.name for lin in phi.layer_linears] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
