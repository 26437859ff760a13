"""A tied embedding's gradients under full fine-tuning, per precision, against the trace (which sums gradients in
place exactly where torch does: tests/measure/test_gradient_accumulation.py): the head's gradient waits through
the backward and meets the embedding's at the end, summed out of place when it arrives as lm_head's transposed
view (bf16, bf16-pure, fp32), in place when autocast's cast hands over a fresh tensor (bf16-mixed)."""

import pytest

pytest.importorskip("transformers")

from vramplan.api import estimate, trace  # noqa: E402
from vramplan.estimate.strategies.single import tied_sum_in_place  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402


@pytest.mark.parametrize("precision, in_place", [("bf16", False), ("bf16-mixed", True), ("fp32", False),
                                                 ("bf16-pure", False)])
def test_tied_backward_matches_the_trace(precision, in_place):
    options = dict(batch_size=1, seq_len=128, precision=precision, gradient_checkpointing=True)
    assert tied_sum_in_place(resolve_setup("full", **options)) is in_place
    traced = trace("qwen2.5-0.5b", "full", **options)
    estimated = estimate("qwen2.5-0.5b", "full", **options)
    backward = next(p for p in traced.phases if p.phase == "backward")
    estimated_backward = next(p for p in estimated.phases if p.phase == "backward")
    assert estimated_backward.total_bytes == pytest.approx(backward.total_bytes, rel=0.002)
