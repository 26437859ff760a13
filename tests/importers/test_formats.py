"""Format-specific readings that the example configs do not cover: embedded DeepSpeed, FSDP words, defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vramplan.importers import detect_format, load_run_config
from vramplan.importers.torchtune import catalog_id_for

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "component, catalog_id",
    [
        pytest.param("torchtune.models.llama3_1.lora_llama3_1_8b", "llama-3.1-8b", id="llama3.1-lora"),
        pytest.param("torchtune.models.llama3_2.llama3_2_1b", "llama-3.2-1b", id="llama3.2-full"),
        pytest.param("torchtune.models.llama3_3.qlora_llama3_3_70b", "llama-3.3-70b", id="llama3.3-qlora"),
        pytest.param("torchtune.models.qwen2_5.lora_qwen2_5_0_5b", "qwen2.5-0.5b", id="qwen2.5-0.5b"),
        pytest.param("torchtune.models.qwen2_5.qwen2_5_7b_base", "qwen2.5-7b", id="qwen2.5-7b-base"),
        pytest.param("torchtune.models.gemma2.gemma2_2b", "gemma-2-2b", id="gemma2"),
        pytest.param("torchtune.models.llama3_2_vision.llama3_2_vision_11b", None, id="not-in-catalog"),
        pytest.param("mypackage.my_model", None, id="not-torchtune"),
    ],
)
def test_torchtune_component_to_catalog_id(component, catalog_id):
    assert catalog_id_for(component) == catalog_id


def test_trl_args_point_at_a_deepspeed_file(tmp_path):
    shutil.copy(CONFIGS / "deepspeed-zero3-offload.json", tmp_path / "ds.json")
    args = {"per_device_train_batch_size": 2, "bf16": True, "deepspeed": "ds.json", "gradient_checkpointing": True}
    run = load_run_config(_write(tmp_path, "training_args.json", json.dumps(args)))
    assert run.method == "full"
    assert (run.options.given()["strategy"], run.options.given()["offload"], run.options.given()["batch_size"]) == ("zero3", "params", 2)
    assert run.options.given()["precision"] == "bf16" and run.options.given()["gradient_checkpointing"] is True


def test_plain_training_arguments_use_transformers_defaults(tmp_path):
    run = load_run_config(_write(tmp_path, "args.json", json.dumps({"output_dir": "out", "optim": "adamw_bnb_8bit"})))
    assert run.format == "trl" and run.method == "full"
    assert run.options.given() == {"stack": "hf", "batch_size": 8, "precision": "fp32", "gradient_checkpointing": False,
                           "optimizer": "adamw-8bit", "liger": False, "loss": "standard"}
    assert any("seq_len not set" in note for note in run.notes)


def test_hf_fsdp_words_and_config(tmp_path):
    args = {"per_device_train_batch_size": 1, "fsdp": "full_shard auto_wrap offload",
            "fsdp_config": {"fsdp_version": 2, "activation_checkpointing": True, "mystery_knob": 3}}
    run = load_run_config(_write(tmp_path, "args.json", json.dumps(args)))
    assert (run.options.given()["strategy"], run.options.given()["offload"]) == ("fsdp2", "params")
    assert run.options.given()["gradient_checkpointing"] is True
    assert any(entry.startswith("fsdp_config.mystery_knob=3") for entry in run.unmodelled)


@pytest.mark.parametrize(
    "optim, expected",
    [
        pytest.param("adamw_torch_fused", "adamw-fused", id="fused"),
        pytest.param("paged_adamw_32bit", "paged-adamw", id="paged-32"),
        pytest.param("paged_adamw_8bit", "paged-adamw-8bit", id="paged-8"),
        pytest.param("sgd", "sgd", id="sgd"),
        pytest.param("adafactor", "adafactor", id="adafactor"),
    ],
)
def test_hf_optimizer_names(tmp_path, optim, expected):
    run = load_run_config(_write(tmp_path, "a.json", json.dumps({"output_dir": "o", "optim": optim})))
    assert run.options.given()["optimizer"] == expected


def test_unknown_optimizer_is_unmodelled_not_guessed(tmp_path):
    run = load_run_config(_write(tmp_path, "a.json", json.dumps({"output_dir": "o", "optim": "lion_8bit"})))
    assert run.options.optimizer is None
    assert run.unmodelled[0].startswith("optim=lion_8bit (optimizer not modelled")


def test_llama_factory_defaults_and_unmodelled(tmp_path):
    text = "model_name_or_path: Qwen/Qwen2.5-7B\nstage: sft\nquantization_bit: 4\nuse_dora: true\n"
    run = load_run_config(_write(tmp_path, "lf.yaml", text))
    assert run.method == "qlora"
    assert run.options.given()["lora_rank"] == 8 and run.options.given()["lora_targets"] == "all-linear"
    assert run.options.given()["batch_size"] == 8 and run.options.given()["seq_len"] == 2048 and run.options.given()["double_quant"] is True
    assert [entry.split("=")[0] for entry in run.unmodelled] == ["use_dora"]


@pytest.mark.parametrize("name, text, words", [
    ("lf.yaml", "model_name_or_path: Qwen/Qwen2.5-7B\nstage: dpo\nfinetuning_type: lora\n",
     "stage: dpo is LLaMA-Factory's own DPO trainer"),
    ("lf.yaml", "model_name_or_path: Qwen/Qwen2.5-7B\nstage: kto\n", "stage: kto is KTO"),
    ("lf.yaml", "model_name_or_path: Qwen/Qwen2.5-7B\nstage: ppo\n", "stage: ppo is PPO"),
    ("a.yml", "base_model: Qwen/Qwen3-8B\nrl: grpo\nadapter: lora\n", "rl: grpo is preference or RL"),
    ("a.yml", "base_model: Qwen/Qwen3-8B\ndatasets: []\nreward_model: true\n", "reward_model: True is reward-model"),
    ("dpo.json", json.dumps({"output_dir": "o", "beta": 0.1, "max_length": 1024}), "beta: 0.1 is a preference"),
    ("cpo.json", json.dumps({"output_dir": "o", "beta": 0.1, "cpo_alpha": 1.0}), "is CPO/SimPO"),
])
def test_preference_and_rl_objectives_are_refused_not_estimated_as_sft(tmp_path, name, text, words):
    from vramplan.errors import NotModelledError

    with pytest.raises(NotModelledError, match=words):
        load_run_config(_write(tmp_path, name, text))


def test_trl_grpo_config_reads_into_the_grpo_objective(tmp_path):
    text = json.dumps({"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "per_device_train_batch_size": 4,
                       "gradient_accumulation_steps": 2, "num_generations": 8, "max_completion_length": 256,
                       "beta": 0.04, "learning_rate": 1e-6, "temperature": 0.9, "loss_type": "dapo"})
    run = load_run_config(_write(tmp_path, "grpo.json", text))
    given = run.options.given()
    assert (given["objective"], given["batch_size"], given["completion_len"]) == ("grpo", 4, 256)
    assert (given["num_generations"], given["steps_per_generation"], given["beta"]) == (8, 2, 0.04)
    assert given["gradient_checkpointing"] is True and given["precision"] == "bf16"  # TRL's BaseConfig defaults
    assert "seq_len" not in given and not run.unmodelled
    assert any("512 tokens assumed" in line for line in run.assumptions)


def test_trl_grpo_config_defaults_and_unmodelled_iterations(tmp_path):
    text = json.dumps({"model_name_or_path": "x", "num_generations": 4, "num_iterations": 2})
    run = load_run_config(_write(tmp_path, "grpo.json", text))
    given = run.options.given()
    assert (given["batch_size"], given["completion_len"], given["steps_per_generation"], given["beta"]) == (
        8, 512, 1, 0.0)
    assert [entry.split("=")[0] for entry in run.unmodelled] == ["num_iterations"]


def test_trl_grpo_config_with_colocated_vllm(tmp_path):
    text = json.dumps({"model_name_or_path": "x", "num_generations": 8, "use_vllm": True,
                       "vllm_gpu_memory_utilization": 0.5, "vllm_enable_sleep_mode": True,
                       "vllm_max_model_length": 2048})
    given = load_run_config(_write(tmp_path, "grpo.json", text)).options.given()
    assert (given["generation"], given["vllm_gpu_memory_utilization"], given["vllm_sleep"]) == (
        "vllm-colocate", 0.5, True)
    assert given["vllm_max_model_len"] == 2048


def test_trl_grpo_config_with_a_vllm_server(tmp_path):
    text = json.dumps({"model_name_or_path": "x", "num_generations": 8, "use_vllm": True, "vllm_mode": "server",
                       "vllm_server_host": "10.0.0.2"})
    run = load_run_config(_write(tmp_path, "grpo.json", text))
    assert run.options.given()["generation"] == "vllm-server" and not run.unmodelled
    assert any("trl vllm-serve" in line for line in run.assumptions)


def test_trl_kto_config_reads_into_the_kto_objective(tmp_path):
    text = json.dumps({"model_name_or_path": "x", "per_device_train_batch_size": 4, "desirable_weight": 1.33,
                       "max_length": 2048})
    run = load_run_config(_write(tmp_path, "kto.json", text))
    given = run.options.given()
    assert (given["objective"], given["batch_size"], given["seq_len"]) == ("kto", 4, 2048)
    assert not run.unmodelled


def test_trl_dpo_config_reads_into_the_dpo_objective(tmp_path):
    text = json.dumps({"model_name_or_path": "x", "per_device_train_batch_size": 2, "beta": 0.1,
                       "precompute_ref_log_probs": True, "loss_type": ["sigmoid"]})
    run = load_run_config(_write(tmp_path, "dpo.json", text))
    given = run.options.given()
    assert (given["objective"], given["batch_size"], given["seq_len"], given["precompute_ref"]) == (
        "dpo", 2, 1024, True)
    assert not run.unmodelled


def test_axolotl_defaults_when_keys_are_absent(tmp_path):
    run = load_run_config(_write(tmp_path, "a.yml", "base_model: Qwen/Qwen3-8B\ndatasets: []\n"))
    assert run.method == "full"
    assert (run.options.given()["batch_size"], run.options.given()["seq_len"]) == (1, 512)
    assert run.options.given()["gradient_checkpointing"] is False and run.options.given()["optimizer"] == "adamw-fused"


def test_axolotl_missing_deepspeed_file_read_from_its_name(tmp_path):
    text = "base_model: x/y\nmicro_batch_size: 1\ndeepspeed: deepspeed_configs/zero3_bf16_cpuoffload_all.json\n"
    run = load_run_config(_write(tmp_path, "a.yml", text))
    assert (run.options.given()["strategy"], run.options.given()["offload"]) == ("zero3", "params")
    assert any("read from its file name" in note for note in run.notes)


def test_torchtune_distributed_full_recipe(tmp_path):
    text = ("model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\nbatch_size: 2\ndtype: bf16\n"
            "optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\noptimizer_in_bwd: False\n"
            "loss:\n  _component_: torchtune.modules.loss.LinearCrossEntropyLoss\n"
            "fsdp_cpu_offload: True\nenable_activation_checkpointing: True\ncompile: True\n")
    run = load_run_config(_write(tmp_path, "8B_full.yaml", text))
    assert (run.model, run.method) == ("llama-3.1-8b", "full")
    assert (run.options.given()["strategy"], run.options.given()["offload"]) == ("fsdp", "params")
    assert run.options.given()["loss"] == "chunked"
    assert run.unmodelled[0].startswith("compile=True")


@pytest.mark.parametrize(
    "raw, fmt",
    [
        pytest.param({"base_model": "x", "adapter": "lora"}, "axolotl", id="axolotl"),
        pytest.param({"model_name_or_path": "x", "stage": "sft"}, "llama-factory", id="llama-factory"),
        pytest.param({"model": {"_component_": "torchtune.models.llama3.llama3_8b"}}, "torchtune", id="torchtune"),
        pytest.param({"zero_optimization": {"stage": 2}}, "deepspeed", id="deepspeed"),
        pytest.param({"per_device_train_batch_size": 2}, "trl", id="trl"),
        pytest.param({"learning_rate": 1e-4}, None, id="unknown"),
    ],
)
def test_detect_format(raw, fmt):
    assert detect_format(raw) == fmt
