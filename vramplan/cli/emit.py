"""`--emit deepspeed|fsdp|accelerate [--emit-to PATH]`: write (or print) the launcher config of a setup.

The configs are built by vramplan/launch/configs.py; this module only serialises them (JSON, or a small YAML
writer for accelerate's flat config) and writes the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vramplan.errors import UsageError
from vramplan.launch.configs import (
    accelerate_config,
    check_emit,
    deepspeed_config,
    trainer_fsdp_arguments,
)
from vramplan.models.spec import ModelSpec
from vramplan.training import DEEPSPEED_STRATEGIES, FSDP_STRATEGIES, TrainingSetup


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar
    raise TypeError(f"no YAML form for {type(value).__name__}")


def to_yaml(data: dict, indent: int = 0) -> str:
    """Block-style YAML of nested dicts of scalars (what an accelerate config holds)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:")
            lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{' ' * indent}{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _yaml_header(setup: TrainingSetup, path: str) -> str:
    lines = [f"# written by vramplan: {setup.strategy.value} on {setup.gpus} GPU(s) x {setup.nodes} node(s)",
             f"# accelerate launch --config_file {path} train.py"]
    if setup.nodes > 1:
        lines.append("# on each node set machine_rank (0..num_machines-1) and main_process_ip (the rank-0 node), "
                     "or pass --machine_rank / --main_process_ip")
    if setup.strategy in FSDP_STRATEGIES:
        lines.append("# FSDP checkpoints each decoder layer itself (fsdp_activation_checkpointing): keep "
                     "TrainingArguments(gradient_checkpointing=False)")
    return "\n".join(lines) + "\n"


def render_configs(fmt: str, setup: TrainingSetup, spec: ModelSpec, emit_to: str | None) -> dict[str, str]:
    """{path or "-" (stdout): text} for the format; raises UsageError when it does not match the strategy."""
    check_emit(fmt, setup)
    if emit_to is not None and emit_to != "-" and not Path(emit_to).name:
        raise UsageError(f"--emit-to {emit_to}: a folder; give the path of the file to write")
    if fmt == "deepspeed":
        return {emit_to or "-": json.dumps(deepspeed_config(setup), indent=2) + "\n"}
    if fmt == "fsdp":
        return {emit_to or "-": json.dumps(trainer_fsdp_arguments(setup, spec), indent=2) + "\n"}
    files = {}
    deepspeed_file = None
    if setup.strategy in DEEPSPEED_STRATEGIES:
        if emit_to is None:
            raise UsageError("--emit accelerate with DeepSpeed writes two files (the YAML and its DeepSpeed JSON): "
                             "give --emit-to PATH")
        target = Path(emit_to)
        deepspeed_file = str(target.with_name(target.stem + ".deepspeed.json"))
        files[deepspeed_file] = json.dumps(deepspeed_config(setup), indent=2) + "\n"
    yaml_path = emit_to or "-"
    files[yaml_path] = _yaml_header(setup, emit_to or "accelerate.yaml") + to_yaml(
        accelerate_config(setup, spec, deepspeed_file))
    return files


def emit_configs(fmt: str, setup: TrainingSetup, spec: ModelSpec, emit_to: str | None) -> bool:
    """Write the config files (or print the config when there is no --emit-to); True when stdout was used."""
    files = render_configs(fmt, setup, spec, emit_to)
    for path in files:
        if path != "-":
            _check_target(Path(path))
    for path, text in files.items():
        if path == "-":
            sys.stdout.write(text)
        else:
            write_file(Path(path), text)
            sys.stderr.write(f"wrote {path}\n")
    return "-" in files


def _check_target(path: Path) -> None:
    """A file path whose folder exists; vramplan creates no folders (a typo in the path would go unnoticed)."""
    try:
        if path.is_dir():
            raise UsageError(f"--emit-to {path}: a folder; give the path of the file to write")
        if not path.parent.exists():
            raise UsageError(f"--emit-to {path}: folder {path.parent} does not exist; create it first")
        if not path.parent.is_dir():
            raise UsageError(f"--emit-to {path}: {path.parent} is not a folder")
    except OSError as err:  # a name too long for the file system, ...
        raise UsageError(f"--emit-to {str(path)[:80]}: cannot write ({err.strerror or err.__class__.__name__})") \
            from None


def write_file(path: Path, text: str) -> None:
    """Write `text` to `path` (a file, or a device such as /dev/stdout); any failure is one usage line."""
    try:
        with path.open("w", encoding="utf-8") as out:
            out.write(text)
    except OSError as err:  # no permission, the disk full, a read-only file system, ...
        raise UsageError(f"--emit-to {path}: cannot write ({err.strerror or err.__class__.__name__})") from None
