"""The live-bytes tracker on plain tensor code: counts, rounding, phases and categories."""

import pytest

torch = pytest.importorskip("torch")

from vramplan.measure.livebytes import (  # noqa: E402
    ACTIVATIONS,
    GRADIENTS,
    PARAMETERS,
    TEMPORARIES,
    LiveBytesTracker,
    cuda_block_bytes,
)


def test_block_rounding_follows_the_cuda_allocator():
    assert cuda_block_bytes(0) == 0
    assert cuda_block_bytes(1) == 512
    assert cuda_block_bytes(512) == 512
    assert cuda_block_bytes(513) == 1024


def test_counts_live_storages_once_and_releases_them():
    tracker = LiveBytesTracker()
    with tracker:
        a = torch.zeros(1024, dtype=torch.float32)  # 4096 B
        view = a[:10]  # a view: no new storage
        b = a * 2  # 4096 B
        assert tracker.live_bytes == 8192
        del b
        assert tracker.live_bytes == 4096
        del view, a
    assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 8192


def test_peak_is_split_by_phase_and_category():
    tracker = LiveBytesTracker()
    weight = torch.ones(256)
    with tracker:
        tracker.track(weight, PARAMETERS, "layer")
        tracker.set_phase("forward")
        saved = weight * 3  # 1024 B activation
        tracker.reset_peak()
        tracker.set_phase("backward")
        grad = weight * 2  # born a temporary ...
        tracker.tag(grad, GRADIENTS, "layer")  # ... then known to be a gradient
        scratch = weight + 1
        del scratch
        tracker.finish()
    assert tracker.peak_bytes == 4 * 1024
    assert tracker.peak_phase == "backward"
    assert tracker.peak.by_category()[PARAMETERS] == 1024
    assert tracker.peak.by_category()[GRADIENTS] == 1024
    assert tracker.peak.by_category()[ACTIVATIONS] == 1024
    assert tracker.peak.by_category()[TEMPORARIES] == 1024
    assert tracker.phase_peaks["backward"] == 4 * 1024
    del saved, grad
