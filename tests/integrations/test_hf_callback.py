"""The Trainer callback: pre-flight at train begin (recorded NVML answers), the measured peak on a GPU."""

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from vramplan.check.nvml import RecordedNvml  # noqa: E402
from vramplan.errors import CannotCheckError  # noqa: E402
from vramplan.integrations.hf import PreflightCallback, PreflightFailed  # noqa: E402

NVML = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"
CONTROL = SimpleNamespace()


def test_raises_with_the_verdict_when_the_job_will_not_fit(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    callback = PreflightCallback("8b", "lora", batch_size=2, nvml=RecordedNvml.from_file(NVML / "rtx4090-busy.json"))
    with pytest.raises(PreflightFailed, match="short by") as failed:
        callback.on_train_begin(None, SimpleNamespace(global_step=0), CONTROL)
    assert not failed.value.verdict.fits and failed.value.exit_code == 3


def test_passes_and_keeps_the_verdict_under_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    callback = PreflightCallback("70b", "qlora", nvml=RecordedNvml.from_file(NVML / "h100x8-idle.json"))
    assert callback.on_train_begin(None, SimpleNamespace(global_step=0), CONTROL) is CONTROL
    assert callback.verdict.fits and [gpu.index for gpu in callback.verdict.gpus] == [5]


def test_no_driver_logs_unless_strict():
    recording = RecordedNvml.from_file(NVML / "no-driver.json")
    PreflightCallback("8b", "qlora", nvml=recording).on_train_begin(None, SimpleNamespace(global_step=0), CONTROL)
    with pytest.raises(CannotCheckError):
        PreflightCallback("8b", "qlora", nvml=recording, strict=True).on_train_begin(
            None, SimpleNamespace(global_step=0), CONTROL)


def test_no_measurement_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the gpu test covers it")
    callback = PreflightCallback("8b", "qlora", record_after_steps=1)
    callback.on_step_end(None, SimpleNamespace(global_step=1), CONTROL)
    assert callback.measured is None


@pytest.mark.gpu
def test_records_the_measured_peak_on_a_gpu():
    callback = PreflightCallback("8b", "qlora", record_after_steps=1)
    torch.ones(1024, device="cuda")
    callback.on_step_end(None, SimpleNamespace(global_step=1), CONTROL)
    assert callback.measured["max_memory_allocated"] >= 4096
