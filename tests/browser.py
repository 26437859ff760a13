"""The headless browser the report and web page tests drive: Debian's chromium and chromedriver with selenium,
required where .ci/run installs them (VRAMPLAN_REQUIRE_BROWSER=1), else the test is skipped."""

import os
import shutil

import pytest


def chromium_and_driver() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or a skip (a failure under VRAMPLAN_REQUIRE_BROWSER=1)."""
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
