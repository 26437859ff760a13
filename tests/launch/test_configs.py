"""The launcher configs `--emit` writes, validated by the libraries that read them (accelerate, transformers).

DeepSpeed itself is not installed here (it needs CUDA to build its ops), so the DeepSpeed JSON is read by
accelerate's DeepSpeedPlugin and by transformers' HfTrainerDeepSpeedConfig fill logic (run without its
`deepspeed` version check), which replaces every "auto" from TrainingArguments and the model's hidden size.
"""

import importlib
import json

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from vramplan.cli.app import main  # noqa: E402
from vramplan.cli.emit import render_configs  # noqa: E402
from vramplan.estimate.strategies.zero import (  # noqa: E402
    HF_PERSISTENCE_PER_HIDDEN,
    HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ,
    HF_REDUCE_BUCKET_PER_HIDDEN_SQ,
)
from vramplan.launch.configs import DECODER_LAYER_CLASS, deepspeed_config, trainer_fsdp_arguments  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

SPEC = resolve_model("8b").spec  # Llama: hidden 4096, LlamaDecoderLayer

LAYOUTS = [
    pytest.param("full", dict(gpus=1), id="single"),
    pytest.param("lora", dict(gpus=8, strategy="ddp"), id="ddp"),
    pytest.param("full", dict(gpus=8, strategy="zero1"), id="zero1"),
    pytest.param("full", dict(gpus=8, strategy="zero2", offload="optimizer"), id="zero2-offload-optimizer"),
    pytest.param("full", dict(gpus=8, nodes=2, strategy="zero3"), id="zero3-2-nodes"),
    pytest.param("full", dict(gpus=8, strategy="zero3", offload="params"), id="zero3-offload-params"),
    pytest.param("full", dict(gpus=8, strategy="fsdp", gradient_checkpointing=True), id="fsdp"),
    pytest.param("qlora", dict(gpus=4, strategy="fsdp", offload="params"), id="fsdp-offload-qlora"),
    pytest.param("full", dict(gpus=8, nodes=4, strategy="fsdp-hybrid"), id="fsdp-hybrid-4-nodes"),
    pytest.param("lora", dict(gpus=4, strategy="fsdp1", gradient_checkpointing=True), id="fsdp1-lora"),
]


def _launch_args(path, monkeypatch):
    """What `accelerate launch --config_file path train.py` makes of the file: its args and the environment
    it hands the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = {}
    if not args.use_deepspeed:
        env = prepare_multi_gpu_env(args)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return args, env


@pytest.mark.parametrize("method, options", LAYOUTS)
def test_accelerate_yaml_is_what_accelerate_launch_reads(method, options, tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig

    setup = resolve_setup(method, **options)
    target = tmp_path / "accelerate.yaml"
    for path, text in render_configs("accelerate", setup, SPEC, str(target)).items():
        (tmp_path / path).write_text(text)
    config = ClusterConfig.from_yaml_file(str(target))
    assert config.num_processes == setup.world_size and config.num_machines == setup.nodes
    assert config.mixed_precision == "bf16"
    args, env = _launch_args(target, monkeypatch)
    strategy = setup.strategy.value
    if strategy.startswith("fsdp"):
        from accelerate.utils import FullyShardedDataParallelPlugin

        if strategy == "fsdp1":  # FSDP1's plugin refuses sync_module_states on a CPU-only machine
            assert env["FSDP_SYNC_MODULE_STATES"] == "true"
            monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
            monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* environment accelerate launch sets
        assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
        if strategy == "fsdp1":  # the traced FSDP1 settings; checkpointing is the Trainer's, not FSDP's
            from torch.distributed.fsdp import ShardingStrategy

            assert plugin.fsdp_version == 1 and plugin.sharding_strategy is ShardingStrategy.FULL_SHARD
            assert plugin.use_orig_params is True and plugin.backward_prefetch is None
            assert plugin.forward_prefetch is False and plugin.limit_all_gathers is True
            assert plugin.activation_checkpointing is False
            return
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.activation_checkpointing is setup.gradient_checkpointing
        offloaded = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
        assert offloaded is (setup.offload.value == "params")
        if strategy == "fsdp-hybrid":
            from accelerate.parallelism_config import ParallelismConfig

            mesh = ParallelismConfig()  # from the PARALLELISM_CONFIG_* environment
            assert (mesh.dp_replicate_size, mesh.dp_shard_size) == (setup.nodes, setup.gpus)
    elif strategy.startswith("zero"):
        from accelerate.utils import DeepSpeedPlugin

        assert args.use_deepspeed and args.zero3_init_flag is (strategy == "zero3")
        plugin = DeepSpeedPlugin(hf_ds_config=args.deepspeed_config_file)
        assert plugin.zero_stage == int(strategy[-1])
    elif strategy == "ddp":
        assert args.multi_gpu and env["ACCELERATE_MIXED_PRECISION"] == "bf16" and "ACCELERATE_USE_FSDP" not in env
    else:
        assert config.distributed_type.value == "NO"


def _trainer_deepspeed_config(config: dict):
    """transformers' HfTrainerDeepSpeedConfig as it is with deepspeed installed: its base class is then
    accelerate's HfDeepSpeedConfig (transformers/integrations/deepspeed.py imports it as DeepSpeedConfig). Without
    deepspeed that base is `object`, so the test puts accelerate's class back under it and skips the version
    check; the "auto"-filling code is transformers' own."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class WithAccelerateBase(HfTrainerDeepSpeedConfig, HfDeepSpeedConfig):
        def __init__(self, config):
            HfDeepSpeedConfig.__init__(self, config)
            self._dtype, self.mismatches = None, []

    return WithAccelerateBase(config)


def _autos(node) -> list:
    if isinstance(node, dict):
        return [a for value in node.values() for a in _autos(value)]
    return ["auto"] if node == "auto" else []


@pytest.mark.parametrize("strategy, offload", [("zero1", None), ("zero2", "optimizer"), ("zero3", None),
                                               ("zero3", "params")])
def test_deepspeed_json_autos_are_the_ones_hf_trainer_fills(strategy, offload):
    from transformers import TrainingArguments

    setup = resolve_setup("full", gpus=8, strategy=strategy, offload=offload)
    config = deepspeed_config(setup)
    assert config["zero_optimization"]["stage"] == int(strategy[-1])
    assert ("offload_optimizer" in config["zero_optimization"]) is (offload is not None)
    assert ("offload_param" in config["zero_optimization"]) is (offload == "params")
    filled = _trainer_deepspeed_config(json.loads(json.dumps(config)))
    args = TrainingArguments(output_dir="unused", bf16=True, per_device_train_batch_size=2,
                             gradient_accumulation_steps=4, use_cpu=True, report_to=[])
    filled.trainer_config_process(args)

    class Model:
        config = type("Config", (), {"hidden_size": SPEC.hidden_size})

    filled.trainer_config_finalize(args, Model(), num_training_steps=100)  # raises on a mismatch
    assert _autos(filled.config) == []
    assert filled.config["train_micro_batch_size_per_gpu"] == 2
    zero = filled.config["zero_optimization"]
    hidden = SPEC.hidden_size
    # the bucket sizes the estimate assumes (estimate/strategies/zero.py) are the ones the Trainer writes
    assert zero["reduce_bucket_size"] == HF_REDUCE_BUCKET_PER_HIDDEN_SQ * hidden * hidden
    if strategy == "zero3":
        assert zero["stage3_prefetch_bucket_size"] == int(HF_PREFETCH_BUCKET_TENTHS_HIDDEN_SQ / 10 * hidden * hidden)
        assert zero["stage3_param_persistence_threshold"] == HF_PERSISTENCE_PER_HIDDEN * hidden


@pytest.mark.parametrize("options", [dict(gpus=8, strategy="fsdp", gradient_checkpointing=True),
                                     dict(gpus=8, strategy="fsdp", offload="params"),
                                     dict(gpus=8, nodes=2, strategy="fsdp-hybrid"),
                                     dict(gpus=4, strategy="fsdp1", gradient_checkpointing=True)],
                         ids=["fsdp", "fsdp-offload", "hsdp", "fsdp1"])
def test_trainer_fsdp_arguments_are_what_training_arguments_reads(options):
    from accelerate.parallelism_config import ParallelismConfig
    from transformers import TrainingArguments

    setup = resolve_setup("full", **options)
    arguments = json.loads(json.dumps(trainer_fsdp_arguments(setup, SPEC)))
    mesh = arguments.pop("parallelism_config", None)
    if mesh is not None:
        arguments["parallelism_config"] = ParallelismConfig(**mesh)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **arguments)
    plugin = args.fsdp_plugin_args
    if setup.strategy.value == "fsdp1":
        assert plugin["fsdp_version"] == 1 and str(plugin["reshard_after_forward"]).upper() == "FULL_SHARD"
        assert plugin["use_orig_params"] == "true" or plugin["use_orig_params"] is True
        assert str(plugin["backward_prefetch"]).upper() == "NO_PREFETCH"
        assert args.gradient_checkpointing is setup.gradient_checkpointing
        return
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin.get("cpu_offload", False) is (setup.offload.value == "params")
    assert plugin["activation_checkpointing"] is setup.gradient_checkpointing
    if mesh is not None:
        assert (args.parallelism_config.dp_replicate_size, args.parallelism_config.dp_shard_size) == (2, 8)


@pytest.mark.parametrize("family", sorted(DECODER_LAYER_CLASS))
def test_decoder_layer_class_exists_in_transformers(family):
    module = family.replace("_text", "")
    modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    assert hasattr(modeling, DECODER_LAYER_CLASS[family])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "fsdp", "--emit", "deepspeed"], "--emit deepspeed needs"),
        (["--strategy", "zero3", "--emit", "fsdp"], "--emit fsdp needs"),
        (["--strategy", "ddp", "--emit", "fsdp"], "--emit fsdp needs"),
        (["--strategy", "device-map", "--emit", "accelerate"], "one process"),
        (["--strategy", "zero2", "--emit", "accelerate"], "--emit-to"),
        (["--strategy", "fsdp", "--emit", "yaml"], "choose one of"),
        (["--strategy", "fsdp", "--emit-to", "x.json"], "--emit-to needs --emit"),
    ],
)
def test_emit_that_does_not_match_the_strategy_is_refused(args, message, capsys):
    code = main(["estimate", "--model", "8b", "--method", "full", "--gpus", "8", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_emit_to_writes_files_and_still_prints_the_estimate(tmp_path, capsys):
    target = tmp_path / "launch" / "accelerate.yaml"
    target.parent.mkdir()  # --emit-to creates no folders (tests/test_bad_input.py)
    code = main(["estimate", "--model", "8b", "--method", "full", "--gpus", "8", "--strategy", "zero3",
                 "--emit", "accelerate", "--emit-to", str(target), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["setup"]["strategy"] == "zero3"
    companion = tmp_path / "launch" / "accelerate.deepspeed.json"
    assert target.exists() and json.loads(companion.read_text())["zero_optimization"]["stage"] == 3
    assert str(companion) in target.read_text() and "wrote" in captured.err
    code = main(["estimate", "--model", "8b", "--method", "full", "--gpus", "8", "--strategy", "fsdp",
                 "--emit", "fsdp"])
    printed = json.loads(capsys.readouterr().out)  # no --emit-to: the config alone goes to stdout
    assert code == 0 and printed["fsdp"] is True and printed["fsdp_config"]["fsdp_version"] == 2
