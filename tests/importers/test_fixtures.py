"""Each example config under tests/fixtures/configs -> the ImportedRun it should give, options exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramplan.importers import ImportedRun, load_run_config

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"

CASES = [
    pytest.param(
        "axolotl-llama3-qlora.yml", "axolotl", "meta-llama/Meta-Llama-3-8B", "qlora",
        {"stack": "axolotl", "lora_rank": 32, "lora_targets": "all-linear", "lora_dropout": 0.05, "double_quant": True,
         "batch_size": 2, "seq_len": 4096, "packing": True, "precision": "bf16", "gradient_checkpointing": True,
         "activation_offload": False, "optimizer": "paged-adamw", "attn": "flash", "liger": False,
         "loss": "standard"},
        [],
        id="axolotl-qlora",
    ),
    pytest.param(
        "axolotl-full-fsdp.yml", "axolotl", "meta-llama/Llama-3.1-8B", "full",
        {"stack": "axolotl", "batch_size": 1, "seq_len": 8192, "packing": True, "precision": "bf16",
         "gradient_checkpointing": True, "activation_offload": False, "optimizer": "adamw-fused", "attn": "flash",
         "liger": True, "loss": "fused", "strategy": "fsdp2"},
        [],
        id="axolotl-full-fsdp",
    ),
    pytest.param(
        "axolotl-unknown-key.yml", "axolotl", "meta-llama/Llama-3.2-1B", "lora",
        {"stack": "axolotl", "lora_rank": 16, "lora_targets": "q_proj,k_proj,v_proj,o_proj", "lora_dropout": 0.0,
         "batch_size": 4, "seq_len": 2048, "packing": False, "precision": "bf16", "gradient_checkpointing": True,
         "activation_offload": False, "optimizer": "adamw-fused", "attn": "sdpa", "liger": False, "loss": "standard"},
        ["lora_modules_to_save=['embed_tokens', 'lm_head']", "tiled_mlp=True", "tiled_mlp_num_shards=4"],
        id="axolotl-unknown-key",
    ),
    pytest.param(
        "llama-factory-lora.yaml", "llama-factory", "meta-llama/Meta-Llama-3-8B-Instruct", "lora",
        {"stack": "llama-factory", "lora_rank": 16, "lora_dropout": 0.0, "lora_targets": "all-linear",
         "batch_size": 2, "seq_len": 4096, "packing": False, "precision": "bf16", "gradient_checkpointing": True,
         "optimizer": "adamw-fused", "attn": "flash", "liger": True, "loss": "fused"},
        [],
        id="llama-factory-lora",
    ),
    pytest.param(
        "torchtune-8B_lora_single_device.yaml", "torchtune", "llama-3.1-8b", "lora",
        {"stack": "torchtune", "lora_rank": 8, "lora_dropout": 0.0,
         "lora_targets": "q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "batch_size": 2, "packing": False,
         "precision": "bf16", "optimizer": "adamw-fused", "optimizer_in_backward": False,
         "gradient_checkpointing": True, "activation_offload": False, "loss": "chunked"},
        [],
        id="torchtune-lora",
    ),
    pytest.param(
        "torchtune-8B_qlora.yaml", "torchtune", "llama-3.1-8b", "qlora",
        {"stack": "torchtune", "lora_rank": 8, "lora_dropout": 0.0, "lora_targets": "all-linear",
         "double_quant": True, "batch_size": 4, "seq_len": 4096, "packing": True, "precision": "bf16",
         "optimizer": "adamw-fused", "optimizer_in_backward": False, "gradient_checkpointing": True,
         "activation_offload": True, "loss": "chunked"},
        [],
        id="torchtune-qlora",
    ),
    pytest.param(
        "trl-sft", "trl", "meta-llama/Llama-3.2-1B", "lora",
        {"stack": "hf", "batch_size": 4, "seq_len": 2048, "packing": False, "precision": "bf16",
         "gradient_checkpointing": True, "optimizer": "adamw", "liger": False, "loss": "standard",
         "activation_offload": False, "lora_rank": 16,
         "lora_targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "lora_dropout": 0.05},
        [],
        id="trl-folder-with-adapter",
    ),
    pytest.param(
        "trl-sft.yaml", "trl", "Qwen/Qwen2.5-7B", "qlora",
        {"stack": "hf", "batch_size": 2, "seq_len": 4096, "packing": True, "precision": "bf16",
         "gradient_checkpointing": True, "optimizer": "paged-adamw-8bit", "liger": True, "loss": "fused",
         "attn": "flash", "activation_offload": False, "lora_rank": 32, "lora_targets": "all-linear",
         "lora_dropout": 0.05, "double_quant": False},
        [],
        id="trl-cli-yaml",
    ),
    pytest.param(
        "deepspeed-zero3-offload.json", "deepspeed", None, None,
        {"strategy": "zero3", "offload": "params", "batch_size": 2, "precision": "bf16", "optimizer": "adamw",
         "gpus": 8},
        ["zero_optimization.reduce_bucket_size=200000000.0"],
        id="deepspeed-zero3-offload",
    ),
]


@pytest.mark.parametrize("name, fmt, model, method, options, unmodelled", CASES)
def test_fixture_reads_as_expected(name, fmt, model, method, options, unmodelled):
    run = load_run_config(CONFIGS / name)
    assert isinstance(run, ImportedRun)
    assert (run.format, run.model, run.method) == (fmt, model, method)
    assert run.options.given() == options
    assert [entry.split(" (")[0] for entry in run.unmodelled] == unmodelled


@pytest.mark.parametrize("name", [case.values[0] for case in CASES])
def test_every_option_has_a_note(name):
    """Each option says where it came from: a key in the file or the framework default it fell back to."""
    run = load_run_config(CONFIGS / name)
    for option, value in run.options.given().items():
        assert any(f"{option} " in note or f"-> {option}" in note for note in run.notes), (option, run.notes)


def test_unmodelled_entries_name_the_value_and_the_reason():
    run = load_run_config(CONFIGS / "axolotl-unknown-key.yml")
    assert run.unmodelled[0] == ("lora_modules_to_save=['embed_tokens', 'lm_head'] "
                                 "(trains full copies of these modules (e.g. the embedding): not modelled)")
    assert "tiled_mlp=True (not read by vramplan's axolotl reader: may change memory)" in run.unmodelled


def test_memory_neutral_keys_are_quiet():
    """Learning rate, logging, output dirs and wandb keys leave no trace."""
    run = load_run_config(CONFIGS / "axolotl-llama3-qlora.yml")
    text = " ".join(run.notes + run.unmodelled)
    for key in ("learning_rate", "wandb_project", "output_dir", "logging_steps", "lr_scheduler"):
        assert key not in text


def test_explicit_kind_matches_detection():
    detected = load_run_config(CONFIGS / "deepspeed-zero3-offload.json")
    assert load_run_config(CONFIGS / "deepspeed-zero3-offload.json", kind="deepspeed") == detected
    assert load_run_config(CONFIGS / "llama-factory-lora.yaml", kind="llamafactory").format == "llama-factory"


def test_imported_run_is_frozen_and_serialises():
    run = load_run_config(CONFIGS / "torchtune-8B_qlora.yaml")
    with pytest.raises(Exception):
        run.method = "full"
    assert ImportedRun.model_validate_json(run.model_dump_json()) == run
