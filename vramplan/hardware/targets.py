"""What `--gpu` names: a catalog GPU (its id, or a name written as people write it), or a memory size.

`--gpu rtx-4090`, `--gpu 4090`, `--gpu "RTX 4090"` and `--gpu "NVIDIA GeForce RTX 4090"` are the same card; `--gpu
h100` names three, so the error lists them; `--gpu 24GB` or `--gpu 80GiB` is a card of that much memory (GB = 10^9
bytes, GiB = 2^30 bytes, taken as written: a card sold as "24 GB" shows 24 GiB in nvidia-smi, so `24GB` is the
smaller, safer figure).
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from vramplan.errors import UsageError

# Memory sizes `--gpu` accepts: a number and a unit (decimal or binary).
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gb|gib|g|tb|tib)\s*$", re.IGNORECASE)
_UNIT_BYTES = {"gb": 10**9, "g": 10**9, "gib": 2**30, "tb": 10**12, "tib": 2**40}
_UNIT_LABEL = {"gb": "GB", "g": "GB", "gib": "GiB", "tb": "TB", "tib": "TiB"}
# Largest memory a size may name: well above any accelerator sold (B300: 288 GB), small enough to stay sane.
MAX_GPU_MEMORY_BYTES = 4 * 2**40
# Smallest: below this no LLM fine-tuning fits at all.
MIN_GPU_MEMORY_BYTES = 2**30
# Words that vendors put in names and users leave out.
_NOISE_WORDS = {"nvidia", "geforce", "amd", "instinct", "radeon", "tesla", "gpu", "the"}


class GpuTarget(BaseModel):
    """The GPU a command checks against: its memory and where that figure comes from."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    memory_bytes: int
    source: Literal["catalog", "size", "local"]


def _tokens(text: str) -> list[str]:
    words = re.split(r"[\s_\-/()]+", text.lower())
    return [word for word in words if word and word not in _NOISE_WORDS]


def _size_target(text: str) -> GpuTarget | None:
    match = _SIZE.match(text)
    if match is None:
        return None
    unit = match.group(2).lower()
    nbytes = int(float(match.group(1)) * _UNIT_BYTES[unit])
    if not MIN_GPU_MEMORY_BYTES <= nbytes <= MAX_GPU_MEMORY_BYTES:
        raise UsageError(f"--gpu {text!r}: give a memory size between 1 GiB and 4 TiB")
    label = f"{match.group(1)} {_UNIT_LABEL[unit]}"
    return GpuTarget(id=text.strip(), name=f"a GPU with {label} ({nbytes:,} bytes)", memory_bytes=nbytes,
                     source="size")


def resolve_gpu_target(text: str, gpus: dict) -> GpuTarget:
    """The target `text` names among the catalog's `gpus` (id -> Gpu record), or a usage error with suggestions."""
    size = _size_target(text)
    if size is not None:
        return size
    if text in gpus:
        return _catalog(gpus[text])
    wanted = _tokens(text)
    if not wanted:
        raise UsageError(f"--gpu {text!r}: name a catalog GPU (vramplan catalog gpus) or a size like 24GB")
    joined = "-".join(wanted)
    exact = [gpu for gpu in gpus.values() if joined in (gpu.id, "-".join(_tokens(gpu.name)))]
    if len(exact) == 1:
        return _catalog(exact[0])
    # Every word the user wrote begins a word of the card's id or name ("h100 sxm" -> h100-sxm5-80gb).
    matches = [gpu for gpu in gpus.values()
               if all(any(have.startswith(word) for have in {*_tokens(gpu.id), *_tokens(gpu.name)})
                      for word in wanted)]
    if len(matches) == 1:
        return _catalog(matches[0])
    if matches:
        ids = ", ".join(sorted(gpu.id for gpu in matches))
        raise UsageError(f"--gpu {text!r} names several catalog GPUs: {ids}; pick one")
    close = difflib.get_close_matches(joined, list(gpus), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (vramplan catalog gpus lists them)"
    raise UsageError(f"--gpu {text!r} is not a catalog GPU nor a size like 24GB{hint}")


def _catalog(gpu) -> GpuTarget:
    return GpuTarget(id=gpu.id, name=gpu.name, memory_bytes=gpu.memory_bytes, source="catalog")
