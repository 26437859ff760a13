"""Files a training config names (a DeepSpeed JSON, a peft adapter_config.json): the CLI reads them next to the
config; `vramplan serve` reads none, since its config is an upload and a path in it would name the server's own
files (read, and echoed back in the answer's notes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_READS_REFERENCES: ContextVar[bool] = ContextVar("reads_references", default=True)


@contextlib.contextmanager
def without_file_references() -> Iterator[None]:
    """Within this context, a config's references to other files are not opened (each reader says what it does
    instead)."""
    token = _READS_REFERENCES.set(False)
    try:
        yield
    finally:
        _READS_REFERENCES.reset(token)


def reads_references() -> bool:
    return _READS_REFERENCES.get()
