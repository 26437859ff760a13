"""`vramplan report`: what it computes, what it writes, and that the HTML renders in a real browser."""

import os
import shutil
from datetime import date
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

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


def test_recommendation_runs_every_job_and_is_the_cheapest_cuda_option(report):
    assert report.recommended is not None and not report.recommended.rocm
    for job in report.jobs:
        assert report.recommended.id in {option.id for option in job.plan.options}
    cuda_priced = [c for c in report.candidates if c.cost_usd is not None and not c.rocm]
    assert report.recommended.cost_usd == min(c.cost_usd for c in cuda_priced)
    totals = [c for c in report.candidates if c.id == report.recommended.id][0]
    per_job = [next(o for o in job.plan.options if o.id == totals.id) for job in report.jobs]
    assert totals.cost_usd == pytest.approx(sum(o.cost_usd for o in per_job))
    assert totals.hours == pytest.approx(sum(o.hours for o in per_job))


def test_rules_of_thumb_rows_cover_7b_32b_70b(report):
    models = {row.model for row in report.rules}
    assert models == {"mistral-7b", "qwen2.5-32b", "llama-3.1-70b"}
    full32 = next(row for row in report.rules if row.model == "qwen2.5-32b" and row.method == "full")
    # 16 B/param (bf16 weights, gradients, AdamW states) with the Trainer's default fused AdamW (no step temporaries):
    # only the 288 GB MI355X holds a 32B full fine-tune.
    assert full32.smallest_gpu == "mi355x"


def test_writes_html_markdown_and_charts(report, tmp_path):
    written = write_report(report, tmp_path)
    assert {path.name for path in written} == {"report.html", "report.md", "memory.png", "cost_time.png"}
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Rules of thumb beside vramplan" in page
    markdown = (tmp_path / "report.md").read_text()
    assert "![Memory breakdown per job](memory.png)" in markdown and "| option |" in markdown
    for chart in ("memory.png", "cost_time.png"):
        assert (tmp_path / chart).read_bytes()[:4] == b"\x89PNG"


def test_cli_report_and_bad_jobs_file(tmp_path, capsys):
    assert main(["report", str(JOBS), "--out", str(tmp_path / "out")]) == 0
    assert "recommended:" in capsys.readouterr().out
    bad = tmp_path / "jobs.toml"
    bad.write_text('[[job]]\nname = "x"\nmodel = "8b"\n')
    with pytest.raises(UsageError, match="method"):
        load_jobs(bad)
    assert main(["report", str(bad)]) == 2


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        try:
            import selenium  # noqa: F401
        except ImportError:
            chromium = None
    if not (chromium and driver):
        if os.environ.get("VRAMPLAN_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium, chromedriver and selenium are required here (.ci/run installs them)")
        pytest.skip("no headless chromium on this machine")
    return chromium, driver


def test_html_renders_in_headless_chromium(report, tmp_path):
    chromium, driver_path = _browser()
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
    recommended = report.recommended
    assert len(recommended.layouts) == len(report.jobs)
    for job, layout in zip(report.jobs, recommended.layouts):
        option = next(o for o in job.plan.options if o.id == recommended.id)
        assert layout.startswith(f"{job.name}: {option.strategy} on {option.gpus_used} GPU")
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "layout per job" in markdown and "Layout per job:" in markdown
