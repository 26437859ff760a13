"""The trace records its allocations and frees in order and replays them through the caching allocator."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from pathlib import Path  # noqa: E402

from vramplan.allocator.caching import replay, replay_steady_step  # noqa: E402
from vramplan.api import trace  # noqa: E402
from vramplan.measure.livebytes import LiveBytesTracker  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "validation" / "configs"


def test_the_tracker_records_allocations_frees_and_the_reset():
    import torch

    tracker = LiveBytesTracker()
    with tracker:
        a = torch.empty(1000)
        b = torch.empty(300_000)
        del a
        tracker.reset_peak()
        c = torch.empty(10)  # noqa: F841
    assert [event[0] for event in tracker.events] == ["alloc", "alloc", "free", "reset", "alloc"]
    assert [event[2] for event in tracker.events if event[0] == "alloc"] == [4000, 1_200_000, 40]
    assert replay(tracker.events).peak_reserved_bytes == 2 * 2**20 + 20 * 2**20  # a small and a large segment
    del b


def test_a_traced_step_carries_its_replay():
    """Reserved covers allocated; the replayed allocated is at least the trace's 512-byte-rounded live bytes (a
    reused large block is charged whole when at most 1 MiB of it would be left: should_split)."""
    result = trace(str(CONFIGS / "tiny-llama.json"), "lora", batch_size=2, seq_len=512)
    replayed = result.allocator_replay
    assert result.peak_reserved_bytes == replayed.peak_reserved_bytes >= replayed.peak_allocated_bytes
    assert replayed.peak_allocated_bytes >= result.peak_allocated_bytes and not replayed.oom


def test_trace_replays_under_the_runs_allocator_settings():
    default = trace(str(CONFIGS / "tiny-llama.json"), "full", batch_size=2, seq_len=512)
    expandable = trace(str(CONFIGS / "tiny-llama.json"), "full", batch_size=2, seq_len=512,
                       alloc_conf="expandable_segments:True")
    assert expandable.setup.allocator.expandable_segments
    assert expandable.peak_allocated_bytes == default.peak_allocated_bytes
    assert expandable.peak_reserved_bytes < default.peak_reserved_bytes
    assert replay_steady_step(default.allocation_events()) == default.allocator_replay


def test_fsdp_collectives_allocate_on_their_own_streams():
    """FSDP2's all-gather copy-in and all-gather streams (torch.cpu's stream contexts) reach the replay."""
    result = trace(str(CONFIGS / "tiny-llama.json"), "full", batch_size=2, seq_len=256, gpus=2, strategy="fsdp",
                   gradient_checkpointing=True)
    assert result.allocator_replay.streams >= 2
    assert {event[3] for event in result.allocation_events() if event[0] == "alloc"} >= {0, 1}
