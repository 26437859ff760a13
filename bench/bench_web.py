"""`vramplan serve`'s warm latency over HTTP: /api/estimate and a full-catalog /api/plan, N requests each after a
warm-up, against a uvicorn server started here on a free port (the way `vramplan serve` runs it); and the page's
time to first answer in headless Chromium (navigation start to the answer drawn: body[data-state=ready]).

    python bench/bench_web.py [--requests 200] [--json]

Medians and p95 are printed (and the per-request times with --json). The web calculators people use instead
(gpu_poor, Hugging Face Spaces) run remotely: their latency is the network's plus theirs and cannot be measured
here (no network); the page here needs none.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ESTIMATE = {"model": "llama-3.1-8b", "method": "lora", "options": {"batch_size": 4, "seq_len": 4096}}
PLAN = {"model": "llama-3.1-70b", "method": "qlora", "tokens": "100M"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int):
    import uvicorn

    from vramplan.web.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server


def timed(client, path: str, body: dict, count: int) -> list[float]:
    for _ in range(5):  # warm: imports, catalog caches
        client.post(path, json=body).raise_for_status()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.post(path, json=body).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"requests": len(times), "median_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)], "max_ms": 1000 * ordered[-1]}


def page_first_answer(url: str, runs: int = 5) -> list[float] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    seconds = []
    try:
        for _ in range(runs + 1):  # the first load warms the browser's cache of the assets
            browser.get(url + "?model=llama-3.1-8b&method=lora&batch_size=4")
            WebDriverWait(browser, 60).until(
                lambda b: b.execute_script("return document.body.dataset.state") == "ready")
            seconds.append(browser.execute_script("return performance.now()") / 1000)
    finally:
        browser.quit()
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import httpx

    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            estimate = timed(client, "/api/estimate", ESTIMATE, args.requests)
            plan = timed(client, "/api/plan", PLAN, args.requests)
        page = page_first_answer(url)
    finally:
        server.should_exit = True
    result = {"estimate": summary(estimate), "plan": summary(plan),
              "page_first_answer_s": None if page is None else {"runs": len(page), "median": statistics.median(page),
                                                                "max": max(page)}}
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
