"""`--from FILE`: a training config read into a command's model, method and options; explicit flags win."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vramplan.errors import UsageError

DEFAULT_METHOD = "lora"


def merge_config_file(
    from_file: str | None, model: str | None, method: str | None, options: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """(model, method, options) for a command: the file's values under the flags given on the command line.

    Keys of the file that change memory but are not modelled are printed to stderr, one line each, so a pre-flight
    in a launch script shows what the answer leaves out.
    """
    if from_file is None:
        if model is None:
            raise UsageError("missing option --model (or --from FILE with a training config that names the model)")
        return model, method or DEFAULT_METHOD, options
    from vramplan.importers import load_run_config

    run = load_run_config(Path(from_file))
    chosen_model = model if model is not None else run.model
    if chosen_model is None:
        raise UsageError(f"--from {from_file}: the {run.format} config names no base model; add --model")
    merged = {**{k: v for k, v in run.options.items() if v is not None}, **options}
    for line in run.unmodelled:
        sys.stderr.write(f"vramplan: note: {from_file}: not modelled: {line}\n")
    return chosen_model, method or run.method or DEFAULT_METHOD, merged
