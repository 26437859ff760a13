"""Probes: the record a probe appends, safe appends, and the GPU matrix driver in its CPU mode."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vramplan.measure.probe import ProbeRecord, append_jsonl, measurement_file, run_probe  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402
from vramplan.validate.measured import load_probe_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "validation" / "configs" / "tiny-llama.json")
pytestmark = pytest.mark.trace


@pytest.fixture(scope="module")
def cpu_record():
    return run_probe(resolve_model(TINY), resolve_setup("qlora", batch_size=1, seq_len=128), device="cpu",
                     options={"batch_size": 1, "seq_len": 128})


def test_cpu_probe_record(cpu_record):
    assert cpu_record.status == "ok" and cpu_record.gpu == "cpu"
    assert cpu_record.peak_phase in cpu_record.phase_peaks
    assert cpu_record.max_memory_allocated == max(cpu_record.phase_peaks.values())
    assert abs(cpu_record.max_memory_allocated - cpu_record.estimate["peak_allocated_bytes"]) \
        <= 0.05 * cpu_record.max_memory_allocated
    assert cpu_record.setup["method"] == "qlora" and "torch" in cpu_record.versions


def test_append_survives_a_line_cut_by_a_crash(cpu_record, tmp_path):
    path = measurement_file(tmp_path, "NVIDIA H100 80GB HBM3")
    assert path.name.startswith("nvidia-h100-80gb-hbm3-") and path.suffix == ".jsonl"
    append_jsonl(path, cpu_record)
    with path.open("a") as handle:
        handle.write('{"id": "cut-off-mid-wri')  # what a crash mid-write leaves
    append_jsonl(path, cpu_record)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert ProbeRecord.model_validate_json(lines[0]) == cpu_record == ProbeRecord.model_validate_json(lines[2])
    corrupt = []
    peaks = load_probe_files(tmp_path, corrupt.append)
    assert corrupt == [f"{path}:2"]
    assert peaks == []  # CPU probes check the driver; they are not GPU measurements


def test_matrix_script_cpu_mode(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_probe_matrix", ROOT / "scripts" / "gpu_probe_matrix.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert len(script.matrix(script.GPU_MODELS, cpu=False)) >= 24
    monkeypatch.setattr(sys, "argv", ["gpu_probe_matrix.py", "--cpu", "--limit", "2", "--steps", "1",
                                      "--budget", "300", "--out", str(tmp_path)])
    assert script.main() == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 2
    lines = Path(summary["file"]).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


@pytest.mark.gpu
def test_cuda_probe_records_allocator_and_nvml_peaks():
    record = run_probe(resolve_model("qwen2.5-0.5b"), resolve_setup("lora", batch_size=1, seq_len=512), steps=2,
                       device="cuda")
    assert record.status == "ok" and record.max_memory_reserved >= record.max_memory_allocated
    assert record.nvml_peak_used >= record.max_memory_reserved and record.cuda_context_bytes > 0
