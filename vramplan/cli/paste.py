"""The command a suggestion prints: the user's own command line with the suggested flags in place of theirs.

`main` records the arguments it was called with; `paste_command` removes every flag a suggestion changes (both
spellings of a switch, a valued option with its value, `--opt=value`) and appends the new flags, so pasting the
line reruns the same command with only that change.
"""

from __future__ import annotations

import functools
import shlex
import sys

# The arguments `vramplan` was called with, without the program name, and the typer app that parsed them (both set
# by vramplan.cli.app.main).
_ARGV: list[str] = []
_APP: list = []
# Flags that a change of an option makes meaningless: choosing the job's GPU count drops a --devices list.
_DROPPED_WITH = {"--gpus": ("--devices",)}


def record_argv(argv: list[str] | None, app) -> None:
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    _APP[:] = [app]


def _option_spellings(command_name: str, app=None) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each spelling of each option of the command -> (all its spellings, whether it takes a value), in `app`
    (else the recorded one); built once per command and app however many suggestions are printed."""
    return _spellings_of(command_name, _APP[0] if app is None else app)


@functools.lru_cache(maxsize=32)
def _spellings_of(command_name: str, app) -> dict[str, tuple[tuple[str, ...], bool]]:
    import typer

    command = typer.main.get_command(app)
    for part in command_name.split():
        command = command.commands[part]
    spellings = {}
    for param in command.params:
        names = tuple(getattr(param, "opts", ())) + tuple(getattr(param, "secondary_opts", ()))
        takes_value = not getattr(param, "is_flag", False)
        for name in names:
            spellings[name] = (names, takes_value)
    return spellings


def paste_command(command_name: str, flags: list[str], argv: list[str] | None = None, app=None) -> str:
    """`vramplan <command> ...` as the user typed it (or `argv`), with `flags` replacing the options they change;
    `app`: the typer app whose spellings apply (else the one `main` recorded)."""
    argv = list(_ARGV if argv is None else argv)
    words = command_name.split()
    prefix = argv[:len(words)] if argv[:len(words)] == words else words
    rest = argv[len(words):] if argv[:len(words)] == words else argv
    spellings = _option_spellings(command_name, app)
    drop: set[str] = set()
    for flag in (f for f in flags if f.startswith("--")):
        names = spellings.get(flag, ((flag,), False))[0]
        drop.update(names)
        for other in _DROPPED_WITH.get(flag, ()):
            drop.update(spellings.get(other, ((other,), True))[0])
    kept: list[str] = []
    skip_value = False
    for word in rest:
        if skip_value:
            skip_value = False
            continue
        name = word.split("=", 1)[0]
        if name in drop:
            skip_value = spellings.get(name, ((), False))[1] and "=" not in word
            continue
        kept.append(word)
    return shlex.join(["vramplan", *prefix, *kept, *flags])
