"""Printing of a serving plan (`vramplan serve-size`): one boxed table of the per-GPU terms, then the capacity."""

from __future__ import annotations

import sys

from vramplan.units import gib


def _g(nbytes: int) -> str:
    return f"{gib(nbytes):.2f}"


def emit_serve_plan(plan) -> None:
    """The plan as a table of GiB (plain text, no rich import) and its verdict lines."""
    from vramplan.cli.boxes import box_table

    budget, activation, capacity = plan.budget, plan.activation, plan.capacity
    terms = [
        [f"weights ({plan.weights_format.value})", _g(budget.weights_bytes)],
        [f"activation peak of the profiling run ({activation.tokens:,} tokens, at the {activation.at})",
         _g(budget.activation_bytes)],
        ["non-torch memory counted", _g(budget.non_torch_bytes)],
        ["CUDA-graph estimate", _g(budget.cudagraph_bytes)],
        ["KV cache", _g(budget.kv_bytes)],
    ]
    totals = [[f"GPU total ({plan.gpu.basis})", _g(budget.total_bytes)],
              [f"requested: gpu_memory_utilization {plan.gpu_memory_utilization}", _g(budget.requested_bytes)]]
    title = (f"{plan.model.name} on {plan.gpu.name}" + (f" x{plan.tensor_parallel} (TP)" if plan.tensor_parallel > 1
                                                         else "") + f": {plan.engine}")
    lines = [box_table(title, ["per GPU", "GiB"], [totals, terms], right={1}).rstrip("\n")]
    kv = plan.kv
    lines.append(f"KV per token: {kv.bytes_per_token:,} bytes ({kv.attention}, {kv.dtype_bytes}-byte "
                 f"{plan.kv_dtype}); block = {kv.block_size} tokens = {kv.bytes_per_block:,} bytes")
    lines.append(f"KV capacity: {capacity.blocks:,} blocks, GPU KV cache size {capacity.reported_tokens:,} tokens; "
                 f"max concurrency at {plan.max_model_len:,} tokens: {capacity.max_concurrency:.2f}x")
    lines.append(f"sequences of {plan.max_model_len:,} tokens at once: {capacity.sequences:,} "
                 f"(max_num_seqs {plan.max_num_seqs:,}, max_num_batched_tokens {plan.max_num_batched_tokens:,})")
    if plan.concurrency_wanted is not None:
        lines.append(f"wanted: {plan.concurrency_wanted:,} sequences")
    lines.append("fits" if plan.fits else "DOES NOT FIT")
    for problem in plan.problems:
        lines.append(f"  - {problem.message}")
        lines.append(f"    fix: {problem.fix}")
    lines.append("notes:")
    lines.append(f"  - weights: {plan.weights.note}")
    lines.extend(f"  - {note}" for note in plan.notes)
    lines.append("1 GiB = 2^30 bytes")
    sys.stdout.write("\n".join(lines) + "\n")
