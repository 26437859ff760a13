"""`--from FILE`: a training config read into a command's model, method and options; explicit flags win."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

from vramplan.errors import NotModelledError, UsageError

DEFAULT_METHOD = "lora"
# Prefix of the assumption lines that name a key of the --from file vramplan does not model.
UNMODELLED_PREFIX = "NOT MODELLED (from the --from file, the answer leaves it out): "


class MergedRun(NamedTuple):
    """A command's run after `--from`: the model, the method, the options, and what the answer must state."""

    model: str
    method: str
    options: dict[str, Any]
    notes: list[str]  # assumption lines the answer states (importer's choices, keys not modelled)
    unmodelled: list[str]


def merge_config_file(
    from_file: str | None, model: str | None, method: str | None, options: dict[str, Any], *,
    refuse_unmodelled: bool = False,
) -> MergedRun:
    """The file's values under the flags given on the command line.

    Keys of the file that change memory but are not modelled are printed to stderr, one line each, and become
    assumption lines of the answer. With `refuse_unmodelled` (check, fit and plan, whose exit code gates a launch
    without `--accept-unmodelled`) they are a usage error instead: a verdict on a run vramplan did not model would
    be a guess.
    """
    if from_file is None:
        if model is None:
            raise UsageError("missing option --model (or --from FILE with a training config that names the model)")
        return MergedRun(model, method or DEFAULT_METHOD, options, [], [])
    from vramplan.importers import load_run_config

    run = load_run_config(Path(from_file))
    chosen_model = model if model is not None else run.model
    if chosen_model is None:
        raise UsageError(f"--from {from_file}: the {run.format} config names no base model; add --model")
    if run.unmodelled and refuse_unmodelled:
        raise NotModelledError(
            f"--from {from_file}: {len(run.unmodelled)} setting(s) change memory and are not modelled: "
            f"{'; '.join(run.unmodelled)}. The verdict would be a guess; pass --accept-unmodelled to get it anyway")
    merged = {**{k: v for k, v in run.options.items() if v is not None}, **options}
    for line in run.unmodelled:
        sys.stderr.write(f"vramplan: note: {from_file}: not modelled: {line}\n")
    notes = [*run.assumptions, *(UNMODELLED_PREFIX + line for line in run.unmodelled)]
    return MergedRun(chosen_model, method or run.method or DEFAULT_METHOD, merged, notes, list(run.unmodelled))
