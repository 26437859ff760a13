"""`check --exact` against the closed-form check, GPU size by GPU size: the closed form never says "fits" where the
replay of the traced step runs out of memory (its reserve is never below the replay's)."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from pathlib import Path  # noqa: E402

from vramplan.api import estimate, trace  # noqa: E402
from vramplan.check.exact import exact_verdict  # noqa: E402
from vramplan.check.preflight import check_catalog  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json")


@pytest.mark.parametrize("options", [dict(batch_size=2, seq_len=512),
                                    dict(batch_size=2, seq_len=512, alloc_conf="expandable_segments:True")],
                         ids=["default", "expandable"])
def test_closed_form_fits_only_where_the_replay_fits(options):
    job = estimate(CONFIG, "full", **options)
    traced = trace(CONFIG, "full", **options)
    outcomes = set()
    for tenth in range(10, 30):
        size = f"{tenth / 10 + 0.05:.2f}GiB"
        closed = check_catalog(job, size, headroom=0.0)
        exact = exact_verdict(closed, traced)
        assert not (closed.fits and not exact.fits), size
        outcomes.add((closed.fits, exact.fits))
    assert outcomes == {(False, False), (False, True), (True, True)}  # the rule's margin is a band, not a guess


def test_a_capacity_below_the_uncapped_reserve_can_still_run():
    """Between the allocated peak and the uncapped replay's reserve, the allocator frees its cache and retries:
    the replay decides, and the verdict says the step fits only because of that."""
    traced = trace(CONFIG, "full", batch_size=2, seq_len=512)
    job = estimate(CONFIG, "full", batch_size=2, seq_len=512)
    replay = traced.allocator_replay
    from vramplan.check.exact import outside_allocator_bytes

    fixed = outside_allocator_bytes(job)
    between = (replay.peak_allocated_bytes + replay.peak_reserved_bytes) / 2 + fixed
    assert replay.peak_reserved_bytes - replay.peak_allocated_bytes > 16 * 2**20
    verdict = exact_verdict(check_catalog(job, f"{between / 2**30:.3f}GiB", headroom=0.0), traced)
    assert verdict.fits and verdict.gpus[0].needed_bytes > verdict.gpus[0].usable_bytes
    assert any("frees its cache and retries" in note for note in verdict.notes)
