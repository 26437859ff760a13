"""The `vramplan` command line (typer). `run` is the console script's entry point."""

from __future__ import annotations

import os


def run() -> None:
    """The console script: `vramplan ...`."""
    # pydantic scans every installed distribution's entry points for plugins when the first model is built (about
    # 17 ms of each cold start here); the CLI uses none, so the scan is skipped unless the user asks for plugins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from vramplan.cli.app import main

    raise SystemExit(main())
