"""FSDP1 and FSDP2 are different engines: each named, modelled as itself, never answered as the other."""

import json
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.cli.app import main
from vramplan.errors import NotModelledError


def test_fsdp_means_the_stacks_default_engine():
    """transformers 5's Trainer defaults fsdp_config version 2, 4.x's 1; the answer says which it modelled."""
    from vramplan.training import Strategy, resolve_setup

    assert estimate("8b", "full", gpus=8, strategy="fsdp2") == estimate("8b", "full", gpus=8, strategy="fsdp")
    assert resolve_setup("full", gpus=8, strategy="fsdp", transformers="4").strategy is Strategy.FSDP1
    assert resolve_setup("full", gpus=8, strategy="fsdp", stack="torchtune").strategy is Strategy.FSDP
    flat = estimate("8b", "full", gpus=8, strategy="fsdp1")
    assert flat.setup.strategy is Strategy.FSDP1 and any("FSDP1 FULL_SHARD" in line for line in flat.assumptions)
    assert any("FSDP2 (accelerate)" in line for line in estimate("8b", "full", gpus=8, strategy="fsdp").assumptions)


def test_fsdp1_keeps_fp32_shards_where_fsdp2_upcasts_too_but_pure_bf16_does_not():
    """accelerate upcasts FSDP1's trainable flat parameters to fp32 under Trainer bf16; without it (bf16-pure) every
    shard stays bf16: full fine-tuning's model states halve."""
    mixed = estimate("8b", "full", gpus=2, strategy="fsdp1")
    pure = estimate("8b", "full", gpus=2, strategy="fsdp1", precision="bf16-pure")
    assert mixed.components["weights"] == 2 * pure.components["weights"]


def _trainer_args(tmp_path, fsdp_config):
    path = tmp_path / "training_args.json"
    path.write_text(json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 1,
                                "bf16": True, "fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config,
                                "output_dir": "out"}))
    return path


def test_an_fsdp1_config_is_fsdp1(tmp_path, capsys):
    path = _trainer_args(tmp_path, {"fsdp_version": 1})
    code = main(["estimate", "--from", str(path), "--gpus", "8", "--format", "json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["setup"]["strategy"] == "fsdp1"
    assert not any("NOT MODELLED" in line for line in answer["assumptions"])


def test_fsdp1_settings_beyond_the_traced_ones_are_not_modelled_and_check_refuses_them(tmp_path, capsys):
    path = _trainer_args(tmp_path, {"fsdp_version": 1, "limit_all_gathers": False})
    code = main(["check", "--from", str(path), "--gpus", "8", "--gpu", "h100-sxm5-80gb"])
    err = capsys.readouterr().err
    assert code == 2 and "limit_all_gathers" in err


def test_fsdp1_forward_prefetch_is_read(tmp_path):
    from vramplan.importers import load_run_config

    run = load_run_config(_trainer_args(tmp_path, {"fsdp_version": 1, "forward_prefetch": True}))
    assert run.options.strategy == "fsdp1" and run.options.forward_prefetch is True and not run.unmodelled


def test_fsdp1_backward_prefetch_is_read(tmp_path):
    from vramplan.importers import load_run_config

    path = _trainer_args(tmp_path, {"fsdp_version": 1, "backward_prefetch": "backward_pre"})
    run = load_run_config(path)
    assert run.options.strategy == "fsdp1" and run.options.backward_prefetch == "backward-pre"
    assert not run.unmodelled


def test_an_unset_version_is_fsdp2_and_says_why(tmp_path, capsys):
    path = _trainer_args(tmp_path, {})
    code = main(["estimate", "--from", str(path), "--gpus", "8", "--format", "json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["setup"]["strategy"] == "fsdp"
    assert any("fsdp_version unset: FSDP2" in line for line in answer["assumptions"])
    assert any("FSDP2 (accelerate)" in line for line in answer["assumptions"])


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


ACCELERATE = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "bf16",
              "num_machines": 1, "num_processes": 8, "machine_rank": 0, "use_cpu": False,
              "fsdp_config": {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_sharding_strategy": "FULL_SHARD",
                              "fsdp_offload_params": False, "fsdp_use_orig_params": True}}


def _accelerate(tmp_path, **changes):
    import yaml

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({**ACCELERATE, **changes}))
    return path


def test_an_accelerate_config_without_fsdp_version_is_fsdp1(tmp_path):
    from vramplan.importers import load_run_config

    run = load_run_config(_accelerate(tmp_path))
    assert run.format == "accelerate" and run.options.gpus == 8 and run.options.strategy == "fsdp1"
    assert not run.unmodelled and any("fsdp_version unset: FSDP1" in line for line in run.assumptions)


def test_an_accelerate_fsdp2_config(tmp_path):
    from vramplan.importers import load_run_config

    fsdp = {**ACCELERATE["fsdp_config"], "fsdp_version": 2, "fsdp_activation_checkpointing": True,
            "fsdp_offload_params": True}
    run = load_run_config(_accelerate(tmp_path, fsdp_config=fsdp, num_machines=2, num_processes=16))
    assert not run.unmodelled
    assert (run.options.strategy, run.options.gpus, run.options.nodes, run.options.offload) == ("fsdp2", 8, 2, "params")
    assert run.options.gradient_checkpointing is True


@pytest.mark.parametrize(("changes", "strategy", "offload"), [
    ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3, "offload_param_device": "cpu",
                                                            "offload_optimizer_device": "cpu"}}, "zero3", "params"),
    ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2, "offload_optimizer_device": "cpu"}},
     "zero2", "optimizer"),
    ({"distributed_type": "MULTI_GPU"}, "ddp", None),
])
def test_accelerate_layouts(tmp_path, changes, strategy, offload):
    from vramplan.importers import load_run_config

    run = load_run_config(_accelerate(tmp_path, **changes))
    assert (run.options.strategy, run.options.offload) == (strategy, offload) and not run.unmodelled


def test_accelerate_engines_vramplan_does_not_model_are_named(tmp_path):
    from vramplan.importers import load_run_config

    run = load_run_config(_accelerate(tmp_path, distributed_type="MEGATRON_LM", new_knob=1))
    assert any(line.startswith("distributed_type=MEGATRON_LM") for line in run.unmodelled)
    assert any(line.startswith("new_knob=1") for line in run.unmodelled)


def test_accelerate_defaults_as_accelerate_applies_them(tmp_path):
    """DeepSpeedPlugin's zero_stage defaults to 2; a distributed config without num_processes is not a layout; FSDP2
    ignores the FSDP1 sharding strategy."""
    from vramplan.importers import load_run_config

    deepspeed = load_run_config(_accelerate(tmp_path, distributed_type="DEEPSPEED", deepspeed_config={}))
    assert deepspeed.options.strategy == "zero2"
    raw = {key: value for key, value in ACCELERATE.items() if key != "num_processes"}
    path = tmp_path / "no_processes.yaml"
    path.write_text(__import__("yaml").safe_dump({**raw, "distributed_type": "MULTI_GPU"}))
    assert any(line.startswith("num_processes=unset") for line in load_run_config(path).unmodelled)
    fsdp = {**ACCELERATE["fsdp_config"], "fsdp_version": 2, "fsdp_sharding_strategy": "HYBRID_SHARD"}
    assert load_run_config(_accelerate(tmp_path, fsdp_config=fsdp)).options.strategy == "fsdp2"


def test_fsdp1_shard_grad_op_hybrid_and_no_shard_configs_are_modelled_and_hybrid_zero2_is_not(tmp_path):
    from vramplan.importers import load_run_config

    fsdp = {**ACCELERATE["fsdp_config"], "fsdp_sharding_strategy": "SHARD_GRAD_OP"}
    run = load_run_config(_accelerate(tmp_path, fsdp_config=fsdp))
    assert (run.options.strategy, run.options.fsdp1_sharding) == ("fsdp1", "shard-grad-op") and not run.unmodelled
    for name, sharding in (("HYBRID_SHARD", "hybrid-shard"), ("NO_SHARD", "no-shard")):
        fsdp = {**ACCELERATE["fsdp_config"], "fsdp_sharding_strategy": name}
        run = load_run_config(_accelerate(tmp_path, fsdp_config=fsdp))
        assert (run.options.strategy, run.options.fsdp1_sharding) == ("fsdp1", sharding) and not run.unmodelled
    fsdp = {**ACCELERATE["fsdp_config"], "fsdp_sharding_strategy": "HYBRID_SHARD_ZERO2"}
    assert any("HYBRID_SHARD_ZERO2" in line
               for line in load_run_config(_accelerate(tmp_path, fsdp_config=fsdp)).unmodelled)
