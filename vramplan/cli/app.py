"""The typer app: wires command groups and turns every error into one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.16 vendors click as typer._click; older typer uses click itself
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

from vramplan.cli.paste import record_argv
from vramplan.errors import EXIT_INTERNAL, EXIT_USAGE, VramplanError

# Each command and where it lives: a run imports (and typer builds) only the command it runs, so the cold start of
# `vramplan estimate` does not pay for the other ten. `vramplan --help` and shell completion build them all.
COMMANDS = {
    "estimate": ("vramplan.cli.estimate", "estimate_command"),
    "models": ("vramplan.cli.models", "models_command"),
    "trace": ("vramplan.cli.trace", "trace_command"),
    "validate": ("vramplan.cli.validate", "validate_command"),
    "catalog": ("vramplan.cli.hardware", "catalog_app"),
    "plan": ("vramplan.cli.plan", "plan_command"),
    "fit": ("vramplan.cli.fit", "fit_command"),
    "report": ("vramplan.cli.report", "report_command"),
    "check": ("vramplan.cli.check", "check_command"),
    "probe": ("vramplan.cli.probe", "probe_command"),
    "serve-size": ("vramplan.cli.serve_size", "serve_size_command"),
    "serve": ("vramplan.cli.serve", "serve_command"),
}


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every command, or with `only` that one (the others are not imported)."""
    import importlib

    built = typer.Typer(
        name="vramplan",
        help="GPU memory planner for LLM fine-tuning (full, LoRA, QLoRA).",
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        no_args_is_help=True,
    )

    @built.callback()
    def _group() -> None:
        """GPU memory planner for LLM fine-tuning (full, LoRA, QLoRA)."""  # keeps one command a subcommand

    for name, (module, attribute) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            built.add_typer(target, name=name)
        else:
            built.command(name)(target)
    return built


def _invoked(argv: list[str]) -> str | None:
    """The command `argv` runs, when it names one and nothing needs the whole app (help, completion)."""
    if any(name.startswith("_VRAMPLAN_COMPLETE") for name in os.environ) or not argv:
        return None
    return argv[0] if argv[0] in COMMANDS else None


def __getattr__(name: str):
    if name == "app":  # the whole app, for tests and tools that inspect every command
        return build_app()
    raise AttributeError(name)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"vramplan: error: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vramplan` console script; returns the process exit code."""
    debug = os.environ.get("VRAMPLAN_DEBUG") == "1"
    args = list(sys.argv[1:] if argv is None else argv)
    app = build_app(_invoked(args))
    record_argv(args, app)
    try:
        result = app(args=args, prog_name="vramplan", standalone_mode=False)
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

