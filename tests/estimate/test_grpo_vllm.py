"""GRPO with vLLM colocated on the training GPU (vramplan/estimate/compose/grpo_vllm.py): vLLM's share is
gpu_memory_utilization x the GPU's total, added per GPU by Estimate.needed_on; its share must hold its own floor
(vLLM's rule, read from its source: vramplan/serving); check names what to change."""

import math

import pytest

from vramplan.api import estimate

GIB = 2**30
COLOCATE = dict(objective="grpo", generation="vllm-colocate", batch_size=8, prompt_len=512, completion_len=1024)


def test_the_floor_holds_one_sequence_of_the_model_s_own_maximum():
    est = estimate("llama-3.1-8b", "lora", **COLOCATE)
    terms = est.colocated.floor_terms
    # 32 layers x 8 kv heads x 128 x 2 (keys, values) x 2 bytes = 128 KiB per token, 131,072 tokens (config)
    assert terms["kv_one_sequence_of_131072"] == 131072 * 131072
    assert terms["weights"] == pytest.approx(16.06e9, rel=0.01)  # bf16: 8.03B parameters
    assert est.colocated.floor_bytes == sum(terms.values())
    shorter = estimate("llama-3.1-8b", "lora", **COLOCATE, vllm_max_model_len=1536).colocated
    assert shorter.floor_terms["kv_one_sequence_of_1536"] == 1536 * 131072


def test_needed_on_adds_the_share_or_refuses_a_share_below_the_floor():
    est = estimate("llama-3.1-8b", "lora", **COLOCATE, vllm_max_model_len=1536)
    total = 80 * GIB
    assert est.needed_on(total) == est.device_bytes + math.ceil(0.3 * total)
    small = 24 * GIB  # 0.3 x 24 GiB cannot hold the bf16 weights
    assert est.needed_on(small) > small
    asleep = estimate("llama-3.1-8b", "lora", **COLOCATE, vllm_max_model_len=1536, vllm_sleep=True)
    assert asleep.needed_on(total) < est.needed_on(total)
    assert asleep.needed_on(total) >= math.ceil(0.3 * total)


def test_the_training_side_has_no_generate_phase_but_rescored_log_probs():
    est = estimate("llama-3.2-1b", "lora", **COLOCATE)
    plain = estimate("llama-3.2-1b", "lora", **{**COLOCATE, "generation": "transformers"})
    first = est.phases[0]
    assert first.phase == "generation" and "kv_cache" not in first.components
    assert "kv_cache" in plain.phases[0].components
    # old and sampling log-probs of the importance-sampling correction: 2 x 8 x 1024 fp32 more in the batch
    assert est.phases[-1].components["generation_batch"] - plain.phases[-1].components["generation_batch"] == (
        2 * 8 * 1024 * 4)


def test_check_says_what_to_change(capsys):
    from vramplan.cli.app import main

    args = ["check", "--model", "llama-3.1-8b", "--method", "lora", "--objective", "grpo", "--generation",
            "vllm-colocate", "--gpu", "h100-sxm5-80gb"]
    assert main(args) == 3
    out = capsys.readouterr().out
    assert "--vllm-max-model-len 1024" in out and "--vllm-gpu-memory-utilization 0.4" in out
    assert main([*args, "--vllm-max-model-len", "1024"]) == 0
    assert main(["estimate", "--model", "8b", "--objective", "grpo", "--vllm-sleep"]) == 2
    assert "applies to --generation vllm-colocate" in capsys.readouterr().err


def test_a_vllm_server_is_another_gpu_checked_like_the_target(capsys):
    from vramplan.cli.app import main

    est = estimate("llama-3.1-8b", "qlora", **{**COLOCATE, "generation": "vllm-server"})
    assert est.colocated is None and est.needed_on(80 * GIB) == est.device_bytes
    server = est.generation_server
    assert server.gpu_memory_utilization == 0.9  # trl vllm-serve's default
    assert server.floor_terms["weights"] == pytest.approx(16.06e9, rel=0.01)  # the server loads bf16, not 4-bit
    args = ["check", "--model", "llama-3.1-8b", "--method", "qlora", "--objective", "grpo", "--generation",
            "vllm-server", "--gpu", "rtx-4090"]
    assert main(args) == 3  # 0.9 x 24 GB cannot hold bf16 weights and one 131,072-token sequence
    assert "IT CANNOT START" in capsys.readouterr().out
    assert main([*args, "--vllm-max-model-len", "1024"]) == 0
    assert main(["plan", "--model", "8b", "--method", "lora", "--objective", "grpo", "--generation",
                 "vllm-server"]) == 2
