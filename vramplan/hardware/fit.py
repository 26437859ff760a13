"""`vramplan fit`: the largest batch, sequence length or LoRA rank that fits one GPU.

Memory never falls when batch, sequence or rank grow (tests/estimate/test_properties.py holds the estimator to
that), so the largest fitting value is found by bisection: about log2(limit) estimates, milliseconds in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from vramplan.errors import UsageError
from vramplan.estimate import estimate_memory
from vramplan.result import Estimate
from vramplan.models.catalog import ResolvedModel
from vramplan.training import TrainingSetup

Solve = Literal["batch-size", "seq-len", "lora-rank", "num-generations", "completion-len"]
SEARCH_LIMITS = {"batch-size": 4096, "seq-len": 1_048_576, "lora-rank": 4096, "num-generations": 4096,
                 "completion-len": 1_048_576}
# What each solve needs of the objective: GRPO's two are its own; seq-len is GRPO's prompt + completion.
GRPO_SOLVES = ("num-generations", "completion-len")


# Values people set: sequence lengths in multiples of 256 (64 below 256), as configs and attention kernels' tiles
# use them, and LoRA ranks as powers of two (peft's and every recipe's r = 8, 16, 32, 64, ...).
SEQ_LEN_STEP = 256
SHORT_SEQ_LEN_STEP = 64


def usable_value(solve: Solve, exact: int) -> int:
    """The largest value people use that is not above `exact` (the exact limit is reported beside it)."""
    if solve in ("seq-len", "completion-len"):
        if exact < SHORT_SEQ_LEN_STEP:
            return exact
        step = SEQ_LEN_STEP if exact >= SEQ_LEN_STEP else SHORT_SEQ_LEN_STEP
        return exact // step * step
    if solve == "lora-rank":
        return 1 << (exact.bit_length() - 1)
    return exact


class FitResult(BaseModel):
    solve: Solve
    value: int | None  # None: not even the smallest value fits; else the exact limit rounded to a usable value
    exact_value: int | None = None  # the largest value that fits, unrounded
    limit: int
    usable_bytes: int
    estimate: Estimate | None  # at the value found
    estimates_run: int


def _setter(setup: TrainingSetup, solve: Solve) -> Callable[[int], TrainingSetup]:
    grpo = setup.objective == "grpo"
    if (solve in GRPO_SOLVES) != grpo and solve != "batch-size" and solve != "lora-rank":
        raise UsageError(f"--solve {solve} needs --objective grpo" if not grpo else
                         "--objective grpo: solve completion-len (the sequence is --prompt-len + --completion-len)")
    if solve == "num-generations":
        # one prompt's group per micro-batch (per_device_train_batch_size = num_generations): the generation batch
        # and the step grow with it; num_generations alone, at a fixed batch, does not move memory
        return lambda value: setup.model_copy(update={
            "batch_size": value, "grpo": setup.grpo.model_copy(update={"num_generations": value})})
    if solve == "completion-len":
        return lambda value: setup.model_copy(update={"seq_len": setup.prompt_len + value})
    if solve == "batch-size":
        return lambda value: setup.model_copy(update={"batch_size": value})
    if solve == "seq-len":
        return lambda value: setup.model_copy(update={"seq_len": value})
    if setup.lora is None:
        raise UsageError("--solve lora-rank needs --method lora or qlora")
    return lambda value: setup.model_copy(update={"lora": setup.lora.model_copy(update={"rank": value})})


def _grpo_valid(setup: TrainingSetup, solve: Solve, value: int) -> int | None:
    """GRPOConfig's checks on a solved value (grpo_config.py __post_init__): num_generations >= 2, and a batch whose
    generation batch (x steps_per_generation) holds whole groups of num_generations; None when none is left."""
    if setup.objective != "grpo":
        return value
    if solve == "num-generations":
        return value if value >= 2 else None
    if solve == "batch-size":
        generations, steps = setup.grpo.num_generations, setup.grpo.steps_per_generation
        multiple = generations // math.gcd(generations, steps)
        value = value // multiple * multiple
        return value or None
    return value


def largest_fitting(model: ResolvedModel, setup: TrainingSetup, solve: Solve, usable_bytes: int,
                    total_bytes: int | None = None) -> FitResult:
    """The largest value of `solve` whose estimate's need on a GPU of `total_bytes` (Estimate.needed_on: a
    colocated engine's share counted; default usable_bytes) fits in `usable_bytes`."""
    make = _setter(setup, solve)
    limit = SEARCH_LIMITS[solve]
    runs = 0

    def fits(value: int) -> Estimate | None:
        nonlocal runs
        runs += 1
        result = estimate_memory(model, make(value))
        return result if result.needed_on(total_bytes or usable_bytes) <= usable_bytes else None

    best = fits(1)
    if best is None:
        return FitResult(solve=solve, value=None, limit=limit, usable_bytes=usable_bytes, estimate=None,
                         estimates_run=runs)
    low, high = 1, limit  # invariant: low fits; anything above high is not searched
    top = fits(high)
    if top is not None:
        return FitResult(solve=solve, value=high, exact_value=high, limit=limit, usable_bytes=usable_bytes, estimate=top,
                         estimates_run=runs)
    while high - low > 1:
        middle = (low + high) // 2
        result = fits(middle)
        if result is None:
            high = middle
        else:
            low, best = middle, result
    rounded = _grpo_valid(setup, solve, usable_value(solve, low))
    if rounded is None:
        return FitResult(solve=solve, value=None, exact_value=low, limit=limit, usable_bytes=usable_bytes,
                         estimate=None, estimates_run=runs)
    if rounded != low:
        best = fits(rounded)
    return FitResult(solve=solve, value=rounded, exact_value=low, limit=limit, usable_bytes=usable_bytes,
                     estimate=best, estimates_run=runs)
