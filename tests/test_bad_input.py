"""Bad input found by fuzzing the CLI: each is one `vramplan: error:` line and exit 2, never a traceback, an
"internal error" (exit 1) or a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramplan.cli.app import main
from vramplan.models.catalog import load_catalog

LLAMA_8B = load_catalog()["llama-3.1-8b"].full_config
REPO = Path(__file__).parents[1]
H100 = REPO / "vramplan" / "hardware" / "catalog_data" / "gpus" / "h100-sxm5-80gb.toml"


def _usage_error(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI in-process; assert exit 2 and one stderr line naming each fragment; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("vramplan: error:") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _config(tmp_path: Path, **fields) -> str:
    config = {**LLAMA_8B, **fields}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))
    return str(path)


# --- 1. DDP's gradient buckets: computed, never looped over -----------------------------------------------------


def test_absurd_vocab_with_ddp_does_not_hang(tmp_path):
    config = _config(tmp_path, vocab_size=1e12)
    run = subprocess.run(
        [sys.executable, "-m", "vramplan", "estimate", "--model", config, "--method", "full", "--gpus", "2",
         "--strategy", "ddp"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "vocab_size" in run.stderr, run.stderr


def test_ddp_buckets_are_computed_not_iterated():
    from vramplan.estimate.dtypes import tensor_bytes
    from vramplan.estimate.strategies.ddp import DDP_BUCKET_BYTES, ddp_bucket_bytes

    for gradients in (0, 1, DDP_BUCKET_BYTES, 3 * DDP_BUCKET_BYTES + 7):
        buckets = -(-gradients // DDP_BUCKET_BYTES)
        looped = sum(tensor_bytes(min(DDP_BUCKET_BYTES, gradients - i * DDP_BUCKET_BYTES)) for i in range(buckets))
        assert ddp_bucket_bytes(gradients) == looped
    started = time.perf_counter()
    assert ddp_bucket_bytes(10**18) >= 10**18
    assert time.perf_counter() - started < 1.0


# --- 2. config.json fields, checked against bounds and each other -------------------------------------------------


@pytest.mark.parametrize(
    "fields, named",
    [
        pytest.param({"num_attention_heads": 0, "head_dim": ...}, "num_attention_heads", id="zero-heads"),
        pytest.param({"num_key_value_heads": 1e12}, "num_key_value_heads", id="absurd-kv-heads"),
        pytest.param({"num_key_value_heads": 3}, "num_key_value_heads", id="kv-heads-not-a-divisor"),
        pytest.param({"num_key_value_heads": 64}, "num_key_value_heads", id="more-kv-heads-than-heads"),
        pytest.param({"vocab_size": 1e12}, "vocab_size", id="absurd-vocab"),
        pytest.param({"vocab_size": 2**30}, "vocab_size", id="vocab-over-bound"),
        pytest.param({"hidden_size": 4096.5}, "hidden_size", id="float-hidden"),
        pytest.param({"hidden_size": "4096"}, "hidden_size", id="string-hidden"),
        pytest.param({"num_hidden_layers": -3}, "num_hidden_layers", id="negative-layers"),
        pytest.param({"vocab_size": True}, "vocab_size", id="bool-vocab"),
        pytest.param({"hidden_size": 4100, "head_dim": ...}, "hidden_size", id="hidden-not-divisible-by-heads"),
        pytest.param({"tie_word_embeddings": "false"}, "tie_word_embeddings", id="string-bool"),
        pytest.param({"final_logit_softcapping": float("inf")}, "final_logit_softcapping", id="infinite-softcap"),
    ],
)
def test_bad_config_field_is_one_line_naming_field_and_file(tmp_path, capsys, fields, named):
    config = _config(tmp_path, **fields)
    _usage_error(capsys, ["estimate", "--model", config], named, config)


def test_mixtral_top_k_above_expert_count(tmp_path, capsys):
    mixtral = load_catalog()["mixtral-8x7b"].full_config
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**mixtral, "num_experts_per_tok": 9}))
    _usage_error(capsys, ["estimate", "--model", str(path)], "num_experts_per_tok")


def test_every_catalog_model_stays_within_the_bounds():
    for record in load_catalog().values():
        assert record.spec.total_params > 0


# --- 3. deeply nested JSON / YAML ---------------------------------------------------------------------------------


def test_deeply_nested_config_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _usage_error(capsys, ["estimate", "--model", str(path)], str(path), "nested too deep")


def test_moderately_nested_config_json_is_bounded(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA_8B, "x": json.loads("[" * 500 + "]" * 500)}))
    _usage_error(capsys, ["estimate", "--model", str(path)], str(path), "nested more than")


@pytest.mark.parametrize("name, text", [
    pytest.param("deep.yaml", "base_model: x\nadapter: lora\nd: " + "[" * 100_000 + "]" * 100_000 + "\n", id="yaml"),
    pytest.param("deep.yaml", "base_model: x\nadapter: lora\nd:\n" + "".join(f"{' ' * i}- \n" for i in range(3000)),
                 id="yaml-block"),
    pytest.param("deep.json", '{"output_dir": "o", "d": ' + "[" * 100_000 + "]" * 100_000 + "}", id="json"),
])
def test_deeply_nested_training_config(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    _usage_error(capsys, ["estimate", "--from", str(path)], str(path))


def test_alias_bombs_and_self_references_are_refused():
    from vramplan.errors import UsageError
    from vramplan.models.structure import check_structure

    looped: list = []
    looped.append(looped)
    with pytest.raises(UsageError, match="contains itself"):
        check_structure({"a": looped}, "f.yaml")
    bomb: list = [0] * 10
    for _ in range(8):
        bomb = [bomb] * 10  # what a YAML "billion laughs" file loads to: shared lists, 10^9 values once expanded
    with pytest.raises(UsageError, match="once YAML aliases are expanded"):
        check_structure({"a": bomb}, "f.yaml")


# --- 4. wrong value types in --from files -------------------------------------------------------------------------

AXOLOTL = "base_model: meta-llama/Llama-3.1-8B\nadapter: qlora\nload_in_4bit: true\n"
TRL = '{"output_dir": "o", "model_name_or_path": "meta-llama/Llama-3.1-8B", '
TORCHTUNE = "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n  lora_rank: 8\n"
DEEPSPEED = '{"zero_optimization": {"stage": 2}, '


@pytest.mark.parametrize(
    "name, text, key",
    [
        pytest.param("a.yaml", AXOLOTL + "micro_batch_size: abc\n", "micro_batch_size", id="axolotl-batch-text"),
        pytest.param("a.yaml", AXOLOTL + "micro_batch_size: .inf\n", "micro_batch_size", id="axolotl-batch-inf"),
        pytest.param("a.yaml", AXOLOTL + "sequence_len: 2.5\n", "sequence_len", id="axolotl-seq-fraction"),
        pytest.param("a.yaml", AXOLOTL + "bnb_config_kwargs: -1\n", "bnb_config_kwargs", id="axolotl-kwargs-int"),
        pytest.param("a.yaml", AXOLOTL + "fsdp: -1\n", "fsdp", id="axolotl-fsdp-int"),
        pytest.param("a.yaml", AXOLOTL + "fsdp_config: 3\n", "fsdp_config", id="axolotl-fsdp-config-int"),
        pytest.param("a.yaml", AXOLOTL + "lora_dropout: nope\n", "lora_dropout", id="axolotl-dropout-text"),
        pytest.param("a.yaml", AXOLOTL + "plugins: 5\n", "plugins", id="axolotl-plugins-int"),
        pytest.param("a.yaml", "base_model: true\nadapter: lora\n", "base_model", id="axolotl-model-bool"),
        pytest.param("l.yaml", "model_name_or_path: m\nstage: sft\nper_device_train_batch_size: abc\n",
                     "per_device_train_batch_size", id="llama-factory-batch-text"),
        pytest.param("l.yaml", "model_name_or_path: m\nstage: sft\nlora_rank: 1e400\n", "lora_rank",
                     id="llama-factory-rank-inf"),
        pytest.param("t.json", TRL + '"model_init_kwargs": 5}', "model_init_kwargs", id="trl-kwargs-int"),
        pytest.param("t.json", TRL + '"fsdp": -1}', "fsdp", id="trl-fsdp-int"),
        pytest.param("t.json", TRL + '"gradient_checkpointing_kwargs": [1]}', "gradient_checkpointing_kwargs",
                     id="trl-gc-kwargs-list"),
        pytest.param("t.json", TRL + '"use_peft": true, "lora_r": "x"}', "lora_r", id="trl-lora-r-text"),
        pytest.param("t.json", TRL + '"max_length": 1e300}', "max_length", id="trl-length-huge"),
        pytest.param("tt.yaml", TORCHTUNE + "tokenizer: 5\n", "tokenizer", id="torchtune-tokenizer-int"),
        pytest.param("tt.yaml", TORCHTUNE + "optimizer: [1]\n", "optimizer", id="torchtune-optimizer-list"),
        pytest.param("tt.yaml", TORCHTUNE.replace("lora_rank: 8", "lora_rank: abc"), "model.lora_rank",
                     id="torchtune-rank-text"),
        pytest.param("ds.json", DEEPSPEED + '"bf16": true}', "bf16", id="deepspeed-bf16-bool"),
        pytest.param("ds.json", DEEPSPEED + '"train_micro_batch_size_per_gpu": "abc"}',
                     "train_micro_batch_size_per_gpu", id="deepspeed-micro-text"),
        pytest.param("ds.json", DEEPSPEED + '"activation_checkpointing": 5}', "activation_checkpointing",
                     id="deepspeed-checkpointing-int"),
    ],
)
def test_wrong_value_type_in_from_file(tmp_path, capsys, name, text, key):
    path = tmp_path / name
    path.write_text(text)
    _usage_error(capsys, ["estimate", "--from", str(path), "--model", "llama-3.1-8b"], str(path), key)


def test_yaml_integer_too_long_to_read(tmp_path, capsys):
    path = tmp_path / "a.yaml"
    path.write_text(AXOLOTL + "micro_batch_size: " + "9" * 5000 + "\n")
    _usage_error(capsys, ["estimate", "--from", str(path)], str(path))


# --- 5. a --model value too long for the file system --------------------------------------------------------------


@pytest.mark.parametrize("model", ["a" * 300, "org/" + "a" * 300, "a" * 300 + "/config.json"])
def test_overlong_model_value(capsys, model):
    _usage_error(capsys, ["estimate", "--model", model], "--model")


# --- 6. user hardware catalogs ------------------------------------------------------------------------------------


def _user_catalog(tmp_path: Path, name: str, content: bytes | None) -> Path:
    folder = tmp_path / "catalog" / "gpus"
    folder.mkdir(parents=True)
    if content is None:
        (folder / name).mkdir()
    else:
        (folder / name).write_bytes(content)
    return tmp_path / "catalog"


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        pytest.param("bad.toml", b'id = "\xff\xfe"\n', "not UTF-8", id="not-utf8"),
        pytest.param("x.toml", None, "a folder", id="folder-named-toml"),
        pytest.param("h100-sxm5-80gb.toml", None, "bf16_dense_tflops", id="infinite-tflops"),
        pytest.param("h100-sxm5-80gb.toml", None, "bf16_dense_tflops", id="1e308-tflops"),
        pytest.param("h100-sxm5-80gb.toml", None, "memory_bytes", id="memory-as-float"),
        pytest.param("h100-sxm5-80gb.toml", None, "tdp_w", id="absurd-power"),
    ],
)
def test_bad_user_catalog_file(tmp_path, capsys, request, name, content, fragment):
    edits = {
        "infinite-tflops": ("bf16_dense_tflops = ", "bf16_dense_tflops = inf #"),
        "1e308-tflops": ("bf16_dense_tflops = ", "bf16_dense_tflops = 1e308 #"),
        "memory-as-float": ("memory_bytes = ", "memory_bytes = 8.5e10 #"),
        "absurd-power": ("tdp_w = ", "tdp_w = 1e9 #"),
    }
    edit = edits.get(request.node.callspec.id)
    if edit is not None:
        text = H100.read_text()
        assert edit[0] in text
        content = text.replace(edit[0], edit[1], 1).encode()
    catalog = _user_catalog(tmp_path, name, content)
    _usage_error(capsys, ["plan", "--model", "8b", "--catalog", str(catalog)], fragment, "gpus")


def test_deeply_nested_toml(tmp_path, capsys):
    catalog = _user_catalog(tmp_path, "deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    _usage_error(capsys, ["plan", "--model", "8b", "--catalog", str(catalog)], "deep.toml", "nested too deep")


# --- 7. --emit-to -------------------------------------------------------------------------------------------------

EMIT = ["estimate", "--model", "8b", "--method", "full", "--gpus", "2", "--strategy", "zero2", "--emit", "deepspeed",
        "--emit-to"]


def test_emit_to_a_folder(tmp_path, capsys):
    _usage_error(capsys, [*EMIT, str(tmp_path)], "a folder")


def test_emit_to_a_missing_folder_creates_nothing(tmp_path, capsys):
    target = tmp_path / "nonexistent" / "x" / "ds.json"
    _usage_error(capsys, [*EMIT, str(target)], "does not exist")
    assert not (tmp_path / "nonexistent").exists()


def test_emit_to_a_full_disk(tmp_path, monkeypatch, capsys):
    import errno
    import pathlib

    target = tmp_path / "ds.json"
    real_open = pathlib.Path.open

    def full_disk(self, mode="r", *args, **kwargs):
        if self == target and "w" in mode:  # a simulated full disk: never the real /dev/full, which a writer that
            raise OSError(errno.ENOSPC, "No space left on device")  # renames a temporary file would replace
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", full_disk)
    _usage_error(capsys, [*EMIT, str(target)], "cannot write", "No space left")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through permissions")
def test_emit_to_an_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _usage_error(capsys, [*EMIT, str(locked / "ds.json")], "cannot write")
    finally:
        locked.chmod(0o700)


def test_emit_to_a_file_still_works(tmp_path, capsys):
    target = tmp_path / "ds.json"
    assert main([*EMIT, str(target)]) == 0
    assert json.loads(target.read_text())["zero_optimization"]["stage"] == 2


# --- 8. YAML through libyaml's C loader ---------------------------------------------------------------------------


def test_yaml_is_read_with_the_c_loader(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML built without libyaml")

    class PurePythonLoader(yaml.SafeLoader):
        def __init__(self, *args, **kwargs):
            raise AssertionError("the pure-Python loader was used")

    monkeypatch.setattr(yaml, "SafeLoader", PurePythonLoader)
    from vramplan.importers import load_run_config

    path = tmp_path / "a.yaml"
    path.write_text(AXOLOTL + "datasets:\n" + "".join(f"  - path: org/d{i}\n    type: alpaca\n" for i in range(5000)))
    assert load_run_config(path).model == "meta-llama/Llama-3.1-8B"


# --- 9. the probe's record writer ---------------------------------------------------------------------------------


def test_probe_writer_finishes_short_writes_and_refuses_zero_writes(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from vramplan.measure import probe

    real_write = os.write
    path = tmp_path / "short.bin"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(probe.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
            probe.write_all(descriptor, b"0123456789abcdef\n")
        with monkeypatch.context() as patch:
            patch.setattr(probe.os, "write", lambda fd, data: 0)
            with pytest.raises(OSError, match="wrote nothing"):
                probe.write_all(descriptor, b"more")
    finally:
        os.close(descriptor)
    assert path.read_bytes() == b"0123456789abcdef\n"


# --- 10. Hub ids: huggingface_hub's own request, no raw socket ---------------------------------------------------


def test_uncached_hub_id_uses_huggingface_hub_not_a_socket(tmp_path, monkeypatch, capsys):
    import socket

    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_socket(*args, **kwargs):
        raise AssertionError("a raw socket bypasses HTTPS_PROXY")

    asked = {}

    def unreachable(url, timeout=None, **kwargs):
        asked["url"], asked["timeout"] = url, timeout
        raise ConnectionError("proxy refused the connection")

    def no_download(*args, **kwargs):
        raise AssertionError("hf_hub_download retries for a minute when the Hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    _usage_error(capsys, ["estimate", "--model", "someorg/not-cached"], "someorg/not-cached", "could not be reached")
    assert asked["url"].endswith("config.json") and 0 < asked["timeout"] <= 10
