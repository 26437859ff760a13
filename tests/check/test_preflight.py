"""Pre-flight checks against NVML answers recorded from machines (tests/fixtures/nvml), and catalog GPUs."""

import json
from pathlib import Path

import pytest

from vramplan.api import estimate, preflight
from vramplan.check.nvml import RecordedNvml, read_gpus, visible_indices
from vramplan.check.preflight import check_local
from vramplan.cli.app import main
from vramplan.errors import CannotCheckError, UsageError
from vramplan.request import RunRequest
from vramplan.units import DEFAULT_HEADROOM

NVML = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"


def recording(name):
    return RecordedNvml.from_file(NVML / f"{name}.json")


def test_reads_every_gpu_with_processes():
    local = read_gpus(recording("a6000x2-mixed"))
    assert local.driver_version == "535.183.01" and local.cuda_version == "12.2"
    assert [gpu.total_bytes for gpu in local.gpus] == [49140 * 2**20] * 2
    assert local.gpus[0].processes[0].used_bytes == 40960 * 2**20


def test_no_driver_is_cannot_check():
    with pytest.raises(CannotCheckError, match="no NVIDIA driver"):
        read_gpus(recording("no-driver"))


def test_cuda_visible_devices_by_index_and_uuid():
    local = read_gpus(recording("h100x8-idle"))
    assert visible_indices(local, {}) == list(range(8))
    assert visible_indices(local, {"CUDA_VISIBLE_DEVICES": "3,1"}) == [3, 1]
    assert visible_indices(local, {"CUDA_VISIBLE_DEVICES": "GPU-00000005"}) == [5]
    assert visible_indices(local, {"CUDA_VISIBLE_DEVICES": "2,9,4"}) == [2]  # CUDA stops at an invalid entry
    assert visible_indices(local, {"CUDA_VISIBLE_DEVICES": ""}) == []


def test_fits_on_an_idle_h100_and_margin_is_free_minus_need():
    job = estimate("70b", "qlora")
    verdict = check_local(job, nvml=recording("h100x8-idle"), environ={"CUDA_VISIBLE_DEVICES": "0"})
    gpu = verdict.gpus[0]
    assert verdict.fits and verdict.exit_code == 0
    assert gpu.usable_bytes == int(gpu.free_bytes - gpu.total_bytes * DEFAULT_HEADROOM)  # 10% kept free by default
    assert gpu.margin_bytes == gpu.usable_bytes - job.device_bytes


def test_busy_gpu_does_not_fit_and_suggests():
    job = estimate("8b", "lora", batch_size=2, seq_len=2048)
    request = RunRequest.of("8b", "lora", batch_size=2, seq_len=2048)
    verdict = check_local(job, nvml=recording("rtx4090-busy"), environ={}, request=request)
    assert not verdict.fits and verdict.exit_code == 3
    assert verdict.gpus[0].other_processes_bytes == 9216 * 2**20
    assert verdict.suggestions and verdict.suggestions[0].saved_bytes > 0


def test_each_selected_gpu_is_checked():
    job = estimate("8b", "qlora", gpus=2, strategy="ddp")
    verdict = check_local(job, devices=[0, 1], nvml=recording("a6000x2-mixed"), environ={})
    assert [gpu.fits for gpu in verdict.gpus] == [False, True] and not verdict.fits
    with pytest.raises(UsageError, match="--devices 2"):
        check_local(job, devices=[2], nvml=recording("a6000x2-mixed"), environ={})


def test_the_jobs_ranks_take_the_first_visible_gpus():
    """--gpus is the job's GPUs per node everywhere: a 1-GPU job is checked on the first visible GPU only."""
    one = check_local(estimate("8b", "qlora"), nvml=recording("h100x8-idle"), environ={})
    assert [gpu.index for gpu in one.gpus] == [0] and any("check with --gpus 8" in note for note in one.notes)
    eight = check_local(estimate("8b", "qlora", gpus=8, strategy="ddp"), nvml=recording("h100x8-idle"), environ={})
    assert [gpu.index for gpu in eight.gpus] == list(range(8)) and eight.fits
    short = check_local(estimate("8b", "qlora", gpus=4, strategy="ddp"), nvml=recording("a6000x2-mixed"),
                        environ={})
    assert not short.fits and short.exit_code == 3 and "only 2 are visible" in short.notes[0]


def test_torchrun_rank_checks_its_own_device():
    job = estimate("8b", "qlora")
    verdict = check_local(job, nvml=recording("a6000x2-mixed"), environ={"LOCAL_RANK": "1"})
    assert [gpu.index for gpu in verdict.gpus] == [1] and verdict.fits


def test_headroom_is_taken_from_free_memory():
    job = estimate("8b", "qlora")
    plain = check_local(job, headroom=0.0, nvml=recording("rtx4090-busy"), environ={})
    strict = check_local(job, headroom=0.10, nvml=recording("rtx4090-busy"), environ={})
    assert plain.gpus[0].usable_bytes - strict.gpus[0].usable_bytes == pytest.approx(24564 * 2**20 * 0.10, abs=1)
    assert strict.gpus[0].margin_bytes < plain.gpus[0].margin_bytes


def test_api_preflight_against_catalog_gpu():
    verdict = preflight("8b", "qlora", gpu="rtx-4090")
    assert verdict.source == "catalog" and verdict.fits


def test_cli_exit_codes(capsys):
    args = ["check", "--model", "8b", "--method", "lora", "--batch-size", "2", "--nvml-recording"]
    assert main(args + [str(NVML / "rtx4090-busy.json")]) == 3
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert main(["check", "--model", "8b", "--method", "qlora", "--nvml-recording",
                 str(NVML / "h100x8-idle.json"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 0 and len(data["gpus"]) == 1 and data["schema"] == 1 and data["kind"] == "check"
    assert main(["check", "--model", "8b", "--nvml-recording", str(NVML / "no-driver.json")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no NVIDIA driver" in err
    assert main(["check", "--model", "8b", "--gpus", "x", "--nvml-recording", str(NVML / "h100x8-idle.json")]) == 2
