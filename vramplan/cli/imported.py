"""`--from FILE`: a training config read into a command's run; explicit flags win."""

from __future__ import annotations

import sys
from pathlib import Path

from vramplan.errors import NotModelledError, UsageError
from vramplan.cli.run_options import RunInput
from vramplan.request import DEFAULT_METHOD, RunRequest

# Prefix of the assumption lines that name a key of the --from file vramplan does not model.
UNMODELLED_PREFIX = "NOT MODELLED (from the --from file, the answer leaves it out): "


def merge_config_file(run: RunInput, environment: bool = True) -> RunRequest:
    """The run a command sizes: the --from file's values under the flags given on the command line.

    Keys of the file that change memory but are not modelled are printed to stderr, one line each, and become
    assumption lines of the answer. For a command that gives a verdict (check, fit and plan, whose exit code gates a
    launch) they are a usage error instead, unless `--accept-unmodelled`: a verdict on a run vramplan did not model
    would be a guess. `environment`: without --alloc-conf, the shell's PYTORCH_ALLOC_CONF applies (the job inherits
    it); the web page's runs have no shell of their own.
    """
    settle = _with_environment_alloc_conf if environment else (lambda request: request)
    from_file, model, method = run.from_file, run.model, run.method
    if from_file is None:
        if model is None:
            raise UsageError("missing option --model (or --from FILE with a training config that names the model)")
        return settle(RunRequest(model=model, method=method or DEFAULT_METHOD, options=run.options))
    from vramplan.importers import load_run_config

    imported = load_run_config(Path(from_file))
    chosen_model = model if model is not None else imported.model
    if chosen_model is None:
        raise UsageError(f"--from {from_file}: the {imported.format} config names no base model; add --model")
    if imported.unmodelled and run.verdict and not run.accept_unmodelled:
        raise NotModelledError(
            f"--from {from_file}: {len(imported.unmodelled)} setting(s) change memory and are not modelled: "
            f"{'; '.join(imported.unmodelled)}. The verdict would be a guess; pass --accept-unmodelled to get it "
            "anyway")
    for line in imported.unmodelled:
        sys.stderr.write(f"vramplan: note: {from_file}: not modelled: {line}\n")
    notes = (*imported.assumptions, *(UNMODELLED_PREFIX + line for line in imported.unmodelled))
    return settle(RunRequest(
        model=chosen_model, method=method or imported.method or DEFAULT_METHOD,
        options=run.options.over(imported.options), notes=notes))


def _with_environment_alloc_conf(request: RunRequest) -> RunRequest:
    """Without --alloc-conf, the allocator settings the job would inherit from this shell (PYTORCH_ALLOC_CONF, else
    PYTORCH_CUDA_ALLOC_CONF, as torch reads them), said in the answer's assumptions."""
    from vramplan.allocator.config import alloc_conf_from_environment

    found = alloc_conf_from_environment()
    if request.options.alloc_conf is not None or found is None:
        return request
    name, value = found
    from vramplan.allocator.config import parse_alloc_conf
    from vramplan.errors import VramplanError

    try:
        parse_alloc_conf(value)
    except VramplanError as err:
        raise type(err)(f"${name} (the job's allocator settings, from this shell): {err} (pass --alloc-conf to "
                        "size the job with other settings)") from None
    return request.model_copy(update={
        "options": request.options.replace(alloc_conf=value),
        "notes": (*request.notes, f"allocator settings from ${name}: {value} (--alloc-conf overrides)")})
