"""--transformers 4: Mixtral traced in 4.x's per-expert nn.Linear layout (vramplan/measure/moe_v4.py)."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from pathlib import Path  # noqa: E402

from vramplan.api import estimate, trace  # noqa: E402
from vramplan.errors import NotModelledError  # noqa: E402
from vramplan.measure.moe_v4 import balanced_rows  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-mixtral.json")
OPTIONS = dict(batch_size=2, seq_len=512, lora_targets="q_proj,k_proj,v_proj,o_proj")


def test_balanced_routing_covers_every_token_choice():
    assert balanced_rows(1000, 2, 8) == [250] * 8
    uneven = balanced_rows(1001, 2, 8)
    assert sum(uneven) == 2002 and max(uneven) - min(uneven) == 1


def test_v4_experts_are_quantized_nn_linear_modules():
    """4.x: each expert's w1/w2/w3 is an nn.Linear that bitsandbytes quantizes, so the parameters shrink; v5's 3-D
    experts stay 16-bit and k-bit preparation upcasts them to fp32."""
    v4 = trace(CONFIG, "qlora", transformers="4", **OPTIONS)
    v5 = trace(CONFIG, "qlora", **OPTIONS)
    assert v4.setup.transformers == 4 and any("4.x's layout" in note for note in v4.gpu_corrections)
    assert v4.components["parameters"] < v5.components["parameters"] / 2
    expert_rows = {row.module.rsplit(".", 1)[-1] for row in v4.by_module if ".experts.*." in row.module}
    assert {"w1", "w2", "w3"} <= expert_rows


def test_the_estimate_models_v4_mixtral_and_refuses_the_rest():
    """Mixtral QLoRA in 4.x's layout is a fifth of the v5 figure (experts 4-bit), within the matrix's v4 cases;
    other models, LoRA on the expert linears, full fine-tuning and several GPUs are refused, never guessed."""
    v4 = estimate("mixtral-8x7b", "qlora", transformers="4", lora_targets="q_proj,k_proj,v_proj,o_proj")
    v5 = estimate("mixtral-8x7b", "qlora", lora_targets="q_proj,k_proj,v_proj,o_proj")
    assert v4.peak_allocated_bytes < v5.peak_allocated_bytes / 4
    assert any("--transformers 4" in line for line in v4.assumptions)
    for model, method, options in [("deepseek-v3", "qlora", {}), ("mixtral-8x7b", "full", {}),
                                   ("mixtral-8x7b", "qlora", {"lora_targets": "all-linear"}),
                                   ("mixtral-8x7b", "qlora", {"gpus": 2, "strategy": "fsdp"})]:
        with pytest.raises(NotModelledError, match="--transformers 4"):
            estimate(model, method, transformers="4", **options)
    with pytest.raises(NotModelledError, match="Qwen3-MoE"):
        trace("validation/configs/tiny-qwen2-moe.json", "qlora", transformers="4")


@pytest.mark.parametrize("targets", ["q_proj,w1,w2,w3", "all-linear", "q_proj,up_proj"])
def test_the_trace_refuses_targets_the_rebuilt_block_would_leave_unadapted(targets):
    """peft maps MoE targets onto v5's fused expert parameters, which 4.x's rebuilt block does not have: refused."""
    with pytest.raises(NotModelledError, match="attention"):
        trace(CONFIG, "qlora", transformers="4", batch_size=2, seq_len=512, lora_targets=targets)
