"""Strategies: the parameter inventory (estimate/params.py) turned into one GPU's model states (RankStates).

single.py one GPU; ddp.py DDP replicas; zero.py DeepSpeed ZeRO 1-3; fsdp.py and fsdp_units.py FSDP2 under
accelerate; device_map.py the layer split of device_map="auto" (composed per GPU by compose/device_map.py).
tests/estimate/test_parallel.py holds the rules against DeepSpeed's estimator, and validation/matrix.toml's fsdp
cases against FSDP2 traced on CPU with a fake process group.
"""

from __future__ import annotations

from vramplan.estimate.strategies.single import single_gpu_states
from vramplan.estimate.strategies.states import RankStates
from vramplan.models.spec import ModelSpec
from vramplan.training import DEEPSPEED_STRATEGIES, FSDP_STRATEGIES, Strategy, TrainingSetup


def rank_states(spec: ModelSpec, setup: TrainingSetup) -> RankStates:
    """The model states of one rank under the setup's strategy."""
    single = single_gpu_states(spec, setup)
    strategy = setup.strategy
    if strategy in (Strategy.SINGLE, Strategy.DEVICE_MAP):
        return single
    # each strategy's module is imported when used, so a one-GPU estimate's cold start skips them
    if strategy is Strategy.DDP:
        from vramplan.estimate.strategies.ddp import ddp_states

        return ddp_states(single, setup)
    if strategy in DEEPSPEED_STRATEGIES:
        from vramplan.estimate.strategies.zero import deepspeed_states

        return deepspeed_states(spec, setup, single)
    if strategy is Strategy.FSDP1:
        from vramplan.estimate.strategies.fsdp1 import fsdp1_states

        return fsdp1_states(spec, setup)
    if strategy in FSDP_STRATEGIES:
        from vramplan.estimate.strategies.fsdp import fsdp_states

        return fsdp_states(spec, setup)
    raise AssertionError(strategy)
