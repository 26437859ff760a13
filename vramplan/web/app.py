"""The ASGI app of `vramplan serve`: the page (static/, every asset served from the package) and the JSON API.

Each answer is the document the CLI prints with `--format json` (vramplan/answers.py, vramplan/output.py), so the
page and the terminal agree to the byte; a bad input is a 4xx with the CLI's one-line message and its exit code.
The API answers only requests addressed to the host it serves (a web page elsewhere cannot reach a localhost server
through DNS rebinding) and reads at most MAX_BODY_BYTES of a request, however it is sent.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from vramplan.errors import CannotCheckError, UsageError, VramplanError
from vramplan.web.form import FormOptions, form_options, run_flags
from vramplan.web.run_body import MAX_BODY_BYTES, FitBody, GpuBody, PlanBody, RunBody, run_request

STATIC = Path(__file__).parent / "static"
# The status of each error: a usage error (bad input, or a setting not modelled) is the user's: 422; a body over
# the limit 413; a check that cannot run, 409; anything else is a bug, 500.
USAGE_STATUS = 422
TOO_LARGE_STATUS = 413
CANNOT_CHECK_STATUS = 409
# What each API route answers: the document kind, whose JSON Schema (vramplan/schemas/) the OpenAPI document holds.
ROUTE_KINDS = {"/api/estimate": "estimate", "/api/plan": "plan", "/api/check": "check", "/api/fit": "fit",
               "/api/catalog/models": "models", "/api/catalog/gpus": "catalog-gpus",
               "/api/catalog/systems": "catalog-systems"}
# The host names a server bound to this machine answers to (the Host header, port aside).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class BodyTooLarge(HTTPException):
    """A request body past MAX_BODY_BYTES, counted as it arrives (a chunked body has no Content-Length); an
    HTTPException, so FastAPI's body parsing passes it on as it is (it turns other errors into a 400)."""

    def __init__(self) -> None:
        super().__init__(TOO_LARGE_STATUS, _too_large())


class BoundedBody:
    """ASGI middleware: a declared Content-Length over the limit is refused at once; any body is counted as it is
    received, and reading past the limit raises BodyTooLarge (answered 413 by the app's handler)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _error(_too_large(), TOO_LARGE_STATUS)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        return await self.app(scope, counted, send)


def create_app(allowed_hosts: tuple[str, ...] = LOCAL_HOSTS) -> FastAPI:
    """The app; `allowed_hosts`, the Host names it answers (`vramplan serve` adds the address it binds)."""
    from fastapi.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="vramplan", summary="GPU memory planner for LLM fine-tuning: the CLI's answers as JSON",
                  version=_version(), docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(BoundedBody)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    _add_page_routes(app)
    _add_run_routes(app)
    from vramplan.web.openapi import with_document_schemas

    app.openapi = lambda: with_document_schemas(app, ROUTE_KINDS)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(VramplanError)
    async def vramplan_error(request: Request, error: VramplanError):
        if isinstance(error, UsageError):
            return _error(str(error), USAGE_STATUS, error.exit_code)
        if isinstance(error, CannotCheckError):
            return _error(str(error), CANNOT_CHECK_STATUS, error.exit_code)
        return _error(f"internal error: {error}", 500, error.exit_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return _error(f"{where}: {first.get('msg', 'invalid').lower()}", USAGE_STATUS)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return _error(str(error.detail), error.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception):  # a bug: the CLI's exit 1, as JSON
        return _error(f"internal error: {error.__class__.__name__}: {error}", 500, 1)


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        from vramplan.web.openapi import docs_page

        return HTMLResponse(docs_page(app.openapi()))

    @app.get("/api/health", summary="The server is up")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": _version()}

    @app.get("/api/options", summary="Every run option: flag, help, kind, choices and the CLI's default",
             response_model=FormOptions)
    def options() -> FormOptions:
        return form_options()

    @app.get("/api/catalog/models", summary="The model catalog (vramplan models --format json)")
    def models() -> Response:
        from vramplan.models.listing import model_rows
        from vramplan.output import versioned

        return _answer(versioned("models", [row.model_dump(mode="json") for row in model_rows()]))

    @app.get("/api/catalog/gpus", summary="The GPU catalog (vramplan catalog gpus --format json)")
    def gpus() -> Response:
        from vramplan.hardware.catalog import load_hardware
        from vramplan.output import versioned

        return _answer(versioned("catalog-gpus", [g.model_dump(mode="json") for g in load_hardware().gpus.values()]))

    @app.get("/api/catalog/systems", summary="The systems catalog (vramplan catalog systems --format json)")
    def systems() -> Response:
        from vramplan.hardware.catalog import load_hardware
        from vramplan.output import versioned

        records = [s.model_dump(mode="json") for s in load_hardware().systems.values()]
        return _answer(versioned("catalog-systems", records))


def _add_run_routes(app: FastAPI) -> None:
    @app.post("/api/estimate", summary="One GPU's memory for the run (vramplan estimate --format json)")
    def estimate(body: RunBody) -> Response:
        from vramplan.answers import estimate_document

        with run_request(body) as run:
            return _answer(run.clean(estimate_document(run.request)))

    @app.post("/api/plan", summary="Every catalog GPU and system that runs the job, with time and cost "
                                   "(vramplan plan --format json)")
    def plan(body: PlanBody) -> Response:
        from vramplan.answers import plan_document, plan_result, training_tokens
        from vramplan.hardware.catalog import load_hardware
        from vramplan.hardware.plan import CostAssumptions
        from vramplan.options import layout_fields

        given = [name for name in layout_fields() if body.options.get(name) is not None]
        if given:  # `vramplan plan` has no such flags: it tries every layout of each system itself
            raise UsageError(f"plan chooses how the job is spread on each system: {', '.join(given)} do not apply")
        tokens = training_tokens(body.tokens, body.epochs, "tokens", "epochs")
        with run_request(body, verdict=True) as run:
            _, result, suggestions = plan_result(run.request, load_hardware(), tokens,
                                                 CostAssumptions(headroom=body.headroom))
            extra = ["--tokens", body.tokens, "--epochs", f"{body.epochs:g}", "--headroom", f"{body.headroom:g}"]
            return _answer(run.clean(plan_document(result, suggestions, _command_line(run.request, extra))))

    @app.post("/api/check", summary="Does the run fit an idle catalog GPU? With the changes that would make it fit "
                                    "(vramplan check --gpu ... --format json; fits false is an answer, not an error)")
    def check(body: GpuBody) -> Response:
        from vramplan.answers import check_document
        from vramplan.check.preflight import check_catalog
        from vramplan.request import estimate_request

        with run_request(body, verdict=True) as run:
            verdict = check_catalog(estimate_request(run.request), body.gpu, body.headroom, request=run.request)
            extra = ["--gpu", body.gpu, "--headroom", f"{body.headroom:g}"]
            return _answer(run.clean(check_document(verdict, _command_line(run.request, extra))))

    @app.post("/api/fit", summary="The largest batch size (or sequence length, LoRA rank, ...) that fits a catalog "
                                  "GPU (vramplan fit --gpu ... --format json)")
    def fit(body: FitBody) -> Response:
        from vramplan.answers import fit_document, fit_result
        from vramplan.hardware.catalog import load_hardware
        from vramplan.hardware.targets import resolve_gpu_target

        target = resolve_gpu_target(body.gpu, load_hardware().gpus)
        usable = int(target.memory_bytes * (1 - body.headroom))
        with run_request(body, verdict=True) as run:
            result, suggestions = fit_result(run.request, body.solve, target, usable)
            extra = ["--gpu", body.gpu, "--headroom", f"{body.headroom:g}", "--solve", body.solve]
            return _answer(run.clean(fit_document(result, target, suggestions, _command_line(run.request, extra))))


def _answer(document: dict[str, Any]) -> Response:
    """The document as `--format json` writes it, to the byte (a non-finite number is a bug there, and here)."""
    from vramplan.output import json_text

    return Response(json_text(document) + "\n", media_type="application/json")


def _error(message: str, status: int, exit_code: int = 2) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error", "exit_code": exit_code},
                        status_code=status)


def _too_large() -> str:
    return f"the request is over {MAX_BODY_BYTES // 1024} KiB"


def _command_line(request, extra: list[str]):
    """How a suggestion's command reads for a user of the page: `vramplan <command>` with the run's flags and the
    command's own (`extra`), the suggestion's flags in place of the ones they change (cli/paste.py paste_command)."""
    from vramplan.cli.paste import paste_command

    argv = [*run_flags(request), *extra]
    return lambda name, flags: paste_command(name, flags, argv=argv, app=_cli_app(name))


@functools.lru_cache(maxsize=None)
def _cli_app(command: str):
    """The CLI's typer app with `command` alone (its option spellings), built once."""
    from vramplan.cli.app import build_app

    return build_app(only=command)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vramplan")
    except PackageNotFoundError:
        return "unknown"
