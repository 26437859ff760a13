"""FSDP1 is a different engine from the FSDP2 vramplan models: refused by name, never answered as FSDP2."""

import json
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.cli.app import main
from vramplan.errors import NotModelledError


def test_strategy_fsdp1_is_refused_and_fsdp2_is_fsdp():
    with pytest.raises(NotModelledError, match="FSDP1"):
        estimate("8b", "full", gpus=8, strategy="fsdp1")
    assert estimate("8b", "full", gpus=8, strategy="fsdp2") == estimate("8b", "full", gpus=8, strategy="fsdp")


def _trainer_args(tmp_path, fsdp_config):
    path = tmp_path / "training_args.json"
    path.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 1,
                                "bf16": True, "fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config,
                                "output_dir": "out"}))
    return path


def test_an_fsdp1_config_is_not_modelled_and_check_refuses_it(tmp_path, capsys):
    path = _trainer_args(tmp_path, {"fsdp_version": 1})
    code = main(["check", "--from", str(path), "--gpus", "8", "--gpu", "h100-sxm5-80gb"])
    err = capsys.readouterr().err
    assert code == 2 and "fsdp_version" in err and "FSDP1" in err
    code = main(["estimate", "--from", str(path), "--gpus", "8", "--format", "json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and any("NOT MODELLED" in line and "FSDP1" in line for line in answer["assumptions"])


def test_an_unset_version_is_fsdp2_and_says_why(tmp_path, capsys):
    path = _trainer_args(tmp_path, {})
    code = main(["estimate", "--from", str(path), "--gpus", "8", "--format", "json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["setup"]["strategy"] == "fsdp"
    assert any("fsdp_version unset: FSDP2" in line for line in answer["assumptions"])


def test_an_installed_transformers_4_is_named_for_moe_models(monkeypatch, capsys):
    """transformers 4.x builds MoE experts as nn.Linear each (quantized under QLoRA): a different memory layout."""
    from vramplan.estimate import stack_versions

    monkeypatch.setattr(stack_versions, "installed_version", lambda name: "4.46.3")
    answer = estimate("mixtral-8x7b", "qlora")
    assert any(line.startswith("NOT MODELLED (installed stack): installed transformers 4.46.3") and "4 bits" in line
               for line in answer.assumptions)
    assert not any("NOT MODELLED" in line for line in estimate("8b", "qlora").assumptions)  # dense: same layout
    nvml = str(Path(__file__).resolve().parents[1] / "fixtures" / "nvml" / "h100x8-idle.json")
    code = main(["check", "--model", "mixtral-8x7b", "--method", "qlora", "--nvml-recording", nvml])
    assert code == 2 and "transformers 4.46.3" in capsys.readouterr().err


def test_every_answer_names_the_library_versions_it_models():
    assert any(line.startswith("libraries modelled (traced): torch") and "transformers" in line
               for line in estimate("8b", "lora").assumptions)
    assert any("torchtune" in line for line in estimate("8b", "lora", stack="torchtune").assumptions
               if line.startswith("libraries modelled"))
