"""Edge cases found in review: each one used to crash (exit 1) or answer wrongly."""

import json
import os
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.check.nvml import RecordedNvml
from vramplan.check.preflight import check_local
from vramplan.cli.app import main
from vramplan.errors import UsageError
from vramplan.units import parse_count

NVML = Path(__file__).resolve().parent / "fixtures" / "nvml"


@pytest.mark.parametrize("text", ["0", "-5", "-5M", "infk", "nan", "lots"])
def test_counts_must_be_positive_and_finite(text):
    with pytest.raises(UsageError, match="positive count"):
        parse_count(text, "--tokens")


def test_counts_accept_suffixes_exponents_and_integers():
    assert parse_count("50M", "--tokens") == 50_000_000
    assert parse_count("1e9", "--tokens") == 10**9
    assert parse_count(50_000_000, "tokens") == 50_000_000


def test_check_rejects_negative_and_empty_gpu_lists(capsys):
    recording = str(NVML / "a6000x2-mixed.json")
    assert main(["check", "--model", "8b", "--nvml-recording", recording, "--gpus", "-1"]) == 2
    assert main(["check", "--model", "8b", "--nvml-recording", recording, "--gpus", ""]) == 2


def test_memory_this_process_holds_counts_as_free_for_the_job():
    recording = json.loads((NVML / "rtx4090-busy.json").read_text())
    recording["devices"][0]["processes"].append({"pid": os.getpid(), "usedGpuMemory": 4 * 2**30})
    job = estimate("8b", "qlora")
    verdict = check_local(job, nvml=RecordedNvml(recording), environ={})
    gpu = verdict.gpus[0]
    assert gpu.free_bytes == recording["devices"][0]["memory"]["free"] + 4 * 2**30
    assert gpu.other_processes_bytes == 9216 * 2**20 and any("this process" in note for note in verdict.notes)


def test_report_when_no_option_runs_every_job(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    jobs = tmp_path / "jobs.toml"
    # 405B full fine-tuning at 8 x 131,072 tokens per GPU fits no layout of any option (the planner now trades
    # checkpointing and nodes for memory, so the plain 405B full job runs on several nodes)
    jobs.write_text('[[job]]\nname = "huge"\nmodel = "405b"\nmethod = "full"\n'
                    'options = { batch_size = 8, seq_len = 131072 }\n'
                    '[[job]]\nname = "small"\nmodel = "8b"\nmethod = "lora"\ntokens = 50000000\n')
    assert main(["report", str(jobs), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "no machine in the catalog that can be bought runs every job" in text
    assert "'huge' fits nothing in the catalog" in text


def test_report_names_the_job_with_bad_options(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nname = "typo"\nmodel = "8b"\nmethod = "lora"\noptions = { batchsize = 4 }\n')
    assert main(["report", str(jobs), "--out", str(tmp_path / "out")]) == 2
    assert "job 'typo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_validate_measurements_folder_must_exist(tmp_path, capsys):
    assert main(["validate", "--subset", "none", "--measurements", str(tmp_path / "missing")]) == 2


def test_probe_on_cuda_without_cuda_cannot_check(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["probe", "--model", str(Path(__file__).resolve().parents[1] / "validation" / "configs" /
                                         "tiny-llama.json"), "--device", "cuda"]) == 4
