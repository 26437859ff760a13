"""The page of `vramplan serve` in headless Chromium (Debian's chromium and chromedriver, driven by selenium),
against a real uvicorn server: it loads from a link, its numbers equal the CLI's JSON for the same run, it follows
an option change, shows a bad input's message inline and recovers, and a screenshot is saved for a person to read
(VRAMPLAN_WEB_SCREENSHOT=path keeps one)."""

import json
import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.browser import chromium_and_driver  # noqa: E402
from vramplan.cli.app import main  # noqa: E402

RUN = ["--model", "llama-3.1-8b", "--method", "lora", "--batch-size", "4"]
LINK = "?model=llama-3.1-8b&method=lora&batch_size=4&gpu=rtx-4090"


@pytest.fixture(scope="module")
def server():
    import uvicorn

    from vramplan.web.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.started
    yield f"http://127.0.0.1:{port}/"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = chromium_and_driver()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def _settled(browser, query_part: str | None = None, state: str = "ready", timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    def done(b):
        body = b.execute_script("return [document.body.dataset.state, document.body.dataset.answerFor || '', "
                                "document.body.dataset.errorFor || '']")
        wanted = body[1] if state == "ready" else body[2]
        return body[0] == state and (query_part is None or query_part in wanted)

    WebDriverWait(browser, timeout).until(done)


def _cli(capsys, *args) -> dict:
    main(["estimate", *args, "--format", "json"])
    return json.loads(capsys.readouterr().out)


def _shown(browser) -> dict:
    return browser.execute_script("""
        const bytes = (id) => Number(document.getElementById(id).dataset.bytes);
        const parts = {};
        for (const node of document.querySelectorAll('#components [data-component]'))
            parts[node.dataset.component] = Number(node.dataset.bytes);
        const phases = {};
        for (const node of document.querySelectorAll('#phases [data-phase]'))
            phases[node.dataset.phase] = Number(node.dataset.bytes);
        return {allocated: bytes('peak-allocated'), reserved: bytes('peak-reserved'), device: bytes('device-bytes'),
                components: parts, phases: phases};
    """)


def _assert_equal_to_cli(shown: dict, cli: dict) -> None:
    assert (shown["allocated"], shown["reserved"], shown["device"]) == (
        cli["peak_allocated_bytes"], cli["peak_reserved_bytes"], cli["device_bytes"])
    assert shown["components"] == {k: v for k, v in cli["components"].items() if v}
    assert shown["phases"] == {p["phase"]: sum(p["components"].values()) for p in cli["phases"]}


def _set(browser, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id)
    browser.execute_script("arguments[0].closest('details') && (arguments[0].closest('details').open = true);", field)
    field.clear()
    field.send_keys(value)


def test_the_page_answers_as_the_cli_does(server, browser, capsys, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + LINK)
    _settled(browser, "batch_size=4")
    _assert_equal_to_cli(_shown(browser), _cli(capsys, *RUN))
    verdict = browser.find_element(By.ID, "verdict")
    assert "RTX 4090" in verdict.text and verdict.get_attribute("data-fits") in ("true", "false")
    assert browser.find_elements(By.CSS_SELECTOR, "#fits-on tr[data-id]")  # the plan's options
    assert "vramplan estimate" in browser.find_element(By.ID, "cli-command").text

    # an option changes: the answer follows, and still equals the CLI's
    _set(browser, "opt-seq_len", "1024")
    _settled(browser, "seq_len=1024")
    _assert_equal_to_cli(_shown(browser), _cli(capsys, *RUN, "--seq-len", "1024"))
    assert "seq_len=1024" in browser.current_url  # the state lives in the URL

    # a bad input: the CLI's message inline, the previous answer kept and marked stale
    _set(browser, "opt-batch_size", "0")
    _settled(browser, "batch_size=0", state="error")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "--batch-size must be a positive integer, got 0" in error.text
    assert "is-stale" in browser.find_element(By.ID, "answer").get_attribute("class")

    # and back to a good one
    _set(browser, "opt-batch_size", "2")
    _settled(browser, "batch_size=2")
    assert not browser.find_element(By.ID, "error").is_displayed()
    _assert_equal_to_cli(_shown(browser), _cli(capsys, *RUN[:4], "--batch-size", "2", "--seq-len", "1024"))

    severe = [entry for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE" and "status of 422" not in entry["message"]]
    assert severe == []  # the 422 of the bad input is the browser's own network line, not a script error
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("VRAMPLAN_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["VRAMPLAN_WEB_SCREENSHOT"])


def test_a_link_reproduces_the_answer_at_1024_px_without_overflow(server, browser, capsys):
    browser.set_window_size(1024, 768)
    browser.get(server + LINK + "&seq_len=2048&objective=dpo")
    _settled(browser, "objective=dpo")
    _assert_equal_to_cli(_shown(browser), _cli(capsys, *RUN, "--seq-len", "2048", "--objective", "dpo"))
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    browser.set_window_size(1280, 1600)
