"""Read the project's TOML files (matrix, jobs, catalogs, mappings) with one-line usage errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from vramplan.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Record = TypeVar("Record", bound=BaseModel)


def read_toml(path: Path, where: str | None = None) -> dict[str, Any]:
    """The file's table; `where` (default: the path) starts the message when it is missing or not TOML."""
    where = where or str(path)
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{where}: a folder, not a TOML file") from None
    except OSError as err:  # no permission, a name too long for the file system, ...
        raise UsageError(f"{where}: cannot read ({err.strerror or err.__class__.__name__})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{where}: not UTF-8 text (byte {err.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{where}: not valid TOML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise UsageError(f"{where}: not valid TOML (nested too deep)") from None


def parse_record(kind: type[Record], raw: dict[str, Any], where: str) -> Record:
    """`kind(**raw)`, with the first validation error as a one-line usage error: `where: field: message`."""
    try:
        return kind(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "file"
        raise UsageError(f"{where}: {field}: {first['msg']}") from None


class RunRecord(BaseModel):
    """A run as a TOML file writes it (a jobs file's [[job]], the matrix's [[case]]): model, method, and options
    with RunOptions' names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    method: str
    options: dict[str, Any] = {}
