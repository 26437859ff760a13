"""--alloc-conf, the environment's PYTORCH_ALLOC_CONF, the expandable-segments suggestion and `check --exact`."""

import json

import pytest

from vramplan.cli.app import main

MODEL = ["--model", "meta-llama/Llama-3.1-8B", "--method", "lora", "--batch-size", "4", "--seq-len", "4096"]


@pytest.fixture(autouse=True)
def no_inherited_alloc_conf(monkeypatch):
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _estimate(capsys, *extra):
    code, out, err = run(["estimate", *MODEL, *extra, "--format", "json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_expandable_segments_lower_the_reserve_and_say_so(capsys):
    default = _estimate(capsys)
    expandable = _estimate(capsys, "--alloc-conf", "expandable_segments:True")
    assert expandable["peak_allocated_bytes"] == default["peak_allocated_bytes"]
    assert default["peak_allocated_bytes"] < expandable["peak_reserved_bytes"] < default["peak_reserved_bytes"]
    assert any("expandable_segments:True" in line for line in expandable["assumptions"])
    assert any("torch defaults" in line for line in default["assumptions"])


def test_the_job_inherits_the_shells_setting(capsys, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    inherited = _estimate(capsys)
    assert inherited["peak_reserved_bytes"] == _estimate(capsys, "--alloc-conf", "expandable_segments:True")[
        "peak_reserved_bytes"]
    assert any("$PYTORCH_CUDA_ALLOC_CONF" in line for line in inherited["assumptions"])
    overridden = _estimate(capsys, "--alloc-conf", "max_split_size_mb:128")
    assert not any("$PYTORCH_CUDA_ALLOC_CONF" in line for line in overridden["assumptions"])


@pytest.mark.parametrize("conf", ["expandable_segments:yes", "max_split_size_mb:4", "nonsense",
                                  "backend:cudaMallocAsync"])
@pytest.mark.parametrize("command", ["estimate", "check", "plan"])
def test_bad_settings_are_one_line_exit_2(capsys, conf, command):
    extra = ["--gpu", "h100-sxm5-80gb"] if command == "check" else []
    code, out, err = run([command, *MODEL, "--alloc-conf", conf, *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--alloc-conf" in err


def test_check_suggests_expandable_segments_when_they_make_it_fit(capsys):
    """Between the two reserves: only the allocator setting changes the verdict, and its command says so."""
    default = _estimate(capsys)["device_bytes"]
    expandable = _estimate(capsys, "--alloc-conf", "expandable_segments:True")["device_bytes"]
    size = f"{(default + expandable) / 2 / 2**30:.3f}GiB"
    code, out, err = run(["check", *MODEL, "--gpu", size, "--headroom", "0", "--format", "json"], capsys)
    assert code == 3, err
    verdict = json.loads(out)
    chosen = [s for s in verdict["suggestions"] if s["changes"].get("alloc_conf") == "expandable_segments:True"]
    assert chosen and chosen[0]["fits"] and chosen[0]["needed_bytes"] == expandable
    command = next(c for c in verdict["commands"] if "--alloc-conf expandable_segments:True" in c)
    assert run(command.split()[1:], capsys)[0] == 0


def test_check_exact_replays_the_traced_step(capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    tiny = ["--model", "validation/configs/tiny-llama.json", "--method", "lora", "--batch-size", "2", "--seq-len",
            "512"]
    code, out, err = run(["check", *tiny, "--gpu", "24GB", "--exact", "--format", "json"], capsys)
    assert code == 0, err
    verdict = json.loads(out)
    assert "replay" in verdict["basis"]
    closed = json.loads(run(["check", *tiny, "--gpu", "24GB", "--format", "json"], capsys)[1])
    assert verdict["gpus"][0]["needed_bytes"] <= closed["gpus"][0]["needed_bytes"]  # the rule is an upper end
    code, out, err = run(["check", *tiny, "--gpu", "1GiB", "--exact"], capsys)
    assert code == 3 and "DOES NOT FIT" in out


def test_an_unmodelled_setting_in_the_shell_is_named(capsys, monkeypatch):
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync")
    code, out, err = run(["check", *MODEL, "--gpu", "h100-sxm5-80gb"], capsys)
    assert code == 2 and "$PYTORCH_ALLOC_CONF" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["estimate", *MODEL, "--alloc-conf", "expandable_segments:False"], capsys)
    assert code == 0
