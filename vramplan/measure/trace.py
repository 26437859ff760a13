"""`vramplan trace`: the real training step of the real model code, counted byte by byte on CPU.

The step runs under FakeTensorMode (no memory, any model size) through a recipe on `fake_step` (`hf_step`,
`torchtune_step`, `fsdp`); the result has the same shape as an Estimate (components by category, per-phase peaks,
the peak and its phase) so the two compare directly.
"""

from __future__ import annotations

import sys
import time

from vramplan.errors import NotModelledError, require_extra
from vramplan.result import PhasePeak, Trace
from vramplan.models.catalog import ResolvedModel
from vramplan.training import Loss, Method, Optimizer, Precision, Stack, Strategy, TrainingSetup
from vramplan.versions import untested_versions, untested_warning

# What the trace does so that it answers for a CUDA run, and what stays different (shown with every trace).
GPU_CORRECTIONS = (
    "storage sizes rounded up to the CUDA caching allocator's 512-byte blocks (kMinBlockSize)",
    "dropout as CUDA runs it (native_dropout, bool mask); CPU's at::dropout would keep a mask in the input dtype",
    "unpacked inputs: transformers' packed-sequence check answers 'no packing' as it does on a GPU, so SDPA gets "
    "is_causal=True and no s x s mask (fake tensors would otherwise force a mask)",
    "SDPA runs CPU's flash kernel, which keeps the same output and fp32 logsumexp (b x heads x s) as CUDA flash",
    "SDPA with a value head dim unlike the query's (MLA) runs the memory-efficient kernel CUDA picks, not CPU's "
    "math fallback with its s x s scores",
    "autograd sums two gradients of one tensor in place where it does on a GPU (input_buffer.cpp accumulate); a "
    "fake tensor would take the out-of-place path",
)
NOT_IN_TRACE = (
    "cuBLAS/cuBLASLt workspaces and the CUDA context are not tensors of the step; the caching allocator's slack is "
    "the step's allocations replayed in steady state (vramplan/allocator/caching.py, one pass to build the cache, "
    "one measured)",
)
FUSED_LOSS_NOTE = (
    "--loss fused: liger-kernel's fused linear cross-entropy runs its own Python (every torch allocation); its "
    "Triton kernels, which only write into those buffers, are no-ops, and its device checks answer as on an sm80+ GPU"
)
LIGER_NOTE = (
    "--liger: liger-kernel's RMSNorm, SwiGLU and RoPE run their own Python (every torch allocation); their Triton "
    "kernels, which write in place into those buffers, are no-ops, and RMSNorm's backward sizes its buffer for an H100"
)
AUTOCAST_NOTE = "autocast follows CPU's op lists; CUDA's differ for a few ops (casts of norms and losses)"
UNTRACEABLE_OPTIMIZERS = {
    Optimizer.PAGED_ADAMW: "paged optimizers keep their state in CUDA managed memory, outside torch's allocator",
    Optimizer.PAGED_ADAMW_8BIT: "paged optimizers keep their state in CUDA managed memory, outside torch's allocator",
}


V4_TRACE_NOTE = (
    "--transformers 4: each MoE block rebuilt in 4.x's layout (vramplan/measure/moe_v4.py: an nn.Linear "
    "router and per-expert nn.Linear w1/w2/w3, so bitsandbytes quantizes them; the expert loop with balanced "
    "routing), vramplan's statement of 4.x's code run on the installed transformers 5"
)


def refuse_untraceable(setup: TrainingSetup) -> None:
    fsdp_one_mesh = setup.strategy in (Strategy.FSDP, Strategy.FSDP1) or (
        setup.strategy is Strategy.FSDP_HYBRID and setup.nodes == 1)
    if setup.strategy is not Strategy.SINGLE and not fsdp_one_mesh:
        raise NotModelledError(
            f"--strategy {setup.strategy.value} cannot be traced on CPU: trace runs one GPU's step, or rank 0 of "
            "FSDP1 or FSDP2 over a fake process group (--strategy fsdp1|fsdp2); DeepSpeed does not run here"
        )
    if setup.strategy not in (Strategy.SINGLE, Strategy.FSDP) and setup.stack is Stack.TORCHTUNE:
        raise NotModelledError("torchtune's distributed recipes are traced over one FSDP2 mesh (--strategy fsdp)")
    sharded_full = setup.strategy is not Strategy.SINGLE and setup.method is Method.FULL
    if sharded_full and setup.optimizer is Optimizer.ADAMW_8BIT:
        raise NotModelledError(
            "--optimizer adamw-8bit with full fine-tuning is traced on one GPU only: bitsandbytes' 8-bit update "
            "kernel does not run on FSDP's fake-tensor shards here"
        )
    if setup.loss is Loss.FUSED and setup.strategy is not Strategy.SINGLE:
        raise NotModelledError("--loss fused is traced on one GPU only (--gpus 1)")
    if setup.liger and setup.strategy is not Strategy.SINGLE:
        raise NotModelledError("--liger is traced on one GPU only (--gpus 1)")
    if setup.optimizer in UNTRACEABLE_OPTIMIZERS:
        raise NotModelledError(
            f"--optimizer {setup.optimizer.value} cannot be traced on CPU: {UNTRACEABLE_OPTIMIZERS[setup.optimizer]}"
        )


def traced_libraries(setup: TrainingSetup) -> tuple[str, ...]:
    """The distributions whose code the trace of `setup` runs (the names in vramplan.versions.TESTED_VERSIONS)."""
    if setup.stack is Stack.TORCHTUNE:
        return ("torch", "torchtune", "torchao")
    libraries = ["torch", "transformers", "accelerate"]
    if setup.method is not Method.FULL:
        libraries.append("peft")
    fsdp = setup.strategy is not Strategy.SINGLE  # fsdp.tracker patches bitsandbytes' FSDP hook in every run
    if fsdp or setup.method is Method.QLORA or setup.optimizer is Optimizer.ADAMW_8BIT:
        libraries.append("bitsandbytes")
    if setup.liger or setup.loss is Loss.FUSED:
        libraries.append("liger-kernel")
    return tuple(libraries)


_warned: set[str] = set()  # lines already written by this process (`vramplan validate` traces many setups)


def warn_untested_libraries(setup: TrainingSetup) -> None:
    """One stderr line, once per process, when a library the trace of `setup` runs is outside its tested range."""
    untested = untested_versions(traced_libraries(setup))
    line = untested_warning(untested) if untested else None
    if line is not None and line not in _warned:
        _warned.add(line)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def trace_memory(model: ResolvedModel, setup: TrainingSetup) -> Trace:
    """Run one warm-up optimizer step and one measured training step of `model` under `setup`, on fake tensors."""
    refuse_untraceable(setup)
    from vramplan.estimate.scope import refuse_unmodelled_moe

    if setup.transformers == 4:
        from vramplan.measure.moe_v4 import V4_FAMILIES

        from vramplan.estimate.scope import refuse_unmodelled_v4

        # peft 0.21 maps MoE targets onto v5's fused expert parameters, which the rebuilt 4.x block does not have:
        # anything beyond the attention would go unadapted without a word, so the estimate's scope applies.
        refuse_unmodelled_v4(model.spec, setup)
        assert model.spec.family in V4_FAMILIES
    else:
        refuse_unmodelled_moe(model.spec, setup, tracing=True)  # gpt-oss; LoRA on 3D experts needs dropout 0
    warn_untested_libraries(setup)
    if setup.objective in TRL_TRACERS:
        return _trace_trl(model, setup)
    if setup.strategy is not Strategy.SINGLE:
        return _trace_fsdp(model, setup)
    if setup.stack is Stack.TORCHTUNE:
        require_extra("torchtune", "torch", "torchtune", "torchao")
        from vramplan.measure.torchtune_step import trace_torchtune_step

        started = time.perf_counter()
        step = trace_torchtune_step(model.config, model.spec.family, setup)
        notes = [*GPU_CORRECTIONS[:2], GPU_CORRECTIONS[3], GPU_CORRECTIONS[5], *NOT_IN_TRACE]
        if step.host_bytes:
            notes.append(f"activation offloading: {step.host_bytes} bytes at most in host memory, not counted")
        return _as_trace(model, setup, step, notes, started)
    require_extra("probe", "torch", "transformers", "peft", "accelerate")
    if setup.loss is Loss.FUSED or setup.liger:
        require_extra("liger", "liger_kernel", "triton")
    from vramplan.measure.hf_step import trace_training_step

    started = time.perf_counter()
    step = trace_training_step(model.config, setup)
    notes = [*GPU_CORRECTIONS, *NOT_IN_TRACE]
    if setup.transformers == 4:
        notes.append(V4_TRACE_NOTE)
    if setup.loss is Loss.FUSED:
        notes.append(FUSED_LOSS_NOTE)
    if setup.liger:
        notes.append(LIGER_NOTE)
    if setup.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        notes.append(AUTOCAST_NOTE)
    return _as_trace(model, setup, step, notes, started)


# What a DPO trace measures, said with its answer.
DPO_TRACE_NOTE = ("DPO: TRL 1.16's DPOTrainer._compute_loss run on fake tensors (sigmoid loss, beta 0.1): the policy "
                  "forward over 2 x batch rows (chosen and rejected), the reference forward under no_grad (a frozen "
                  "copy for full fine-tuning, the adapter-disabled policy under peft), TRL's fused LM head on its GPU "
                  "path (labelled positions only)")


# What a GRPO trace measures, said with its answer.
GRPO_TRACE_NOTE = ("GRPO: TRL 1.16's GRPOTrainer run on fake tensors: transformers' own generate over batch x "
                   "steps_per_generation prompts, every completion max_completion_length long (no early EOS: the "
                   "upper end), the reference log-probs when beta > 0, then _compute_loss (loss dapo) on one "
                   "micro-batch through TRL's fused LM head on its GPU path; rewards and tokenizer not run")


# What a KTO trace measures, said with its answer.
KTO_TRACE_NOTE = ("KTO: TRL 1.16's KTOTrainer._compute_loss run on fake tensors (loss kto, beta 0.1): the policy's "
                  "no_grad forward over the KL rows, its forward over the batch rows, the reference's KL and batch "
                  "forwards under no_grad (a frozen copy for full fine-tuning, the adapter-disabled policy under "
                  "peft), TRL's fused LM head on its GPU path; half the rows desirable")


# What an ORPO trace measures, said with its answer.
ORPO_TRACE_NOTE = ("ORPO: TRL 1.16's experimental ORPOTrainer.compute_loss run on fake tensors (beta 0.1): the "
                   "policy forward over 2 x batch rows (chosen and rejected) with accelerate's fp32 copy of the full "
                   "logits, the chosen rows' NLL, selective_log_softmax over every row on its GPU (Triton) path")


# Each TRL objective's tracer, (module, function), called as function(config, setup), and what its trace measures.
TRL_TRACERS = {
    "dpo": ("vramplan.measure.trl_dpo", "trace_dpo_step", DPO_TRACE_NOTE),
    "grpo": ("vramplan.measure.trl_grpo", "trace_grpo_step", GRPO_TRACE_NOTE),
    "kto": ("vramplan.measure.trl_kto", "trace_kto_step", KTO_TRACE_NOTE),
    "orpo": ("vramplan.measure.trl_orpo", "trace_orpo_step", ORPO_TRACE_NOTE),
}


def _trace_trl(model: ResolvedModel, setup: TrainingSetup) -> Trace:
    """A TRL trainer's step, traced by its objective's tracer (imported once the extras are known to be there)."""
    import importlib

    require_extra("probe", "torch", "transformers", "peft", "accelerate")
    require_extra("trl", "trl")
    module, function, note = TRL_TRACERS[setup.objective]
    started = time.perf_counter()
    step = getattr(importlib.import_module(module), function)(model.config, setup)
    return _as_trace(model, setup, step, [*GPU_CORRECTIONS, *NOT_IN_TRACE, note], started)


def _as_trace(model: ResolvedModel, setup: TrainingSetup, step, notes: list[str], started: float, *,
              components: dict[str, int] | None = None, by_module: list | None = None) -> Trace:
    """The Trace of a traced step (its own categories and by-module rows unless given)."""
    from vramplan.allocator.caching import replay_steady_step

    replayed = replay_steady_step(step.allocation_events, setup.allocator)
    result = Trace(
        peak_reserved_bytes=replayed.peak_reserved_bytes,
        allocator_replay=replayed,
        model=model,
        setup=setup,
        total_params=step.total_params,
        trainable_params=step.trainable_params,
        peak_phase=step.peak_phase,
        components=step.categories if components is None else components,
        phases=[PhasePeak(phase=phase.phase, components=phase.categories) for phase in step.phases],
        peak_allocated_bytes=step.peak_allocated_bytes,
        by_module=step.by_module if by_module is None else by_module,
        gpu_corrections=notes,
        trace_seconds=round(time.perf_counter() - started, 2),
    )
    result._allocation_events = step.allocation_events
    return result


FSDP_NOTES = (
    "rank 0 of FSDP2 over a fake process group of --gpus x --nodes ranks (torch.distributed backend 'fake': "
    "collectives return at once), sharded by accelerate's own fsdp2_prepare_model",
    "NCCL's buffers live outside torch's allocator and are not in the trace",
)
TORCHTUNE_FSDP_NOTES = (
    "rank 0 of torchtune's distributed recipe over a fake process group of --gpus ranks (torch.distributed backend "
    "'fake'), sharded by torchtune's own training.shard_model (fully_shard per layer, then the root; no "
    "MixedPrecisionPolicy)",
    "NCCL's buffers live outside torch's allocator and are not in the trace",
)
FSDP1_NOTES = (
    "rank 0 of FSDP1 over a fake process group of --gpus x --nodes ranks (torch.distributed backend 'fake': "
    "collectives return at once), wrapped as accelerate's prepare_model wraps it with the Trainer's FSDP1 defaults "
    "(FULL_SHARD, use_orig_params, no prefetch, limit_all_gathers; peft's fsdp_auto_wrap_policy for adapters)",
    "FSDP1's catch-all reshard tests storages instead of data pointers, which fake tensors lack",
    "NCCL's buffers live outside torch's allocator and are not in the trace",
)


def _trace_fsdp(model: ResolvedModel, setup: TrainingSetup) -> Trace:
    if setup.stack is Stack.TORCHTUNE:
        require_extra("torchtune", "torch", "torchtune", "torchao")
    else:
        require_extra("probe", "torch", "transformers", "peft", "accelerate")
    from vramplan.estimate.strategies.states import shard_group_size
    from vramplan.measure.fsdp import trace_fsdp_step

    started = time.perf_counter()
    step = trace_fsdp_step(model.config, setup, shard_group_size(setup),
                           offload_params=setup.offload.value == "params")
    engine_notes = FSDP1_NOTES if setup.strategy is Strategy.FSDP1 else FSDP_NOTES
    if setup.stack is Stack.TORCHTUNE:
        engine_notes = TORCHTUNE_FSDP_NOTES
    notes = [*engine_notes, *GPU_CORRECTIONS[:3], GPU_CORRECTIONS[5], *NOT_IN_TRACE]
    return _as_trace(model, setup, step, notes, started, components=step.components, by_module=[])
