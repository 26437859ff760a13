"""The sizing answers as the versioned JSON documents `--format json` prints, computed once for the CLI and the web
API (vramplan/web): estimate, plan, check on a catalog GPU, fit. Each takes a RunRequest and the command's own
settings, and a `command` callable that spells a suggestion's flags as a command line for the caller's users."""

from __future__ import annotations

from typing import Any, Callable

from vramplan.output import versioned
from vramplan.request import RunRequest

CommandLine = Callable[[str, list[str]], str]  # (command, flags) -> the line a user pastes

# Most training tokens a plan takes (tokens x epochs): about 60 times the largest published pre-training runs,
# so every number the plan derives stays finite.
MAX_TRAINING_TOKENS = 10**15
# The smallest value of each option `fit` solves for: the suggestions are sized there (what `fit` tries first).
SMALLEST = {"batch-size": ("batch_size", 1), "seq-len": ("seq_len", 1), "lora-rank": ("lora_rank", 1),
            "num-generations": ("num_generations", 2), "completion-len": ("completion_len", 1)}


def training_tokens(tokens: str, epochs: float, tokens_flag: str = "--tokens", epochs_flag: str = "--epochs") -> int:
    """Tokens x epochs, the plan's training tokens, within MAX_TRAINING_TOKENS (a one-line UsageError otherwise)."""
    from vramplan.errors import UsageError
    from vramplan.units import parse_count

    total = round(parse_count(tokens, tokens_flag) * epochs)
    if not 1 <= total <= MAX_TRAINING_TOKENS:
        raise UsageError(f"{tokens_flag} {tokens} x {epochs_flag} {epochs:g}: give between 1 and "
                         f"{MAX_TRAINING_TOKENS:.0e} training tokens in all")
    return total


def estimate_document(request: RunRequest) -> dict[str, Any]:
    from vramplan.request import estimate_request

    return versioned("estimate", estimate_request(request).model_dump(mode="json"))


def plan_result(request: RunRequest, hardware, training_tokens: int, assumptions):
    """(estimate, plan, suggestions): every catalog option that runs the job; when none does, the changes that make
    it fit the largest GPU."""
    from vramplan.errors import NotModelledError
    from vramplan.hardware.plan import plan_options
    from vramplan.hardware.suggest import suggest_changes
    from vramplan.request import estimate_request

    result = estimate_request(request)
    if result.generation_server is not None:
        # a layout would price the training GPU alone and leave the server's out
        raise NotModelledError("plan does not count a GRPO vLLM server's GPUs yet (--generation vllm-server): plan "
                               "the training GPU with --generation vllm-colocate or transformers, and size the server "
                               "with `vramplan serve-size`")
    plan = plan_options(result, hardware, training_tokens, assumptions)
    suggestions = []
    if not plan.options:
        largest = max(gpu.memory_bytes for gpu in hardware.gpus.values())
        suggestions = suggest_changes(result, int(largest * (1 - assumptions.headroom)), request, layouts=False,
                                      total_bytes=largest)
    return result, plan, suggestions


def fit_result(request: RunRequest, solve: str, target, usable: int):
    """(fit, suggestions): the largest value of `solve` that fits `usable` bytes of `target`; when not even the
    smallest does, the changes that make that one fit."""
    from vramplan.errors import UsageError
    from vramplan.estimate import estimate_memory
    from vramplan.hardware.fit import SEARCH_LIMITS, largest_fitting
    from vramplan.hardware.suggest import suggest_changes
    from vramplan.request import resolve_request

    if solve not in SEARCH_LIMITS:
        raise UsageError(f"--solve {solve!r}: choose {', '.join(SEARCH_LIMITS)}")
    resolved, setup, _ = resolve_request(request)
    result = largest_fitting(resolved, setup, solve, usable, target.memory_bytes)
    suggestions = []
    if result.value is None:
        name, smallest = SMALLEST[solve]
        smallest_run = request.changed({name: smallest})
        base = resolve_request(smallest_run)
        suggestions = suggest_changes(estimate_memory(base[0], base[1]), usable, smallest_run,
                                      total_bytes=target.memory_bytes)
    return result, suggestions


def plan_document(plan, suggestions, command: CommandLine) -> dict[str, Any]:
    document = plan.model_dump(mode="json")
    document["suggestions"] = _with_commands(suggestions, "plan", command)
    return versioned("plan", document)


def check_document(verdict, command: CommandLine) -> dict[str, Any]:
    document = verdict.model_dump(mode="json")
    document["exit_code"] = verdict.exit_code
    document["commands"] = [command("check", s.flags) for s in verdict.suggestions]
    return versioned("check", document)


def fit_document(result, target, suggestions, command: CommandLine) -> dict[str, Any]:
    document = result.model_dump(mode="json")
    document["gpu"] = target.model_dump(mode="json")
    document["suggestions"] = _with_commands(suggestions, "fit", command)
    return versioned("fit", document)


def _with_commands(suggestions, name: str, command: CommandLine) -> list[dict[str, Any]]:
    return [dict(s.model_dump(mode="json"), command=command(name, s.flags)) for s in suggestions]
