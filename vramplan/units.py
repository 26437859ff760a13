"""Display units. Memory is computed in bytes; these convert for printing only."""

from __future__ import annotations

GIB = 1024**3  # gibibyte, 2^30 bytes
GB = 1000**3  # gigabyte, 10^9 bytes


def gib(nbytes: int) -> float:
    return nbytes / GIB


def gb(nbytes: int) -> float:
    return nbytes / GB
