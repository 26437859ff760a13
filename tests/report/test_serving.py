"""The report's "Serving" section: the jobs file's [[serve]] entries, their cheapest rental and purchase."""

from datetime import date
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from vramplan.cli.app import main  # noqa: E402
from vramplan.hardware.catalog import load_hardware  # noqa: E402
from vramplan.hardware.purchase import DESKTOP_HOST_USD, WORKSTATION_HOST_USD  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.report.build import build_report  # noqa: E402
from vramplan.report.jobs import ServeEntry, load_jobs  # noqa: E402
from vramplan.report.render import write_report  # noqa: E402
from vramplan.report.serving import serving_pick  # noqa: E402
from vramplan.serving.fleet import size_fleet  # noqa: E402
from vramplan.serving.sizing import ServeOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_JOB = '[[job]]\nname = "small"\nmodel = "llama-3.2-1b"\nmethod = "qlora"\ntokens = "1M"\n\n'
SERVE_8B = '[[serve]]\nname = "chat"\nmodel = "llama-3.1-8b"\ncontext = 8192\nconcurrency = 32\n'
SERVE_NOTHING = '[[serve]]\nname = "huge"\nmodel = "405b"\ncontext = 131072\nconcurrency = 64\n'


def _report(tmp_path, text):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(text)
    return build_report(load_jobs(jobs), load_hardware(), made_on=date(2026, 12, 7))


def test_example_jobs_file_has_a_serve_entry():
    entries = load_jobs(ROOT / "examples" / "jobs.toml").serve
    assert len(entries) == 1 and entries[0].weights.value == "bf16" and entries[0].kv_dtype == "auto"


def test_pick_is_the_fleets_cheapest_rental_and_purchase():
    entry = ServeEntry(name="chat", model="llama-3.1-8b", context=8192, concurrency=32)
    pick = serving_pick(entry, load_hardware(), False, DESKTOP_HOST_USD, WORKSTATION_HOST_USD)
    fleet = size_fleet(resolve_model("llama-3.1-8b"), load_hardware(), ServeOptions(max_model_len=8192,
                                                                                    concurrency=32))
    assert pick.rent.rent_usd_per_hour == min(r.rent_usd_per_hour for r in fleet.rows if r.rent_usd_per_hour)
    assert pick.buy.buy_usd == min(r.buy_usd for r in fleet.rows if r.buy_usd is not None)
    assert pick.rent.sequences_per_replica >= 32 and pick.buy.sequences_per_replica >= 32
    assert pick.systems_fitting == len(fleet.rows) and pick.engine.endswith("rule read from source, not traced")


def test_report_has_a_serving_section(tmp_path):
    report = _report(tmp_path, SMALL_JOB + SERVE_8B + "\n" + SERVE_NOTHING)
    chat, huge = report.serving
    assert chat.rent is not None and chat.buy is not None and huge.rent is None and huge.buy is None
    write_report(report, tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    section = markdown.split("## Serving")[1].split("\n## ")[0]
    assert "read from source, not traced" in section and "| serve entry |" in section
    rent = chat.rent
    assert (f"| chat | Llama 3.1 8B (bf16, KV auto), 8,192 x 32 | rent | {rent.system} | "
            f"${rent.rent_usd_per_hour:,.2f}/h | {rent.tensor_parallel} x {rent.replicas} |") in section
    assert f"| buy | {chat.buy.system} |" in section
    assert "| huge |" in section and "nothing in the catalog to rent serves it" in section
    assert "<h2>Serving</h2>" in (tmp_path / "out" / "report.html").read_text()


def test_no_serve_entries_no_section(tmp_path):
    report = _report(tmp_path, SMALL_JOB)
    assert report.serving == []
    write_report(report, tmp_path / "out")
    assert "## Serving" not in (tmp_path / "out" / "report.md").read_text()


def test_cli_prints_each_serve_pick(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(SMALL_JOB + SERVE_8B)
    assert main(["report", str(jobs), "--out", str(tmp_path / "out")]) == 0
    assert "serve chat: rent " in capsys.readouterr().out


@pytest.mark.parametrize(
    "serve, words",
    [
        pytest.param(SERVE_8B * 2, "serve names must differ", id="duplicate-name"),
        pytest.param(SERVE_8B.replace('context = 8192', 'context = "8k"'), "context", id="context-not-int"),
        pytest.param(SERVE_8B + 'weights = "int3"\n', "weights", id="bad-weights"),
        pytest.param(SERVE_8B + 'kv_dtype = "int8"\n', "kv_dtype", id="bad-kv-dtype"),
        pytest.param(SERVE_8B + 'gpu = "h100"\n', "gpu", id="unknown-key"),
        pytest.param(SERVE_8B.replace("llama-3.1-8b", "nope-1b"), "serve 'chat'", id="unknown-model"),
    ],
)
def test_bad_serve_entry_is_one_line_and_exit_2(serve, words, tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(SMALL_JOB + serve)
    assert main(["report", str(jobs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
