"""ImportedRun, what a trainer's config says about memory, and the builder each format's reader fills."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vramplan.errors import NotModelledError, UsageError
from vramplan.options import RunOptions

Format = Literal["axolotl", "llama-factory", "torchtune", "trl", "deepspeed", "accelerate"]
FORMATS: tuple[str, ...] = ("axolotl", "llama-factory", "torchtune", "trl", "deepspeed", "accelerate")

# The options a reader may set: RunOptions' fields (vramplan/options.py), declared once there.
OPTION_NAMES = tuple(RunOptions.model_fields)


class ImportedRun(BaseModel):
    """A training config read into vramplan's terms: the model, the method and resolve_setup's options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Format
    model: str | None = None  # the base model as written (HF id or path), or a catalog id (torchtune)
    method: Literal["full", "lora", "qlora"] | None = None
    options: RunOptions = Field(default_factory=RunOptions)
    unmodelled: list[str] = Field(default_factory=list)  # keys that change memory but vramplan does not model
    notes: list[str] = Field(default_factory=list)  # how each memory-relevant key (or its absence) was read
    assumptions: list[str] = Field(default_factory=list)  # what the answer must state (an upper bound taken, ...)


# The longest a config value is quoted in a note or an error: enough for any real setting.
MAX_SHOWN_CHARACTERS = 200


def show(value: Any) -> str:
    """A config value as the user wrote it: strings bare, lists and dicts as Python shows them; cut at
    MAX_SHOWN_CHARACTERS."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_SHOWN_CHARACTERS else text[:MAX_SHOWN_CHARACTERS] + "..."


# Largest whole number a training config may give for a batch size, sequence length or LoRA rank: 2^31 - 1, torch's
# int32 index range, far above anything a GPU holds; keeps the arithmetic of the estimate finite.
MAX_CONFIG_INT = 2**31 - 1


class ConfigValueError(UsageError):
    """A config key holds a value of the wrong type or range; load_run_config prefixes the file's name."""


def expected(key: str, what: str, value: Any) -> ConfigValueError:
    text = show(value) if isinstance(value, (str, int, float)) else f"{type(value).__name__} {show(value)}"
    text = text if len(text) <= 60 else text[:57] + "..."
    return ConfigValueError(f"{key} must be {what}, got {text}")


def as_int(key: str, value: Any, low: int = 1, high: int = MAX_CONFIG_INT) -> int:
    """A whole number in [low, high]: an int, a float without a fraction, or a string of digits ("8")."""
    number: Any = value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise expected(key, f"a whole number from {low} to {high}", value)
    return number


def as_float(key: str, value: Any, low: float, below: float) -> float:
    """A finite number in [low, below): an int, a float, or a string that reads as one ("0.05")."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number < below:
        raise expected(key, f"a number from {low:g} up to (not including) {below:g}", value)
    return float(number)


def as_mapping(key: str, value: Any) -> dict[str, Any]:
    """A mapping of options; null counts as an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise expected(key, "a mapping of options", value)
    return value


def as_list(key: str, value: Any) -> list[Any]:
    """A list; null counts as an empty one."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise expected(key, "a list", value)
    return value


def as_str(key: str, value: Any) -> str | None:
    """A string (a model name or path); null counts as absent."""
    if value is None or isinstance(value, str):
        return value
    raise expected(key, "a string", value)


class RunBuilder:
    """Collects options, notes and unmodelled keys while a reader walks one config mapping.

    Every top-level key the reader looks at is marked used; `leftovers` reports each key that was neither used nor
    listed as memory-neutral, so a key the reader does not know is never dropped silently.
    """

    def __init__(self, fmt: str, raw: dict[str, Any]):
        self.format = fmt
        self.raw = raw
        self.used: set[str] = set()
        self.options: dict[str, Any] = {}
        self.notes: list[str] = []
        self.unmodelled: list[str] = []
        self.assumptions: list[str] = []
        self.model: str | None = None
        self.method: str | None = None

    @classmethod
    def for_stack(cls, fmt: str, raw: dict[str, Any], model_key: str) -> RunBuilder:
        """A builder for a framework whose config is its own stack (axolotl, LLaMA-Factory), the base model read
        from `model_key`."""
        builder = cls(fmt, raw)
        builder.set("stack", fmt, "format", f"{fmt} config")
        builder.model = builder.get_str(model_key)
        if builder.model:
            builder.note(f"{model_key}: {builder.model} -> model")
        return builder

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value (None counts as absent), marking the key as read."""
        self.used.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    def get_int(self, key: str, default: int | None = None, low: int = 1) -> int | None:
        value = self.get(key)
        return default if value is None else as_int(key, value, low)

    def get_float(self, key: str, low: float, below: float) -> float | None:
        value = self.get(key)
        return None if value is None else as_float(key, value, low, below)

    def get_str(self, key: str) -> str | None:
        return as_str(key, self.get(key))

    def get_mapping(self, key: str) -> dict[str, Any]:
        return as_mapping(key, self.get(key))

    def get_list(self, key: str) -> list[Any]:
        return as_list(key, self.get(key))

    def set(self, option: str, value: Any, key: str, written: Any = None) -> None:
        """Option `option` = `value`, read from `key` (written as `written`, default: value)."""
        self.options[option] = value
        shown = show(value if written is None else written)
        self.notes.append(f"{key}: {shown} -> {option} {show(value)}")

    def int_or_default(self, option: str, key: str, default: int, source: str) -> None:
        """Option `option` = the file's integer `key`, else the framework's `default` (from `source`)."""
        if self.has(key):
            self.set(option, self.get_int(key), key)
        else:
            self.default(option, default, key, source)

    def default(self, option: str, value: Any, key: str, source: str) -> None:
        """Option `option` = the framework's default `value`, `key` being absent from the file."""
        self.options[option] = value
        self.notes.append(f"{key} absent -> {option} {show(value)} ({source})")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def assume(self, text: str) -> None:
        """A choice the answer states among its assumptions (and the notes)."""
        self.notes.append(text)
        self.assumptions.append(text)

    def not_modelled(self, key: str, value: Any, why: str) -> None:
        self.unmodelled.append(f"{key}={show(value)} ({why})")

    def refuse_objective(self, key: str, value: Any, objective: str) -> None:
        """A training objective vramplan does not model (preference, RL, reward): no answer at all, whatever the
        command, since an SFT estimate of it would be a different job's memory."""
        raise NotModelledError(
            f"{key}: {show(value)} is {objective}, which vramplan does not model yet (a reference model, paired or "
            "generated batches, a reward head change memory); an SFT estimate would not be this job's, so none is "
            "given")

    def leftovers(self, quiet: frozenset[str], where: str = "") -> None:
        """Report each top-level key neither read nor known to leave memory alone."""
        for key, value in self.raw.items():
            if key in self.used or key in quiet or value is None:
                continue
            self.not_modelled(f"{where}{key}", value, f"not read by vramplan's {self.format} reader: may change memory")

    def build(self) -> ImportedRun:
        try:
            options = RunOptions.of(**{k: v for k, v in self.options.items() if v is not None})
        except UsageError as err:  # a value of the wrong type for an option, named by its flag
            raise ConfigValueError(str(err)) from None
        return ImportedRun(
            format=self.format,
            model=self.model,
            method=self.method,
            options=options,
            unmodelled=list(self.unmodelled),
            notes=list(self.notes),
            assumptions=list(self.assumptions),
        )


def leftover_keys(builder: RunBuilder, block: dict[str, Any], known: frozenset[str], where: str) -> None:
    """Report the keys of a nested block (`where` is its dotted prefix) that the reader does not know."""
    for key, value in block.items():
        if key not in known and value is not None:
            builder.not_modelled(f"{where}.{key}", value,
                                 f"not read by vramplan's {builder.format} reader: may change memory")
