"""TRL's DPO loss path traced on fake tensors (vramplan/measure/trl_dpo.py): it runs TRL's own code for LoRA, QLoRA
and full fine-tuning, counts the full fine-tune's reference model, and its fused head allocates what the GPU path
allocates (no full-vocabulary logits)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from vramplan.measure.trl_dpo import trace_dpo_step  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

CONFIG = json.loads((Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json").read_text())
PAIRS, LENGTH, PROMPT = 2, 256, 128


@pytest.fixture(scope="module")
def traces():
    return {method: trace_dpo_step(CONFIG, resolve_setup(method, batch_size=PAIRS, seq_len=LENGTH,
                                                         gradient_checkpointing=False), prompt_len=PROMPT)
            for method in ("lora", "full")}


def test_full_fine_tuning_holds_a_frozen_reference_copy(traces):
    full, lora = traces["full"], traces["lora"]
    weights = full.total_params * 2  # bf16
    idle = full.phases[0].categories["parameters"]
    assert idle == pytest.approx(2 * weights, rel=0.01)  # policy + reference, both in the policy's dtype
    assert lora.phases[0].categories["parameters"] < 1.1 * weights  # peft: the reference is the adapter-less base


def test_the_fused_head_allocates_its_gpu_buffers_not_the_logits(traces):
    # trl/kernels/chunked_logprob.py backward: one bf16 projection tile of min(N, 4096) x 32768 (N = labelled
    # positions), the lm_head's fp32 gradient when it trains (full fine-tuning), the hidden states' fp32 gradient
    labelled, hidden, vocab = 2 * PAIRS * (LENGTH - PROMPT), CONFIG["hidden_size"], CONFIG["vocab_size"]
    tile = min(labelled, 4096) * 32768 * 2
    lora = next(p for p in traces["lora"].phases if p.phase == "backward").categories["temporaries"]
    assert tile <= lora < tile + labelled * hidden * 4 + 2**20
    full = next(p for p in traces["full"].phases if p.phase == "backward").categories["temporaries"]
    assert full >= tile + vocab * hidden * 4  # + the lm_head's fp32 gradient
    assert full < 2 * PAIRS * LENGTH * vocab * 4  # far below full fp32 logits


def test_prompt_length_must_leave_a_completion():
    with pytest.raises(ValueError, match="prompt_len"):
        trace_dpo_step(CONFIG, resolve_setup("lora", batch_size=1, seq_len=64), prompt_len=64)


def test_cli_traces_and_estimates_dpo_and_refuses_the_other_objectives(capsys):
    from vramplan.cli.app import main

    config = str(Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json")
    args = ["--model", config, "--method", "lora", "--objective", "dpo", "--batch-size", "1", "--seq-len", "128",
            "--prompt-len", "64"]
    assert main(["trace", *args]) == 0
    assert "DPO: TRL 1.16's DPOTrainer._compute_loss" in capsys.readouterr().out
    assert main(["estimate", *args]) == 0
    assert "objective: DPO, TRL 1.16 DPOTrainer" in capsys.readouterr().out
    assert main(["check", "--gpu", "24GB", *args]) == 0
    capsys.readouterr()
    # DPO is modelled on one GPU: a several-GPU layout is refused, not answered as SFT
    assert main(["estimate", *args, "--gpus", "2", "--strategy", "ddp"]) == 2
    assert "one GPU" in capsys.readouterr().err
    # objectives vramplan does not know are a usage error naming the ones it models, not an SFT answer
    assert main(["estimate", "--model", "8b", "--objective", "simpo"]) == 2
    assert "choose sft, dpo, orpo, kto or grpo" in capsys.readouterr().err
