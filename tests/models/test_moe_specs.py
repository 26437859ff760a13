"""Mixture-of-experts and MLA specs: parameter counts against transformers' own build, and config refusals."""

import json
from pathlib import Path

import pytest

from vramplan.errors import NotModelledError
from vramplan.models.catalog import load_catalog
from vramplan.models.hf_config import spec_from_config

CONFIGS = Path(__file__).parents[2] / "validation" / "configs"
TINY_MOE = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-deepseek-v3"]
MOE_RECORDS = sorted(rid for rid, record in load_catalog().items() if record.spec.moe is not None)

# Totals as transformers 5.24 builds them on the meta device (sum of p.numel()), next to the published figure.
# DeepSeek-V3/R1: transformers does not build the multi-token-prediction layer (num_nextn_predict_layers), so
# 671.0B rather than the 685B the checkpoint holds.
KNOWN_TOTALS = {
    "mixtral-8x7b": (46_702_792_704, "46.7B"),
    "mixtral-8x22b": (140_620_634_112, "141B"),
    "qwen1.5-moe-a2.7b": (14_315_784_192, "14.3B"),
    "qwen3-30b-a3b": (30_532_122_624, "30.5B"),
    "qwen3-235b-a22b": (235_093_634_560, "235B"),
    "deepseek-v3": (671_026_404_352, "671B"),
    "deepseek-r1": (671_026_404_352, "671B"),
    "gpt-oss-20b": (20_914_757_184, "21B"),
    "gpt-oss-120b": (116_829_156_672, "117B"),
}
# Published active parameters per token, in billions (model cards), and how close our count must be.
KNOWN_ACTIVE = {"mixtral-8x7b": 12.9, "qwen3-30b-a3b": 3.3, "qwen3-235b-a22b": 22.0, "deepseek-v3": 37.0}


def _meta_params(config: dict) -> int:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from vramplan.measure.build import hf_config_for
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config_for(config))
    return sum(p.numel() for p in model.parameters())


def test_every_moe_family_is_in_the_catalog():
    families = {load_catalog()[rid].spec.family for rid in MOE_RECORDS}
    assert families == {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss"}
    assert set(MOE_RECORDS) == set(KNOWN_TOTALS)


@pytest.mark.parametrize("record_id", MOE_RECORDS, ids=str)
def test_moe_total_equals_transformers_meta_build(record_id):
    record = load_catalog()[record_id]
    assert record.spec.total_params == _meta_params(record.full_config) == KNOWN_TOTALS[record_id][0]


@pytest.mark.parametrize("name", TINY_MOE, ids=str)
def test_tiny_moe_total_equals_transformers_meta_build(name):
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    assert spec_from_config(config).total_params == _meta_params(config)


@pytest.mark.parametrize("record_id", sorted(KNOWN_ACTIVE), ids=str)
def test_active_parameters_match_the_model_cards(record_id):
    active = load_catalog()[record_id].spec.active_params / 1e9
    assert active == pytest.approx(KNOWN_ACTIVE[record_id], rel=0.03)


def test_deepseek_structure():
    spec = load_catalog()["deepseek-v3"].spec
    assert spec.dense_layer_ids == (0, 1, 2) and len(spec.moe_layer_ids) == 58
    assert spec.mla.qk_head_dim == 192 and spec.q_size == 128 * 192 and spec.v_size == 128 * 128
    assert [lin.name for lin in spec.linears_of(0)][-3:] == ["gate_proj", "up_proj", "down_proj"]
    assert [lin.name for lin in spec.linears_of(3)][-1] == "shared_experts.down_proj"
    # Only nn.Linear weights are quantized by bitsandbytes: the 3D experts and the router stay in the load dtype.
    assert spec.non_quantized_params > spec.expert_params


def test_qwen2_moe_has_qkv_bias_and_a_gated_shared_expert():
    spec = load_catalog()["qwen1.5-moe-a2.7b"].spec
    assert spec.qkv_bias and not spec.o_bias and spec.moe.shared_expert_gate
    assert spec.moe.shared_intermediate_size == 5632


def test_qwen_moe_dense_layers_follow_mlp_only_layers_and_sparse_step():
    base = json.loads((CONFIGS / "tiny-qwen3-moe.json").read_text())
    spec = spec_from_config({**base, "mlp_only_layers": [0], "decoder_sparse_step": 2})
    assert spec.dense_layer_ids == (0, 2) and spec.moe_layer_ids == (1, 3)
    assert spec.total_params == _meta_params({**base, "mlp_only_layers": [0], "decoder_sparse_step": 2})


def test_gpt_oss_alternates_sliding_and_full_attention():
    spec = load_catalog()["gpt-oss-20b"].spec
    assert spec.sliding_window == 128 and spec.sliding_layer_ids == tuple(range(0, 24, 2))
    assert spec.attention_sinks and spec.moe.expert_bias and spec.moe.router_bias


@pytest.mark.parametrize(
    "change, match",
    [
        pytest.param({"model_type": "mixtral", "sliding_window": 4096}, "sliding_window", id="mixtral-sliding"),
        pytest.param({"model_type": "qwen3_moe", "use_sliding_window": True}, "use_sliding_window", id="qwen3moe-swa"),
        pytest.param({"model_type": "deepseek_v3", "n_shared_experts": 0}, "shared experts", id="deepseek-no-shared"),
        pytest.param({"model_type": "olmoe"}, "mixture-of-experts", id="olmoe"),
    ],
)
def test_unmodelled_moe_variants_are_refused(change, match):
    base = json.loads((CONFIGS / "tiny-qwen3-moe.json").read_text())
    with pytest.raises(NotModelledError, match=match):
        spec_from_config({**base, **change})
