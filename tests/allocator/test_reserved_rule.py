"""The estimate's closed-form reserve against the caching-allocator replays of every matrix case.

validation/results/replay.csv holds, per matrix case, the steady-state replay of its traced allocation stream with
torch's default settings and with expandable_segments:True (scripts/replay_matrix.py; tracing all 140 cases takes
about 15 minutes, too long for CI). The estimate is recomputed here from the code, so a change of the rule or of
the allocated estimate is held to the replays; a CI-sized case is also re-traced to show the file is current.
"""

import csv
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.validate.matrix import DEFAULT_MATRIX, load_matrix

ROOT = Path(__file__).resolve().parents[2]
REPLAYS = {row["id"]: row for row in csv.DictReader((ROOT / "validation/results/replay.csv").open())}
CASES = {case.id: case for case in load_matrix(ROOT / DEFAULT_MATRIX)}


def test_every_matrix_case_has_a_replay():
    assert set(REPLAYS) == set(CASES)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_the_reserve_rule_is_never_below_the_replay(case_id):
    case, replayed = CASES[case_id], REPLAYS[case_id]
    default = estimate(case.model, case.method, **case.options)
    expandable = estimate(case.model, case.method, alloc_conf="expandable_segments:True", **case.options)
    assert default.peak_reserved_bytes >= int(replayed["replay_reserved"])
    assert expandable.peak_reserved_bytes >= int(replayed["expandable_reserved"])
    assert expandable.peak_reserved_bytes <= default.peak_reserved_bytes


def test_the_replay_file_is_current_for_a_traced_case():
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vramplan.api import trace

    case = CASES["tiny-llama-lora"]
    traced = trace(case.model, case.method, **case.options)
    assert traced.peak_reserved_bytes == int(REPLAYS["tiny-llama-lora"]["replay_reserved"])
    assert traced.peak_allocated_bytes == int(REPLAYS["tiny-llama-lora"]["trace_allocated"])
