"""`vramplan report`: what it computes, what it writes, and that the HTML renders in a real browser."""

import os
import shutil
from datetime import date
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tests.browser import chromium_and_driver  # noqa: E402
from vramplan.cli.app import main  # noqa: E402
from vramplan.errors import UsageError  # noqa: E402
from vramplan.hardware.catalog import load_hardware  # noqa: E402
from vramplan.report.build import build_report  # noqa: E402
from vramplan.report.jobs import load_jobs  # noqa: E402
from vramplan.report.render import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "examples" / "jobs.toml"


@pytest.fixture(scope="module")
def report():
    return build_report(load_jobs(JOBS), load_hardware(), made_on=date(2026, 11, 28))


def _per_job(report, option_id):
    return [next(o for o in job.plan.options if o.id == option_id) for job in report.jobs]


def test_buy_and_rent_recommendations_run_every_job(report):
    buy, rent = report.cheapest_buy, report.cheapest_rent
    assert buy is not None and rent is not None and not buy.rocm and not rent.rocm
    # the cheapest machine that can be bought: a whole machine or a desktop card, never a cloud instance or module
    # (a machine of unknown speed only after those whose time, and so break-even, can be given)
    bought = [c for c in report.candidates if c.upfront_usd is not None and not c.rocm]
    timed = [c for c in bought if c.hours is not None]
    assert buy.upfront_usd == min(c.upfront_usd for c in timed) and buy.rent_usd is None
    assert all(c.hours is None for c in bought if c.upfront_usd < buy.upfront_usd)
    per_job = _per_job(report, buy.id)
    assert buy.hours == pytest.approx(sum(o.hours for o in per_job))
    assert buy.amortised_usd == pytest.approx(sum(o.amortised_usd for o in per_job))
    assert buy.upfront_usd == max(o.purchase.upfront_usd for o in per_job)
    # the cheapest rental's total is the sum of each job's rent
    rented = [c for c in report.candidates if c.rent_usd is not None and not c.rocm]
    assert rent.rent_usd == min(c.rent_usd for c in rented)
    assert rent.rent_usd == pytest.approx(sum(o.rent_usd for o in _per_job(report, rent.id)))
    assert all(c.upfront_usd is None for c in rented)
    # break-even: the purchase pays after upfront / (rent - energy) runs of the jobs
    saving = rent.rent_usd - buy.energy_usd
    assert report.break_even.runs == pytest.approx(buy.upfront_usd / saving, rel=1e-6)


def test_budget_tiers_and_rocm_never_lead(report):
    bands = [(tier.low_usd, tier.high_usd) for tier in report.tiers]
    assert bands == [(0, 10_000), (10_000, 50_000), (50_000, 250_000), (250_000, None)]
    for tier in report.tiers:
        if tier.option is not None:
            assert tier.low_usd <= tier.upfront_usd and (tier.high_usd is None or tier.upfront_usd < tier.high_usd)
            assert len(tier.jobs_run) + len(tier.jobs_left) == len(report.jobs)
    # the tier that holds the cheapest all-jobs purchase runs every job
    holding = next(t for t in report.tiers if t.low_usd <= report.cheapest_buy.upfront_usd
                   and (t.high_usd is None or report.cheapest_buy.upfront_usd < t.high_usd))
    assert holding.jobs_left == []
    assert not report.fastest.rocm


def test_rule_of_thumb_rows_name_the_differing_terms(report):
    models = {row.model for row in report.rules}
    assert models == {"mistral-7b", "qwen2.5-32b", "llama-3.1-70b"}
    pure = next(r for r in report.rules if r.model == "qwen2.5-32b" and r.method == "full" and r.precision == "bf16")
    mixed = next(r for r in report.rules if r.model == "qwen2.5-32b" and r.precision == "bf16-mixed")
    # 32.76B parameters: 8 bytes each in pure bf16 (244 GiB), 16 with fp32 master weights (488 GiB), the rule's 16
    assert round(pure.state_bytes / 2**30) == 244 and round(mixed.state_bytes / 2**30) == 488
    assert mixed.rule_bytes == 16 * mixed.params
    qlora = next(r for r in report.rules if r.model == "llama-3.1-70b" and r.method == "qlora")
    assert qlora.terms["k-bit prep (non-4-bit weights to fp32)"] > 0 and "logits_loss" in qlora.terms
    assert qlora.vramplan_bytes > qlora.rule_bytes  # the rule's 0.5 GB/B misses activations, logits and runtime


def test_writes_html_markdown_and_charts(report, tmp_path):
    written = write_report(report, tmp_path)
    assert {path.name for path in written} == {"report.html", "report.md", "memory.png", "cost_time.png"}
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "The rule of thumb, reproduced and corrected" in page
    markdown = (tmp_path / "report.md").read_text()
    assert "![Memory breakdown per job](memory.png)" in markdown and "| option |" in markdown
    buy = report.cheapest_buy
    assert f"for ${buy.upfront_usd:,.0f} upfront" in markdown and "Break-even:" in markdown
    assert f"for ${report.cheapest_rent.rent_usd:,.2f} in rent" in markdown
    assert "in all" not in markdown.split("## Options")[0].replace("in all:", "")  # no amortised figure as a total
    for chart in ("memory.png", "cost_time.png"):
        assert (tmp_path / chart).read_bytes()[:4] == b"\x89PNG"


def test_cli_report_and_bad_jobs_file(tmp_path, capsys):
    assert main(["report", str(JOBS), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "buy:" in out and "upfront" in out and "rent:" in out and "break-even:" in out
    bad = tmp_path / "jobs.toml"
    bad.write_text('[[job]]\nname = "x"\nmodel = "8b"\n')
    with pytest.raises(UsageError, match="method"):
        load_jobs(bad)
    assert main(["report", str(bad)]) == 2


def test_html_renders_in_headless_chromium(report, tmp_path):
    chromium, driver_path = chromium_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    write_report(report, tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        browser.get((tmp_path / "report.html").as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == 2 and all(done and width > 100 and height > 100 for done, width, height in images)
        assert browser.find_element("tag name", "h1").text == report.title
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        browser.save_screenshot(str(tmp_path / "screenshot.png"))
        assert (tmp_path / "screenshot.png").stat().st_size > 10_000
        shot = os.environ.get("VRAMPLAN_REPORT_SCREENSHOT")
        if shot:  # keep one to look at
            shutil.copy(tmp_path / "screenshot.png", shot)
    finally:
        browser.quit()


def test_candidates_carry_each_jobs_layout(report, tmp_path):
    buy = report.cheapest_buy
    assert len(buy.layouts) == len(report.jobs)
    for job, layout in zip(report.jobs, buy.layouts):
        option = next(o for o in job.plan.options if o.id == buy.id)
        assert layout.startswith(f"{job.name}: {option.strategy} on {option.gpus_used} GPU")
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "layout per job" in markdown and "It runs every job:" in markdown


def test_a_job_nothing_runs_is_named_and_bad_files_are_one_line(tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[[job]]\nname = "small"\nmodel = "llama-3.2-1b"\nmethod = "qlora"\ntokens = "1M"\n\n'
                    '[[job]]\nname = "huge"\nmodel = "405b"\nmethod = "full"\n'
                    'options = { batch_size = 8, seq_len = 131072 }\ntokens = "1M"\n')
    report = build_report(load_jobs(jobs), load_hardware(), made_on=date(2026, 12, 7))
    assert [unfit.job for unfit in report.unfit_jobs] == ["huge"]
    assert report.cheapest_buy is None and report.break_even is None
    write_report(report, tmp_path / "out")
    assert "'huge' fits nothing in the catalog" in (tmp_path / "out" / "report.md").read_text()
    for text, words in (('[[job]]\nname = "a"\nmodel = "8b"\nmethod = "lora"\n' * 2, "job names must differ"),
                        ('[assumptions]\nallow_rocm = "yes"\n[[job]]\nname = "a"\nmodel = "8b"\nmethod = "lora"\n',
                         "allow_rocm")):
        jobs.write_text(text)
        assert main(["report", str(jobs), "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
