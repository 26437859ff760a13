import json
import os
import subprocess
import sys

import pytest

from vramplan.cli.app import main


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_shows_components_peak_phase_and_assumptions(capsys):
    code, out, err = run(["estimate", "--model", "70b", "--method", "qlora"], capsys)
    assert code == 0, err
    for text in ("weights", "activations", "logits / loss", "peak allocated", "peak in", "GiB", "trainable of",
                 "size alias 70b -> llama-3.1-70b", "NF4", "double quantization on"):
        assert text in out


def test_json_carries_integer_bytes_and_setup(capsys):
    code, out, _ = run(["estimate", "--model", "meta-llama/Llama-3.1-8B", "--method", "lora", "--batch-size", "4",
                        "--seq-len", "4096", "--gradient-checkpointing", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_bytes"):
        assert isinstance(data[key], int)
    assert data["peak_allocated_bytes"] == sum(data["components"].values())
    assert data["setup"]["batch_size"] == 4 and data["setup"]["seq_len"] == 4096
    assert data["trainable_params"] == 41_943_040 and data["peak_phase"] in ("forward", "backward", "optimizer")


def test_config_json_path(tmp_path, capsys):
    from vramplan.models.catalog import load_catalog

    (tmp_path / "config.json").write_text(json.dumps(load_catalog()["qwen2.5-0.5b"].config))
    code, out, _ = run(["estimate", "--model", str(tmp_path / "config.json"), "--method", "full",
                        "--precision", "bf16-mixed", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["total_params"] == 494_032_768


@pytest.mark.parametrize(
    "args, fragment",
    [
        pytest.param(["--model", "nope-1b", "--method", "lora"], "not a catalog model", id="unknown-model"),
        pytest.param(["--model", "8b", "--method", "sft"], "unknown --method", id="unknown-method"),
        pytest.param(["--model", "8b", "--optimizer", "lion"], "unknown --optimizer", id="unknown-optimizer"),
        pytest.param(["--model", "8b", "--batch-size", "0"], "--batch-size", id="zero-batch"),
        pytest.param(["--model", "8b", "--seq-len", "-1"], "--seq-len", id="negative-seq"),
        pytest.param(["--model", "8b", "--method", "full", "--lora-rank", "8"], "--method lora", id="lora-on-full"),
        pytest.param(["--model", "8b", "--gpus", "2"], "--strategy", id="multi-gpu-without-strategy"),
        pytest.param(["--model", "671b", "--lora-targets", "all-linear"], "LoRA on deepseek_v3 experts is not modelled",
                     id="moe-lora-on-experts"),
        pytest.param(["--model", "gpt-oss-20b"], "eager attention", id="gpt-oss"),
        pytest.param(["--model", "gemma-2-9b"], "eager attention", id="gemma2"),
        pytest.param(["--model", "8b", "--lora-targets", "w1"], "not in this model", id="bad-target"),
        pytest.param(["--model", "8b", "--format", "xml"], "--format", id="bad-format"),
        pytest.param(["--model", "8b", "--batch-size", "two"], "--batch-size", id="non-integer"),
        pytest.param(["--method", "lora"], "--model", id="missing-model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    code, out, err = run(["estimate", *args], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("vramplan: error:") and fragment in err


def test_malformed_config_json_exit_2(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2")
    code, _, err = run(["estimate", "--model", str(tmp_path)], capsys)
    assert code == 2 and "not a readable JSON object" in err


def test_console_script_and_module_entry_points():
    completed = subprocess.run([sys.executable, "-m", "vramplan", "estimate", "--model", "8b", "--format", "json"],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["model"]["id"] == "llama-3.1-8b"


def test_estimate_path_imports_no_torch_transformers_or_pandas():
    code = (
        "import sys; from vramplan.cli.app import main; main(['estimate','--model','70b','--method','qlora',"
        "'--format','json']); heavy = [m for m in ('torch','transformers','pandas') if m in sys.modules]; "
        "sys.stderr.write(','.join(heavy))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert completed.returncode == 0 and completed.stderr == ""


def test_models_command_lists_catalog(capsys):
    code, out, _ = run(["models", "--format", "json"], capsys)
    document = json.loads(out)
    assert code == 0 and document["kind"] == "models" and len(document["items"]) >= 40


def test_output_piped_into_a_closed_reader_exits_quietly():
    script = f"{sys.executable} -m vramplan estimate --model 8b --method lora | head -n 1"
    completed = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True,
                               check=False, env={**os.environ, "COLUMNS": "120"})
    assert completed.returncode == 0 and "Traceback" not in completed.stderr


def test_api_call_survives_importing_the_estimate_package():
    import vramplan
    import vramplan.estimate.components.weights  # noqa: F401 - binds the package to vramplan.estimate

    result = vramplan.estimate("8b", "qlora", batch_size=2)
    assert result.setup.batch_size == 2 and result.peak_allocated_bytes > 0


def test_moe_lora_without_targets_adapts_the_attention_and_says_so(capsys):
    code, out, err = run(["estimate", "--model", "671b", "--method", "qlora", "--gpus", "8", "--strategy", "fsdp",
                          "--format", "json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["setup"]["lora"]["targets"] == ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    assert any("attention projections" in line for line in data["assumptions"])
    assert any("not 4-bit" in line for line in data["assumptions"])
