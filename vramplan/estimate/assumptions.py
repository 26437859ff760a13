"""Plain-language list of what an estimate assumed, printed with every answer."""

from __future__ import annotations

from vramplan.estimate.components.activations.liger import LIGER_ASSUMPTION
from vramplan.estimate.components.logits import fused_loss_assumption
from vramplan.models.catalog import ResolvedModel
from vramplan.training import TRL_DISABLES_DROPOUT, Loss, Method, Precision, Stack, Strategy, TrainingSetup

_PRECISION_TEXT = {
    Precision.BF16: "bf16 weights, gradients and optimizer states; Trainer bf16=True autocast",
    Precision.BF16_PURE: "bf16 weights, gradients and optimizer states; no autocast (Trainer bf16/fp16 off, "
                         "accelerate mixed_precision no)",
    Precision.BF16_MIXED: "fp32 weights under bf16 autocast (Trainer bf16=True on an fp32-loaded model)",
    Precision.FP16_MIXED: "fp32 weights under fp16 autocast with a GradScaler",
    Precision.FP32: "fp32 everywhere, no autocast",
}


def _gpus_text(setup: TrainingSetup) -> str:
    if setup.strategy is Strategy.SINGLE:
        return "1 GPU"
    nodes = f" x {setup.nodes} nodes" if setup.nodes > 1 else ""
    return (f"{setup.gpus} GPUs{nodes} ({setup.world_size} ranks), {setup.strategy.value}, offload "
            f"{setup.offload.value}; figures are per GPU, the micro-batch is per GPU")


def describe_assumptions(model: ResolvedModel, setup: TrainingSetup, estimate_notes: list[str] = ()) -> list[str]:
    if setup.stack is Stack.TORCHTUNE:
        return _torchtune_lines(model, setup, estimate_notes)
    lines = [
        f"model: {model.name} ({model.resolved_from})",
        f"stack: {_STACK_TEXT[setup.stack]}, {setup.attn.value} attention{', packed sequences' if setup.packing else ''}"
        f", {setup.loss.value} cross-entropy, " + _gpus_text(setup),
        f"precision: {setup.precision.value} = {_PRECISION_TEXT[setup.precision]}",
        f"optimizer: {setup.optimizer.value}; micro-batch {setup.batch_size} x sequence {setup.seq_len}",
        f"gradient checkpointing: {'on (non-reentrant, per decoder layer)' if setup.gradient_checkpointing else 'off'}",
    ]
    lines += _lora_lines(setup, "fp32 adapters (peft)")
    if setup.method is Method.QLORA:
        quant = setup.quant
        lines.append(
            f"4-bit: bitsandbytes {quant.quant_type.upper()}, blocksize 64, "
            f"double quantization {'on' if quant.double_quant else 'off'}, bf16 compute, "
            f"k-bit preparation {'on (non-4-bit weights upcast to fp32)' if quant.kbit_prep else 'off'}"
        )
    if setup.loss is Loss.FUSED:
        lines.append(fused_loss_assumption(model.spec, setup))
    if setup.liger:
        lines.append(LIGER_ASSUMPTION)
    if setup.objective == "dpo":
        lines += dpo_lines(setup)
    if setup.objective == "grpo":
        lines += grpo_lines(setup)
    if setup.objective == "kto":
        lines += kto_lines(setup)
    if setup.objective == "orpo":
        lines += orpo_lines(setup)
    if setup.objective in TRL_DISABLES_DROPOUT and setup.lora is not None:
        lines.append("dropout: TRL's disable_dropout (default True) sets every dropout to 0, LoRA's included")
    lines += estimate_notes
    lines += _moe_lines(model, setup)
    lines.append("steady state: after a warm-up step (optimizer states exist), zero_grad(set_to_none=True)")
    return [*lines, *device_lines(setup), *version_lines(model, setup)]


# TRL before its fused head (0.x; LLaMA-Factory's and ms-swift's trainers of that time) materialises the logits:
# validation/preference/RESULTS.md (PF17 OOMed on 80 GB where this model says 50 GiB).
TRL_0X_WARNING = ("TRL 0.x materialised b x s x V logits (and their fp32 copies): on TRL 0.x this estimate is low")


def dpo_lines(setup: TrainingSetup) -> list[str]:
    """What a DPO estimate models (vramplan/estimate/compose/dpo.py), said with its answer."""
    prompt = (f"{setup.prompt_len} prompt tokens per row" if setup.prompt_len else
              "every position scored (no --prompt-len: the upper end)")
    reference = ("a frozen copy of the model in its dtype (full fine-tuning)" if setup.method is Method.FULL else
                 "the base model with the adapters disabled (peft: no second copy)")
    when = "run under no_grad after the policy's forward (precompute_ref_log_probs off)"
    if setup.precompute_ref:
        reference, when = "precomputed before training (precompute_ref_log_probs)", "none in the step"
    return [
        f"objective: DPO, TRL 1.16 DPOTrainer (sigmoid loss): {setup.batch_size} pair(s) = {setup.rows} rows of "
        f"{setup.seq_len} tokens (chosen and rejected concatenated), {prompt}",
        f"reference: {reference}, {when}",
        "loss head: TRL's fused LM head (chunked log-probabilities of the labelled positions; no b x s x V logits); "
        + TRL_0X_WARNING,
        "rows unpadded: chosen and rejected of the full length; padding adds an attention mask (not modelled)",
    ]


def kto_lines(setup: TrainingSetup) -> list[str]:
    """What a KTO estimate models (vramplan/estimate/compose/kto.py), said with its answer."""
    prompt = (f"{setup.prompt_len} prompt tokens per row" if setup.prompt_len else
              "every position scored (no --prompt-len: the upper end)")
    reference = ("a frozen copy of the model in its dtype (full fine-tuning)" if setup.method is Method.FULL else
                 "the base model with the adapters disabled (peft: no second copy)")
    if setup.precompute_ref:
        reference = "precomputed before training (precompute_ref_log_probs): none in the step"
    return [
        f"objective: KTO, TRL 1.16 KTOTrainer (loss kto, so the KL term): {setup.batch_size} rows of "
        f"{setup.seq_len} tokens, each with a mismatched KL row of the same length, {prompt}",
        f"reference: {reference}; the KL rows scored under no_grad by the policy before its forward and by the "
        "reference after it",
        "loss head: TRL's fused LM head (chunked log-probabilities of the labelled positions; no b x s x V logits); "
        + TRL_0X_WARNING,
        "rows unpadded: every row the full length; padding adds an attention mask (not modelled)",
    ]


def orpo_lines(setup: TrainingSetup) -> list[str]:
    """What an ORPO estimate models (vramplan/estimate/compose/orpo.py), said with its answer."""
    return [
        f"objective: ORPO, TRL 1.16 experimental ORPOTrainer (beta 0.1): {setup.batch_size} pairs, chosen and "
        f"rejected rows of {setup.seq_len} tokens concatenated ({setup.rows} rows); no reference model",
        "loss: the full b x s x V logits (no fused head), their fp32 copy under mixed precision, the chosen rows' "
        "NLL (a contiguous copy and its log-softmax), TRL's Triton log-prob kernel over every row (the GPU path; "
        "without Triton, TRL's per-row fallback is not modelled)",
        "rows unpadded: every row the full length; padding adds an attention mask (not modelled)",
    ]


def grpo_lines(setup: TrainingSetup) -> list[str]:
    """What a GRPO estimate models (vramplan/estimate/compose/grpo.py), said with its answer."""
    grpo = setup.grpo
    if grpo.beta == 0:
        reference = "none (beta 0, GRPOConfig's default: no reference model, no KL term)"
    elif setup.method is Method.FULL:
        reference = f"beta {grpo.beta}: a frozen copy of the model in its dtype, scoring each generation batch"
    else:
        reference = f"beta {grpo.beta}: the base model with the adapters disabled (peft: no second copy)"
    return [
        f"objective: GRPO, TRL 1.16 GRPOTrainer (loss dapo) on one GPU: {setup.batch_size} completions per micro-batch "
        f"of {setup.prompt_len} prompt + {setup.completion_len} completion tokens; {grpo.num_generations} "
        f"generations per prompt",
        (f"generation: transformers generate on the training GPU (use_vllm False), {setup.generation_rows} rows at "
         f"once (batch x steps_per_generation {grpo.steps_per_generation}), every completion the full "
         f"{setup.completion_len} tokens (no early EOS: the upper end), KV cache in a DynamicCache, after the "
         "optimizer step (no gradients held)") if grpo.generation == "transformers" else
        (f"generation: vLLM colocated in the training process (use_vllm, vllm_mode colocate), max_num_seqs "
         f"{setup.generation_rows}; the figures above are the training side's, vLLM's share is added per GPU by "
         "check, fit and plan; the batch is rescored under no_grad for vLLM's importance-sampling correction")
        if grpo.generation == "vllm-colocate" else
        ("generation: a vLLM server on a GPU of its own (use_vllm, vllm_mode server); the figures above are the "
         "training GPU's; the batch is rescored under no_grad for vLLM's importance-sampling correction"),
        f"reference: {reference}",
        "loss head: TRL's fused LM head (chunked log-probabilities and entropy of the completion positions); "
        + TRL_0X_WARNING,
        "prompts unpadded: every prompt the given length; left padding adds an attention mask (not modelled)",
    ]


_STACK_TEXT = {
    Stack.HF: "transformers + peft + torch (HF Trainer)",
    Stack.AXOLOTL: "axolotl's defaults on transformers + peft + torch",
    Stack.LLAMA_FACTORY: "LLaMA-Factory's defaults on transformers + peft + torch",
}


def _torchtune_lines(model: ResolvedModel, setup: TrainingSetup, estimate_notes) -> list[str]:
    lines = [
        f"model: {model.name} ({model.resolved_from})",
        f"stack: torchtune 0.6 recipe, {setup.loss.value} cross-entropy, " + _gpus_text(setup),
        f"optimizer: {setup.optimizer.value}; micro-batch {setup.batch_size} x sequence {setup.seq_len}",
        f"activation checkpointing: {'on (per transformer layer)' if setup.gradient_checkpointing else 'off'}",
    ]
    lines += _lora_lines(setup, "bf16 adapters")
    return [*lines, *estimate_notes,
            "steady state: after a warm-up step (optimizer states exist), zero_grad(set_to_none=True)",
            *device_lines(setup), *version_lines(model, setup)]


def version_lines(model: ResolvedModel, setup: TrainingSetup) -> list[str]:
    """The library versions modelled, and an installed stack that builds the model differently."""
    from vramplan.estimate.stack_versions import installed_layout_mismatch, modelled_versions_line

    mismatch = installed_layout_mismatch(model.spec, setup)
    return [modelled_versions_line(setup), *([f"NOT MODELLED (installed stack): {mismatch}"] if mismatch else [])]


def device_lines(setup: TrainingSetup) -> list[str]:
    """What the device figure adds to the allocated peak, and where each figure is an upper end."""
    from vramplan.allocator.config import describe
    from vramplan.estimate.runtime import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES

    return [
        f"allocator: PYTORCH_ALLOC_CONF {describe(setup.allocator)}; reserved = allocated + cuBLAS workspaces "
        f"({CUBLAS_WORKSPACE_BYTES // 2**20} MiB, Hopper's 2 x 32 MiB) + fragmentation from the rule derived from "
        "replays of traced steps: an upper end (check --exact replays this job's own traced step)",
        f"device: reserved + CUDA context {CUDA_CONTEXT_BYTES // 2**20} MiB (upper end; no per-GPU figure is "
        "sourced) + NCCL + paged optimizer state",
    ]


def _lora_lines(setup: TrainingSetup, adapters: str) -> list[str]:
    if setup.lora is None:
        return []
    targets = setup.lora.targets if isinstance(setup.lora.targets, str) else ",".join(setup.lora.targets)
    return [f"LoRA: rank {setup.lora.rank} on {targets}, dropout {setup.lora.dropout}, {adapters}"]


def _moe_lines(model: ResolvedModel, setup: TrainingSetup) -> list[str]:
    """What a mixture-of-experts model does differently, in words (components/activations/moe.py has the rules)."""
    spec = model.spec
    if spec.moe is None:
        return []
    moe = spec.moe
    lines = [
        f"mixture of experts: {moe.num_experts} experts, {moe.experts_per_token} per token; weights, gradients and "
        f"optimizer states count all {spec.total_params / 1e9:.1f}B parameters, activations the "
        f"{spec.active_params / 1e9:.1f}B active ones (transformers grouped_mm experts: tokens x top-k rows); "
        "router aux loss off (output_router_logits=False, the config default)"
    ]
    if setup.method is Method.QLORA:
        experts = spec.expert_params
        width = "fp32 (k-bit preparation upcasts them)" if setup.quant.kbit_prep else "the load dtype"
        lines.append(
            f"4-bit covers nn.Linear layers only: the {experts / 1e9:.1f}B 3D expert and router parameters stay in "
            f"{width}, not 4-bit"
        )
    if setup.lora is not None:
        lines.append("LoRA adapts nn.Linear modules only (attention, dense and shared-expert MLPs); the experts are frozen")
    return lines
