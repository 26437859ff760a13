"""One exception family; the CLI turns each into a one-line message and its exit code."""

from __future__ import annotations

# Documented exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DOES_NOT_FIT = 3
EXIT_CANNOT_CHECK = 4


class VramplanError(Exception):
    """Base of every error vramplan raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(VramplanError):
    """The user asked for something malformed or unknown."""

    exit_code = EXIT_USAGE


class NotModelledError(UsageError):
    """A valid request that vramplan does not model yet: refused rather than guessed."""


class ModelConfigError(UsageError):
    """A model name, alias or config.json that cannot be resolved to an architecture."""


class CannotCheckError(VramplanError):
    """The check cannot run here (no GPU or driver, a missing optional dependency)."""

    exit_code = EXIT_CANNOT_CHECK


def require_extra(extra: str, *modules: str) -> None:
    """Fail with one line naming the pip extra when a command's optional dependencies are missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise CannotCheckError(
            f"this command needs {', '.join(missing)}: pip install 'vramplan[{extra}]' "
            "(CPU torch first: pip install torch)"
        )
