"""Read a training config (axolotl, LLaMA-Factory, torchtune, TRL/transformers, DeepSpeed) into vramplan's terms.

`load_run_config(path)` returns an ImportedRun: the model as written, the method, resolve_setup's options, how each
memory-relevant key was read (notes), and the keys that change memory but that vramplan does not model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from vramplan.errors import UsageError
from vramplan.importers.axolotl import read_axolotl
from vramplan.importers.accelerate_config import looks_like_accelerate, read_accelerate
from vramplan.importers.deepspeed import read_deepspeed
from vramplan.importers.hf import read_trl
from vramplan.importers.llama_factory import read_llama_factory
from vramplan.importers.trl_objectives import DPO_KEYS, GRPO_KEYS, KTO_KEYS
from vramplan.importers.run import FORMATS, OPTION_NAMES, ConfigValueError, ImportedRun, RunBuilder
from vramplan.importers.torchtune import read_torchtune
from vramplan.models.structure import check_structure

__all__ = ["FORMATS", "OPTION_NAMES", "ImportedRun", "detect_format", "load_run_config"]

READERS: dict[str, Callable[..., RunBuilder]] = {
    "axolotl": read_axolotl,
    "llama-factory": read_llama_factory,
    "torchtune": read_torchtune,
    "trl": read_trl,
    "deepspeed": lambda raw, path: read_deepspeed(raw),
    "accelerate": read_accelerate,
}
ALIASES = {"llamafactory": "llama-factory", "llama_factory": "llama-factory", "hf": "trl", "transformers": "trl",
           "ds": "deepspeed"}
# A folder holding one of these is read as the file (a TRL/Trainer output folder holds training_args.json).
FOLDER_FILES = ("training_args.json", "config.yaml", "config.yml")


def load_run_config(path: Path | str, kind: str | None = None) -> ImportedRun:
    """Read `path` (a YAML or JSON file, or a folder with training_args.json) as `kind`, or detect the format."""
    path = _config_file(Path(path).expanduser())
    raw = _read_mapping(path)
    if kind is None:
        fmt = detect_format(raw)
        if fmt is None:
            raise UsageError(f"{path}: cannot tell which trainer this config is for; give the kind: "
                             + ", ".join(FORMATS))
    else:
        fmt = ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if fmt not in READERS:
            raise UsageError(f"{path}: unknown config kind {kind!r}; choose one of {', '.join(FORMATS)}")
    return _read(fmt, raw, path)


def _read(fmt: str, raw: dict[str, Any], path: Path) -> ImportedRun:
    """Run the format's reader; a key holding a value of the wrong type is one line naming the file and the key."""
    from pydantic import ValidationError

    from vramplan.errors import NotModelledError

    try:
        return READERS[fmt](raw, path).build()
    except ConfigValueError as err:
        raise UsageError(f"{path}: {err}") from None
    except NotModelledError as err:  # a training objective vramplan does not model: refused with the file named
        raise NotModelledError(f"{path}: {err}") from None
    except ValidationError as err:  # ImportedRun's own fields (a model name that is not a string, ...)
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UsageError(f"{path}: {where}: {first['msg']}") from None


def detect_format(raw: dict[str, Any]) -> str | None:
    """Which trainer a config mapping is for, from the keys each one alone uses."""
    model = raw.get("model")
    if isinstance(model, dict) and str(model.get("_component_", "")).startswith("torchtune."):
        return "torchtune"
    if any(isinstance(v, dict) and str(v.get("_component_", "")).startswith("torchtune.") for v in raw.values()):
        return "torchtune"
    if "finetuning_type" in raw or ("model_name_or_path" in raw and "stage" in raw) or "cutoff_len" in raw:
        return "llama-factory"
    if "base_model" in raw and any(k in raw for k in ("adapter", "micro_batch_size", "sequence_len", "datasets")):
        return "axolotl"
    if "zero_optimization" in raw or "train_micro_batch_size_per_gpu" in raw:
        return "deepspeed"
    if looks_like_accelerate(raw):
        return "accelerate"
    hf_keys = ("per_device_train_batch_size", "max_seq_length", "max_length", "packing", "use_peft",
               "gradient_checkpointing", "optim", "output_dir")
    if any(k in raw for k in hf_keys) or any(k in raw for k in (*GRPO_KEYS, *DPO_KEYS, *KTO_KEYS)):
        return "trl"
    return None


def _config_file(path: Path) -> Path:
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as err:  # a name too long for the file system, ...
        raise UsageError(f"{str(path)[:80]}: cannot read ({err.strerror or err.__class__.__name__})") from None
    if is_dir:
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise UsageError(f"{path}: a folder without {' or '.join(FOLDER_FILES)}; give the config file itself")
    if not exists:
        raise UsageError(f"{path}: no such file")
    return path


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({_one_line(err)})") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise UsageError(f"{path}: not valid JSON ({_one_line(err)})") from None
        except RecursionError:
            raise UsageError(f"{path}: not valid JSON (nested too deep)") from None
    else:
        raw = _load_yaml(path, text)
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping of options at the top level, got {type(raw).__name__}")
    check_structure(raw, str(path))
    return raw


def _load_yaml(path: Path, text: str) -> Any:
    import yaml

    # libyaml's C loader reads a large file ~10x faster than the pure-Python one; same safe subset of YAML.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise UsageError(f"{path}: not valid YAML (nested too deep)") from None
    except ValueError as err:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise UsageError(f"{path}: not valid YAML ({_one_line(err)[:120]})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or _one_line(err)
        raise UsageError(f"{path}: not valid YAML{where} ({problem})") from None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
