"""ImportedRun, what a trainer's config says about memory, and the builder each format's reader fills."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Format = Literal["axolotl", "llama-factory", "torchtune", "trl", "deepspeed"]
FORMATS: tuple[str, ...] = ("axolotl", "llama-factory", "torchtune", "trl", "deepspeed")

# resolve_setup's option names, plus the ones the estimator is gaining (stack ... activation_offload).
OPTION_NAMES = (
    "batch_size", "seq_len", "precision", "optimizer", "gradient_checkpointing", "lora_rank", "lora_targets",
    "lora_dropout", "double_quant", "gpus", "nodes", "strategy", "offload", "stack", "loss", "liger", "packing",
    "attn", "optimizer_in_backward", "activation_offload",
)


class ImportedRun(BaseModel):
    """A training config read into vramplan's terms: the model, the method and resolve_setup's options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Format
    model: str | None = None  # the base model as written (HF id or path), or a catalog id (torchtune)
    method: Literal["full", "lora", "qlora"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    unmodelled: list[str] = Field(default_factory=list)  # keys that change memory but vramplan does not model
    notes: list[str] = Field(default_factory=list)  # how each memory-relevant key (or its absence) was read


def show(value: Any) -> str:
    """A config value as the user wrote it: strings bare, lists and dicts as Python shows them."""
    return value if isinstance(value, str) else repr(value)


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
        self.model: str | None = None
        self.method: str | None = None

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value (None counts as absent), marking the key as read."""
        self.used.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    def set(self, option: str, value: Any, key: str, written: Any = None) -> None:
        """Option `option` = `value`, read from `key` (written as `written`, default: value)."""
        self.options[option] = value
        shown = show(value if written is None else written)
        self.notes.append(f"{key}: {shown} -> {option} {show(value)}")

    def default(self, option: str, value: Any, key: str, source: str) -> None:
        """Option `option` = the framework's default `value`, `key` being absent from the file."""
        self.options[option] = value
        self.notes.append(f"{key} absent -> {option} {show(value)} ({source})")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def not_modelled(self, key: str, value: Any, why: str) -> None:
        self.unmodelled.append(f"{key}={show(value)} ({why})")

    def leftovers(self, quiet: frozenset[str], where: str = "") -> None:
        """Report each top-level key neither read nor known to leave memory alone."""
        for key, value in self.raw.items():
            if key in self.used or key in quiet or value is None:
                continue
            self.not_modelled(where + key, value, f"not read by vramplan's {self.format} reader: may change memory")

    def build(self) -> ImportedRun:
        return ImportedRun(
            format=self.format,
            model=self.model,
            method=self.method,
            options=dict(self.options),
            unmodelled=list(self.unmodelled),
            notes=list(self.notes),
        )


def leftover_keys(builder: RunBuilder, block: dict[str, Any], known: frozenset[str], where: str) -> None:
    """Report the keys of a nested block (`where` is its dotted prefix) that the reader does not know."""
    for key, value in block.items():
        if key not in known and value is not None:
            builder.not_modelled(f"{where}.{key}", value,
                                 f"not read by vramplan's {builder.format} reader: may change memory")
