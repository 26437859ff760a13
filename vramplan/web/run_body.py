"""What the page sends: a run (a catalog model, a pasted config.json or a training config's text, the method and
the RunOptions given), bounded, turned into the RunRequest the CLI builds from its flags.

Nothing names a file on the server: a model is a catalog name (the Hub and local paths are the CLI's), a pasted
config.json or training config is written to a private temporary folder, read, and the folder removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vramplan.errors import UsageError, VramplanError
from vramplan.units import DEFAULT_HEADROOM

# The largest config.json or training config the page may send (a Llama config.json is under 1 KiB; a training YAML a
# few KiB).
MAX_CONFIG_BYTES = 256 * 1024
# The largest request body the server reads: a config at its bound, escaped, and the options.
MAX_BODY_BYTES = 4 * MAX_CONFIG_BYTES
# Bounds on numeric options: the largest count any option takes (a sequence of 10M tokens, a batch of 10M rows).
MAX_OPTION_INT = 10_000_000
MAX_OPTION_FLOAT = 1e6
# What a pasted config.json without its own _name_or_path is called in the answer.
PASTED_CONFIG_NAME = "pasted config.json"
# The training-config suffixes --from reads.
FROM_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


class TrainingConfigText(BaseModel):
    """A training config's text as uploaded, with its file name (the suffix says the format)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200, description="the file's name, e.g. train.yaml (its folder is ignored)")
    text: str = Field(max_length=MAX_CONFIG_BYTES)


class RunBody(BaseModel):
    """A run: `model` (a catalog name or size alias), or `config` (a config.json's contents), or `from_config` (a
    training config, as `--from`); `method`; `options`, RunOptions' fields (the CLI's flags with underscores)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=200)
    method: str | None = Field(None, max_length=20)
    options: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] | None = None
    from_config: TrainingConfigText | None = None
    accept_unmodelled: bool = Field(False, description="a verdict even when the training config has settings "
                                                       "vramplan does not model, as --accept-unmodelled")


class PlanBody(RunBody):
    tokens: str = Field("100M", max_length=20, description="training tokens, as --tokens (100M, 2B, ...)")
    epochs: float = Field(1.0, gt=0, le=1000)
    headroom: float = Field(DEFAULT_HEADROOM, ge=0, lt=1,
                            description="the fraction of each GPU kept free, as --headroom")


class GpuBody(RunBody):
    gpu: str = Field(max_length=100, description="a catalog GPU id (vramplan catalog gpus) or a size such as 24GB")
    headroom: float = Field(DEFAULT_HEADROOM, ge=0, lt=1,
                            description="the fraction of the GPU kept free, as --headroom")


class FitBody(GpuBody):
    solve: str = Field("batch-size", max_length=30)


def bounded_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options, each number within its bound (a one-line UsageError naming the flag otherwise)."""
    for name, value in options.items():
        flag = "--" + str(name).replace("_", "-")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and abs(value) > MAX_OPTION_INT:
            raise UsageError(f"{flag} {value}: at most {MAX_OPTION_INT:,}")
        if isinstance(value, float) and (not math.isfinite(value) or abs(value) > MAX_OPTION_FLOAT):
            raise UsageError(f"{flag} {value}: out of range")
        if isinstance(value, (list, dict)):
            raise UsageError(f"{flag}: give one value, not a {type(value).__name__}")
    return options


class PageRun:
    """A page's run: its RunRequest, and where a pasted file was put while the answer is computed."""

    def __init__(self, request, names: dict[str, str]):
        self.request = request
        self._names = names  # the temporary copy's path -> the name the user knows it by

    def clean(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with the server's temporary paths replaced by the names of the user's files."""
        if not self._names:
            return document
        return json.loads(_as_uploaded(json.dumps(document), self._names, quote=lambda name: json.dumps(name)[1:-1]))


def _as_uploaded(text: str, names: dict[str, str], quote=lambda name: name) -> str:
    """`text` with each temporary path in `names` (files before their folder) replaced by the user's name for it
    (`quote`d as the text is: JSON strings escape theirs)."""
    for path, name in names.items():
        text = text.replace(path, quote(name))
    return text


@contextlib.contextmanager
def run_request(body: RunBody, verdict: bool = False) -> Iterator[PageRun]:
    """The run of `body`, as the CLI's --model/--method/--from and flags build it (no file a config names is
    opened, and the server's PYTORCH_ALLOC_CONF is not the job's); a context, since a pasted file lives in a
    temporary folder while the answer is computed."""
    from vramplan.cli.imported import merge_config_file
    from vramplan.cli.run_options import RunInput
    from vramplan.importers.references import without_file_references
    from vramplan.options import RunOptions

    options = RunOptions.of(**bounded_options(dict(body.options)))
    sources = [name for name in ("model", "config", "from_config") if getattr(body, name) is not None]
    if len(sources) > 1 and sources != ["model", "from_config"]:
        raise UsageError(f"give one model: {' and '.join(sources)} were both given")
    names: dict[str, str] = {}  # a temporary path -> the user's name for it, files before their folder
    with tempfile.TemporaryDirectory(prefix="vramplan-web-") as folder, _named_as_uploaded(names), \
            without_file_references():
        model, from_file = body.model, None
        if body.model is not None:
            _catalog_only(body.model)
        if body.config is not None:
            # the answer names the model by config.json's _name_or_path, else by its folder: say it was pasted
            named = {"_name_or_path": PASTED_CONFIG_NAME, **body.config}
            model = str(_write(Path(folder) / "config.json", json.dumps(named)))
            names[model] = "config.json"
        if body.from_config is not None:
            suffix = Path(body.from_config.name).suffix.lower()
            if suffix not in FROM_SUFFIXES:
                raise UsageError(f"{body.from_config.name}: a training config is {', '.join(FROM_SUFFIXES)}")
            from_file = str(_write(Path(folder) / f"training{suffix}", body.from_config.text))
            names[from_file] = Path(body.from_config.name).name
        if model is None and from_file is None:
            raise UsageError("missing model: pick a catalog model, paste a config.json or a training config")
        if names:  # a file was written: nothing else of the folder's may show either
            names[folder] = "."
        request = merge_config_file(RunInput(model=model, method=body.method, from_file=from_file, options=options,
                                             verdict=verdict, accept_unmodelled=body.accept_unmodelled),
                                    environment=False)
        if body.config is None and body.model is None:
            _catalog_only(request.model)  # the training config's model: a catalog one, never a path or Hub id
        yield PageRun(request, names)


@contextlib.contextmanager
def _named_as_uploaded(names: dict[str, str]) -> Iterator[None]:
    """Errors name the user's file, not the server's temporary copy of it (`names`, as filled while it runs)."""
    try:
        yield
    except VramplanError as error:
        error.args = (_as_uploaded(str(error), names),)
        raise


def _catalog_only(model: str) -> None:
    from vramplan.models.catalog import in_catalog

    if not in_catalog(model):
        raise UsageError(f"model {model!r} is not in vramplan's catalog: pick one from the list, or paste its "
                         "config.json")


def _write(path: Path, text: str) -> Path:
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise UsageError(f"the pasted file is over {MAX_CONFIG_BYTES // 1024} KiB")
    path.write_text(text)
    return path
