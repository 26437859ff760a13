"""The scaling line: model states shard with the GPUs, the micro-batch's memory does not; said with figures."""

from vramplan.api import estimate


def _scaling(answer):
    lines = [line for line in answer.assumptions if line.startswith("scaling, per GPU")]
    assert len(lines) == 1
    return lines[0]


def test_sharding_full_fine_tuning_saves_its_states():
    spread, single = estimate("8b", "full", gpus=8, strategy="zero3"), estimate("8b", "full")
    line = _scaling(spread)
    assert f"{single.device_bytes / 2**30:.2f} -> {spread.device_bytes / 2**30:.2f} GiB" in line
    assert "help little" not in line


def test_ddp_replicates_and_more_gpus_help_little():
    line = _scaling(estimate("8b", "lora", gpus=4, strategy="ddp"))
    assert "(replicated (DDP))" in line and "help little" in line


def test_long_sequence_lora_is_dominated_by_what_does_not_shard():
    line = _scaling(estimate("8b", "lora", gpus=8, strategy="fsdp", seq_len=16384, gradient_checkpointing=False))
    assert "help little" in line


def test_one_gpu_has_no_scaling_line():
    assert not any(line.startswith("scaling") for line in estimate("8b", "lora").assumptions)
