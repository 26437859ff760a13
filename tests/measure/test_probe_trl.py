"""TRL probes: TRL's own DPO, KTO and GRPO trainers run for real on a tiny config, one record per probe."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("datasets")

from vramplan.errors import NotModelledError  # noqa: E402
from vramplan.measure.probe import append_jsonl, measurement_file, run_probe  # noqa: E402
from vramplan.measure import probe_trl  # noqa: E402
from vramplan.measure.probe_trl import (  # noqa: E402
    TrlProbeRecord,
    run_trl_probe,
    synthetic_dataset,
    synthetic_tokenizer,
)
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "validation" / "configs" / "tiny-llama.json")
pytestmark = pytest.mark.trace

CASES = [
    pytest.param({"objective": "dpo", "batch_size": 2, "seq_len": 24, "prompt_len": 8},
                 {"seq_len": 24, "prompt_len": 8, "precompute_ref": False}, id="dpo"),
    pytest.param({"objective": "kto", "batch_size": 2, "seq_len": 24, "prompt_len": 8},
                 {"seq_len": 24, "prompt_len": 8, "precompute_ref": False}, id="kto"),
    pytest.param({"objective": "orpo", "batch_size": 2, "seq_len": 24}, {"seq_len": 24}, id="orpo"),
    pytest.param({"objective": "grpo", "batch_size": 2, "num_generations": 2, "prompt_len": 4, "completion_len": 4,
                  "beta": 0.04},
                 {"prompt_len": 4, "completion_len": 4, "num_generations": 2, "steps_per_generation": 1,
                  "beta": 0.04, "generation": "transformers"}, id="grpo"),
]


@pytest.fixture
def one_thread():
    """Tiny steps are latency-bound: with a second intra-op thread, every small matmul waits for a busy core on a
    shared machine (seconds per probe); one thread keeps the three probes to a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("options", "settings"), CASES)
def test_cpu_trl_probe_writes_its_objective(options, settings, tmp_path, one_thread):
    setup = resolve_setup("lora", **options)
    record = run_trl_probe(resolve_model(TINY), setup, steps=1, device="cpu", options=options)
    assert record.status == "ok" and record.gpu == "cpu" and record.device == "cpu"
    assert record.objective == options["objective"] and record.objective_settings == settings
    assert record.id.startswith(f"tiny-llama-{options['objective']}-lora-b{options['batch_size']}")
    assert record.max_memory_allocated is None and record.max_memory_reserved is None and record.phase_peaks == {}
    assert record.step_seconds > 0 and record.estimate["peak_allocated_bytes"] > 0
    assert record.options == options and "trl" in record.versions
    path = measurement_file(tmp_path, record.gpu)
    append_jsonl(path, record)
    assert TrlProbeRecord.model_validate_json(path.read_text()) == record


def test_synthetic_rows_tokenize_to_the_setup_lengths():
    setup = resolve_setup("lora", objective="dpo", batch_size=2, seq_len=24, prompt_len=8)
    tokenizer = synthetic_tokenizer(512)
    row = synthetic_dataset(setup, rows=1, vocab_size=512)[0]
    prompt = tokenizer(row["prompt"])["input_ids"]
    chosen = tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]
    assert len(prompt) == 8 and len(chosen) == 24 and chosen[:8] == prompt and chosen[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(prompt) == row["prompt"]


def test_phase_hooks_read_each_phase_of_the_measured_steps(monkeypatch, one_thread):
    """The CUDA path's hooks, with torch.cuda's peak counters stood in for: every phase of the measured steps is
    read (GRPO: generation, loss forward, backward, optimizer), none of the warm-up cycle's."""
    reads = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: len(reads))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 100)
    setup = resolve_setup("lora", objective="grpo", batch_size=2, num_generations=2, steps_per_generation=2,
                          prompt_len=4, completion_len=4)
    peaks = probe_trl.PhasePeaks(probe_trl.warmup_steps(setup), cuda=True)
    marked = peaks.mark
    monkeypatch.setattr(peaks, "mark", lambda phase: (reads.append(phase) if peaks.measuring else None,
                                                      marked(phase)))
    probe_trl._train(resolve_model(TINY), setup, 2, "cpu", peaks, lambda _: None)
    assert reads == ["generation", "forward", "backward", "optimizer", "forward", "backward", "optimizer"]
    assert peaks.peaks == {"generation": 1, "forward": 5, "backward": 6, "optimizer": 7} and peaks.reserved == 100


def test_run_probe_refuses_an_objective_it_would_not_run():
    with pytest.raises(NotModelledError, match="run_trl_probe"):
        run_probe(resolve_model(TINY), resolve_setup("lora", objective="dpo", seq_len=24, prompt_len=8), device="cpu")


@pytest.mark.gpu
def test_cuda_trl_probe_records_phase_peaks():
    options = {"objective": "grpo", "batch_size": 4, "num_generations": 4, "prompt_len": 64, "completion_len": 64}
    record = run_trl_probe(resolve_model("qwen2.5-0.5b"), resolve_setup("lora", **options), steps=1, device="cuda")
    assert record.status == "ok" and set(record.phase_peaks) == {"generation", "forward", "backward", "optimizer"}
    assert record.max_memory_reserved >= record.max_memory_allocated == max(record.phase_peaks.values())


def test_the_probe_command_runs_trl_s_trainer_for_an_objective(tmp_path, capsys, one_thread):
    from vramplan.cli.app import main

    config = str(Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json")
    assert main(["probe", "--model", config, "--method", "lora", "--objective", "kto", "--batch-size", "2",
                 "--seq-len", "32", "--prompt-len", "16", "--device", "cpu", "--steps", "1",
                 "--out", str(tmp_path)]) == 0
    assert "tiny-llama-kto-lora" in capsys.readouterr().out
