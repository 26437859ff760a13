"""`vramplan serve`: the planner as a local web page and JSON API (vramplan/web), on uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

# Where the page is served unless --host says otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Addresses that bind every interface.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")

Host = Annotated[str, typer.Option("--host", help="The address to bind: 127.0.0.1 serves this machine only; "
                                                  "0.0.0.0 serves the network (no authentication).")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="The TCP port.")]
OpenBrowser = Annotated[bool, typer.Option("--open", help="Open the page in the default browser once it serves.")]


def serve_command(host: Host = DEFAULT_HOST, port: Port = DEFAULT_PORT, open_browser: OpenBrowser = False) -> None:
    """Serve the planner as a web page and a JSON API (/api/docs) until Ctrl-C; needs the `web` extra."""
    from vramplan.errors import require_extra

    require_extra("web", "fastapi", "uvicorn")
    import uvicorn

    from vramplan.web.app import LOCAL_HOSTS, create_app

    everywhere = host in WILDCARD_HOSTS
    # Host names it answers: this machine's, and the address it binds; bound to every interface, any name
    app = create_app(("*",) if everywhere else (*LOCAL_HOSTS, host))
    if everywhere:
        typer.echo(f"vramplan: warning: --host {host} serves every network this machine is on, with no "
                   "authentication", err=True)
    shown = "localhost" if host in ("127.0.0.1", "::1") or everywhere else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    typer.echo(f"vramplan: serving {url} (API docs {url}api/docs); Ctrl-C stops", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
