"""The CLI flags of RunOptions, generated from its fields: declared once in vramplan/options.py, shared by every
command that sizes a run (estimate, trace, check, fit, plan, probe).

`@with_run_options()` adds one typer option per field to a command (after its --from option) and hands the command
a `run: RunOptions` built from them. Help texts, flag names and defaults come from the field, so a new option is
one field in RunOptions plus its rule.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Any, Callable, NamedTuple, Optional

import typer

from vramplan.choices import OPTION_CHOICES
from vramplan.options import RunOptions


def _gpu_count(value: Optional[str]) -> Optional[int]:
    """--gpus is a count everywhere; a list of indices is --devices (check)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        hint = " (to pick local GPUs by index use --devices 0,1)" if "," in text or text == "" else ""
        raise typer.BadParameter(f"{value!r} is not a GPU count{hint}", param_hint="'--gpus'")
    return int(text)


def _completer(choices) -> Callable[[str], list[str]]:
    return lambda incomplete: [c.value for c in choices if c.value.startswith(incomplete)]


def _option_parameter(name: str, field) -> inspect.Parameter:
    """The typer parameter of one RunOptions field."""
    extra = field.json_schema_extra
    flag = extra.get("switch") or extra.get("flag") or "--" + name.replace("_", "-")
    kind = typing.get_args(field.annotation)[0]  # X of `X | None` (lora_targets: its str spelling)
    settings: dict[str, Any] = {"help": field.description}
    if "switch" in extra:
        kind = bool
        settings["show_default"] = False
    if name in OPTION_CHOICES:
        settings["autocompletion"] = _completer(OPTION_CHOICES[name])
    if name == "gpus":
        kind = str
        settings.update(callback=_gpu_count, metavar="N")
    if kind not in (int, float, bool):
        kind = str
    annotation = Annotated[Optional[kind], typer.Option(flag, **settings)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _run_parameters() -> list[inspect.Parameter]:
    """--model, --method and --from: what every sizing command starts with."""
    from vramplan.cli import options as o

    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
            for name, annotation in (("model", o.ModelOrFile), ("method", o.MethodOrFile), ("from_file", o.FromFile))]


class RunInput(NamedTuple):
    """What a sizing command was given about the run: --model, --method, --from and the RunOptions flags; for a
    command that gives a verdict (check, fit, plan) also --headroom, --accept-unmodelled and --catalog."""

    model: str | None
    method: str | None
    from_file: str | None
    options: RunOptions
    verdict: bool = False
    headroom: float = 0.0  # the fraction of each GPU kept free
    accept_unmodelled: bool = False
    catalog: str | None = None


def _verdict_parameters() -> list[inspect.Parameter]:
    """--headroom, --accept-unmodelled and --catalog: what every command that gives a verdict takes."""
    from vramplan.cli import options as o

    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, annotation, default in (("headroom", o.Headroom, o.HEADROOM_DEFAULT),
                                              ("accept_unmodelled", o.AcceptUnmodelled, False),
                                              ("catalog", o.CatalogDir, None))]


def with_run_options(*, layout: bool = True, verdict: bool = False) -> Callable:
    """Give the decorated command --model, --method, --from and every RunOptions flag (the layout ones,
    --gpus/--nodes/--strategy/--offload, only with `layout`). It receives them as `run: RunInput` and declares only
    its own options."""
    names = [name for name, field in RunOptions.model_fields.items()
             if layout or not field.json_schema_extra["layout"]]

    def decorate(command: Callable) -> Callable:
        hints = typing.get_type_hints(command, include_extras=True)
        taken = {"run"}
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command).parameters.values() if p.name not in taken]
        added = _run_parameters() + [_option_parameter(name, RunOptions.model_fields[name]) for name in names]
        added += _verdict_parameters() if verdict else []

        @functools.wraps(command)
        def wrapper(**values):
            given = {name: values.pop(name) for name in names}
            options = RunOptions.of(**{k: v for k, v in given.items() if v is not None})
            run = RunInput(values.pop("model"), values.pop("method"), values.pop("from_file"), options)
            if verdict:
                from vramplan.units import parse_fraction

                run = run._replace(verdict=True, headroom=parse_fraction(values.pop("headroom"), "--headroom"),
                                   accept_unmodelled=values.pop("accept_unmodelled"), catalog=values.pop("catalog"))
            return command(run=run, **values)

        del wrapper.__wrapped__  # typer must read the signature below, not the command's own
        wrapper.__signature__ = inspect.Signature(added + own)
        wrapper.__annotations__ = {}
        return wrapper

    return decorate
