"""Reading GPU measurements (probe JSON lines, published rows through a mapping) and scoring against them."""

import json
from pathlib import Path

import pytest

from vramplan.api import estimate
from vramplan.errors import UsageError
from vramplan.validate.measured import load_probe_files, load_published, parse_quantity, score_measured

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize(
    "text, expected",
    [("67.46 GiB", round(67.46 * 2**30)), ("77256 MiB", 77256 * 2**20), ("12.3 GB", 12_300_000_000), ("512 B", 512)],
)
def test_quantities_convert_exactly(text, expected):
    assert parse_quantity(text) == expected


def test_unreadable_quantity_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot read"):
        parse_quantity("about 20 gigs")


def test_published_rows_keep_their_metric_apart():
    peaks = load_published(FIXTURES / "published.tsv", FIXTURES / "published_mapping.toml")
    assert [(peak.id, peak.metric) for peak in peaks] == [("X1", "allocated"), ("X1", "device")]
    scores = score_measured(peaks)
    predicted = estimate("mistral-7b", "full", batch_size=4, seq_len=4096, gradient_checkpointing=True)
    assert scores[0].estimate_bytes == predicted.peak_allocated_bytes
    assert scores[1].estimate_bytes == predicted.device_bytes
    measured = peaks[0].measured_bytes
    assert scores[0].error == pytest.approx((scores[0].estimate_bytes - measured) / measured)


def test_mapping_value_must_appear_in_the_row(tmp_path):
    mapping = tmp_path / "mapping.toml"
    mapping.write_text((FIXTURES / "published_mapping.toml").read_text().replace("67.46 GiB", "60.00 GiB"))
    with pytest.raises(UsageError, match="does not appear"):
        load_published(FIXTURES / "published.tsv", mapping)


def test_probe_lines_give_one_peak_per_measured_metric_and_skip_ooms(tmp_path):
    lines = [
        {"id": "p1", "model": "llama-3.2-1b", "method": "lora", "options": {"batch_size": 2}, "gpu": "H100",
         "max_memory_allocated": 5 * 2**30, "max_memory_reserved": 6 * 2**30, "nvml_peak_used": 7 * 2**30},
        {"id": "p2", "model": "llama-3.2-1b", "method": "full", "status": "oom"},
    ]
    (tmp_path / "h100-2026-11-28.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    peaks = load_probe_files(tmp_path)
    assert [(peak.id, peak.metric, peak.measured_bytes) for peak in peaks] == [
        ("p1", "allocated", 5 * 2**30), ("p1", "reserved", 6 * 2**30), ("p1", "device", 7 * 2**30)]


def test_a_corrupt_probe_line_names_file_and_line_when_strict(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": 1}\n{not json\n')
    with pytest.raises(UsageError, match=r"x.jsonl:2"):
        load_probe_files(tmp_path)
