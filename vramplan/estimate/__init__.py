"""The estimate of one GPU's memory for one training step: the public entry of estimate/.

estimate_memory composes the phases and their peak (compose/) from the memory terms (components/), the parameter
inventory (params.py) and the strategy's per-GPU states (strategies/); refuse_unmodelled (scope.py) refuses what
has no traced rule. estimate/README.md maps every memory term to its file, its source and its test.
"""

from __future__ import annotations

from vramplan.estimate.compose import estimate_memory
from vramplan.estimate.compose.peak import estimate_from_phases
from vramplan.estimate.scope import refuse_unmodelled
from vramplan.result import PHASES, Estimate, PhasePeak, StepPeak  # noqa: F401 - the results live in vramplan.result

__all__ = ["Estimate", "PhasePeak", "StepPeak", "PHASES", "estimate_memory", "estimate_from_phases",
           "refuse_unmodelled"]
