import pytest

from vramplan.errors import NotModelledError, UsageError
from vramplan.training import ALL_LINEAR, Method, Optimizer, Precision, resolve_setup


def test_lora_defaults_are_the_common_recipe():
    setup = resolve_setup("lora")
    assert setup.batch_size == 1 and setup.seq_len == 2048
    # transformers' TrainingArguments default optim is adamw_torch_fused on torch >= 2.8 (vramplan/presets.py)
    assert setup.optimizer is Optimizer.ADAMW_FUSED and setup.precision is Precision.BF16
    assert setup.gradient_checkpointing is True
    assert setup.lora.rank == 16 and setup.lora.targets == ALL_LINEAR and setup.lora.dropout == 0.05
    assert setup.quant is None


def test_qlora_defaults_nf4_double_quant_kbit_prep():
    setup = resolve_setup("qlora")
    assert setup.quant.quant_type == "nf4" and setup.quant.double_quant and setup.quant.kbit_prep
    assert setup.gradient_checkpointing is True


def test_full_defaults_no_checkpointing():
    setup = resolve_setup("full")
    assert setup.method is Method.FULL and setup.gradient_checkpointing is False and setup.lora is None


def test_lora_targets_parsed_and_deduplicated():
    setup = resolve_setup("lora", lora_targets="q_proj, v_proj,q_proj")
    assert setup.lora.targets == ("q_proj", "v_proj")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        pytest.param({"method": "full", "lora_rank": 8}, "need --method lora", id="lora-with-full"),
        pytest.param({"method": "lora", "double_quant": False}, "qlora only", id="quant-with-lora"),
        pytest.param({"method": "ft"}, "unknown --method", id="bad-method"),
        pytest.param({"method": "lora", "optimizer": "adam9"}, "unknown --optimizer", id="bad-optimizer"),
        pytest.param({"method": "lora", "precision": "fp8"}, "unknown --precision", id="bad-precision"),
        pytest.param({"method": "lora", "batch_size": 0}, "--batch-size", id="zero-batch"),
        pytest.param({"method": "lora", "seq_len": -5}, "--seq-len", id="negative-seq"),
        pytest.param({"method": "lora", "lora_rank": 0}, "--lora-rank", id="zero-rank"),
        pytest.param({"method": "lora", "lora_dropout": 1.0}, "--lora-dropout", id="dropout-one"),
        pytest.param({"method": "lora", "lora_targets": " , "}, "--lora-targets", id="empty-targets"),
    ],
)
def test_bad_setups_are_usage_errors(kwargs, fragment):
    method = kwargs.pop("method")
    with pytest.raises(UsageError, match=fragment):
        resolve_setup(method, **kwargs)


def test_several_gpus_need_a_strategy():
    with pytest.raises(UsageError, match="--strategy"):
        resolve_setup("lora", gpus=2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(gpus=2, strategy="single"), UsageError, "one GPU"),
        (dict(strategy="ddp", offload="params"), UsageError, "shards parameters"),
        (dict(strategy="fsdp", offload="optimizer"), UsageError, "--offload params"),
        (dict(gpus=2, nodes=2, strategy="device-map"), UsageError, "--nodes 1"),
        (dict(gpus=2, strategy="zero2", optimizer="adamw-8bit"), NotModelledError, "DeepSpeed"),
        (dict(gpus=2, strategy="ddp", optimizer="paged-adamw"), NotModelledError, "several GPUs"),
        (dict(gpus=2, strategy="mesh"), UsageError, "unknown --strategy"),
        (dict(gpus=2, nodes=0, strategy="ddp"), UsageError, "--nodes"),
    ],
)
def test_strategy_combinations_an_engine_does_not_run_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        resolve_setup("full", **kwargs)


def test_world_size_counts_every_node():
    setup = resolve_setup("full", gpus=8, nodes=4, strategy="fsdp-hybrid", offload="params")
    assert (setup.world_size, setup.strategy.value, setup.offload.value) == (32, "fsdp-hybrid", "params")
