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
