"""The typer app: wires command groups and turns every error into one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.16 vendors click as typer._click; older typer uses click itself
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

from vramplan.cli.estimate import estimate_command
from vramplan.cli.check import check_command
from vramplan.cli.fit import fit_command
from vramplan.cli.hardware import catalog_app
from vramplan.cli.plan import plan_command
from vramplan.cli.probe import probe_command
from vramplan.cli.report import report_command
from vramplan.cli.models import models_command
from vramplan.cli.trace import trace_command
from vramplan.cli.validate import validate_command
from vramplan.cli.paste import record_argv
from vramplan.errors import EXIT_INTERNAL, EXIT_USAGE, VramplanError

app = typer.Typer(
    name="vramplan",
    help="GPU memory planner for LLM fine-tuning (full, LoRA, QLoRA).",
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)
app.command("estimate")(estimate_command)
app.command("models")(models_command)
app.command("trace")(trace_command)
app.command("validate")(validate_command)
app.add_typer(catalog_app, name="catalog")
app.command("plan")(plan_command)
app.command("fit")(fit_command)
app.command("report")(report_command)
app.command("check")(check_command)
app.command("probe")(probe_command)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"vramplan: error: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vramplan` console script; returns the process exit code."""
    debug = os.environ.get("VRAMPLAN_DEBUG") == "1"
    record_argv(argv, app)
    try:
        result = app(args=argv, prog_name="vramplan", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except VramplanError as err:
        if debug:
            raise
        return _fail(str(err), err.exit_code)
    except ClickUsageError as err:
        return _fail(err.format_message().splitlines()[0], EXIT_USAGE)
    except typer.Abort:
        return _fail("aborted", EXIT_INTERNAL)
    except typer.Exit as done:
        return done.exit_code
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): nothing left to say
        return 0
    except Exception as err:  # noqa: BLE001 - the one place that turns surprises into a line
        if debug:
            raise
        return _fail(f"internal error: {err.__class__.__name__}: {err} (set VRAMPLAN_DEBUG=1 for a traceback)",
                     EXIT_INTERNAL)


def run() -> None:
    raise SystemExit(main())
