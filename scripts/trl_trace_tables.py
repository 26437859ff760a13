"""The DPO, KTO, ORPO and GRPO tables of validation/RESULTS.md: each test's cases (tests/estimate/test_<objective>.py)
traced with TRL's own code and estimated, the allocated peak side by side. Prints markdown; paste it over the tables.

    python scripts/trl_trace_tables.py [dpo kto orpo grpo]
"""

from __future__ import annotations

import importlib
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30


def _name(model: str) -> str:
    return Path(model).stem if model.endswith(".json") else model


def _rows(objective: str):
    tests = importlib.import_module(f"tests.estimate.test_{objective}")
    for case in tests.CASES:
        trace, est = tests._run(case)
        yield case, trace, est


def _error(est: int, trace: int) -> float:
    return est / trace - 1


def table(objective: str) -> str:
    lines, errors = [], []
    if objective == "grpo":
        lines += ["| model | method | batch x (prompt + completion) | beta | traced generation GiB | generation error "
                  "| traced GiB | estimated GiB | error |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    else:
        lines += ["| model | method | rows | seq | checkpointing | other | traced GiB | estimated GiB | error |",
                  "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for case, trace, est in _rows(objective):
        error = _error(est.peak_allocated_bytes, trace.peak_allocated_bytes)
        errors.append(abs(error))
        model, method = _name(case[0]), case[1]
        traced, estimated = trace.peak_allocated_bytes / GIB, est.peak_allocated_bytes / GIB
        if objective == "grpo":
            generation = next(p for p in trace.phases if p.phase == "generation").peak_bytes
            estimated_generation = next(p for p in est.phases if p.phase == "generation").total_bytes
            lines.append(f"| {model} | {method} | {case[2]} x ({case[3]} + {case[4]}) | {case[5]} | "
                         f"{generation / GIB:.4f} | {_error(estimated_generation, generation):+.2%} | {traced:.4f} | "
                         f"{estimated:.4f} | {error:+.2%} |")
        else:
            setup = est.setup
            other = ", ".join(part for part in (
                f"prompt {setup.prompt_len}" if setup.prompt_len else "",
                "reference precomputed" if setup.precompute_ref else "",
                setup.precision.value if setup.precision.value != "bf16" else "") if part) or "-"
            lines.append(f"| {model} | {method} | {setup.rows} | {setup.seq_len} | "
                         f"{'on' if setup.gradient_checkpointing else 'off'} | {other} | {traced:.4f} | "
                         f"{estimated:.4f} | {error:+.2%} |")
    lines.append("")
    lines.append(f"{len(errors)} cases: median |error| {statistics.median(errors):.2%}, max {max(errors):.2%}")
    return "\n".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["dpo", "kto", "orpo", "grpo"]:
        print(f"### {name}\n\n{table(name)}\n", flush=True)
