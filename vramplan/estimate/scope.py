"""What estimate/ models: every combination without a traced rule is refused with the reason, never guessed.

refuse_unmodelled covers the Hugging Face stacks (mixture of experts, --loss fused, --liger, unmodelled switches,
gemma2); refuse_unmodelled_torchtune the torchtune recipes.
"""

from __future__ import annotations

from vramplan.errors import NotModelledError
from vramplan.estimate.lora_targets import lora_plan, peft_parameter_targets
from vramplan.models.spec import ModelSpec
from vramplan.training import Attention, Loss, Method, Optimizer, Precision, Stack, Strategy, TrainingSetup


# Switches whose memory rules are not written yet: refused with the reason rather than estimated as if absent.
_UNMODELLED_SWITCHES = {
    "activation_offload": (lambda s: s.activation_offload and s.stack is not Stack.TORCHTUNE, "--activation-offload"),
    "optimizer_in_backward": (
        lambda s: s.optimizer_in_backward and s.stack is not Stack.TORCHTUNE, "--optimizer-in-backward"
    ),
}


def refuse_unmodelled(spec: ModelSpec, setup: TrainingSetup) -> None:
    """Combinations without a traced rule are refused rather than guessed."""
    if setup.transformers == 4:
        refuse_unmodelled_v4(spec, setup)
    refuse_unmodelled_moe(spec, setup)
    if setup.loss is Loss.FUSED:
        refuse_unmodelled_fused(setup)
    if setup.liger:
        refuse_unmodelled_liger(spec.family, setup)
    for applies, what in _UNMODELLED_SWITCHES.values():
        if applies(setup):
            raise NotModelledError(f"{what} is not modelled yet")
    if spec.family == "gemma2":
        raise NotModelledError(
            "gemma2 trains with eager attention in transformers (it has no SDPA path), which keeps the s x s "
            "attention scores; that path is not modelled yet"
        )


def refuse_unmodelled_v4(spec: ModelSpec, setup: TrainingSetup) -> None:
    """--transformers 4 is modelled where it is traced: Mixtral, LoRA or QLoRA on the attention, one GPU, HF stack
    (vramplan/measure/moe_v4.py). Dense models' 4.x code (its loss, its attention) is not rebuilt, so refused."""
    from vramplan.training import Method, Stack, Strategy

    where = ("--transformers 4 is modelled for Mixtral and Qwen3-MoE with LoRA/QLoRA on the attention projections, "
             "on one GPU (HF stack): ")
    if spec.family not in ("mixtral", "qwen3_moe"):  # vramplan/measure/moe_v4.py V4_FAMILIES
        raise NotModelledError(where + f"{spec.family}'s 4.x code is not rebuilt")
    if setup.method is Method.FULL or setup.strategy is not Strategy.SINGLE or setup.stack is not Stack.HF:
        raise NotModelledError(where + "this run is not")
    attention = {linear.name.rsplit(".", 1)[-1] for linear in spec.attention_linears}
    targets = setup.lora.targets
    if targets == "all-linear" or any(target not in attention for target in targets):
        raise NotModelledError(where + "LoRA beyond the attention projections (4.x's expert, router or dense "
                                       "MLP linears) is not modelled")


def refuse_unmodelled_moe(spec: ModelSpec, setup, tracing: bool = False) -> None:
    """MoE combinations without a traced rule are refused rather than guessed.

    `tracing`: the trace runs the real code, so LoRA on the experts is let through when peft accepts it
    (lora_dropout 0): it measures what the estimate does not model yet.
    """
    if spec.moe is None:
        return
    if spec.family == "gpt_oss":
        raise NotModelledError(
            "gpt_oss has no SDPA path in transformers (GptOssPreTrainedModel._supports_sdpa = False): it trains with "
            "eager attention plus attention sinks, which keeps the s x s scores; that path is not modelled yet"
        )
    if setup.lora is None:
        return
    remapped = peft_parameter_targets(spec, setup.lora.targets)
    if not remapped or (tracing and setup.lora.dropout == 0):
        return
    attention = ",".join(lin.name for lin in spec.attention_linears)
    named = setup.lora.targets if isinstance(setup.lora.targets, str) else ",".join(remapped)
    if tracing:
        raise NotModelledError(
            f"peft 0.21 turns --lora-targets {named} on {spec.family} into adapters on the 3D expert parameters "
            "(lora.ParamWrapper), which refuses lora_dropout != 0: trace it with --lora-dropout 0"
        )
    raise NotModelledError(
        f"LoRA on {spec.family} experts is not modelled: peft 0.21 turns --lora-targets {named} into adapters on "
        "the 3D expert parameters and the router (target_parameters, lora.ParamWrapper, which also requires "
        f"--lora-dropout 0; `vramplan trace` measures it); target the attention instead, e.g. --lora-targets "
        f"{attention}"
    )


# Strategies whose lm_head weight is whole on each GPU when liger reads `lm_head.weight` directly.
_TRACED_STRATEGIES = (Strategy.SINGLE, Strategy.DDP)


def refuse_unmodelled_fused(setup: TrainingSetup) -> None:
    """Traced: one GPU (or a DDP replica, which runs the same step)."""
    if setup.strategy not in _TRACED_STRATEGIES:
        raise NotModelledError(f"--loss fused with --strategy {setup.strategy.value} is not modelled yet")


# liger_kernel/transformers/monkey_patch.py apply_liger_kernel_to_{llama,mistral,qwen2,qwen3}: RMSNorm, SwiGLU MLP
# and RoPE patched as these rules count them.
LIGER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def refuse_unmodelled_liger(family: str, setup: TrainingSetup) -> None:
    """--liger is traced for these families on one GPU."""
    if family not in LIGER_FAMILIES:
        raise NotModelledError(f"--liger is modelled for {', '.join(LIGER_FAMILIES)}, not {family}")
    if setup.strategy is not Strategy.SINGLE:
        raise NotModelledError(f"--liger is modelled on one GPU, not with --strategy {setup.strategy.value}")


# torchtune builders vramplan models: models/llama3_1, llama3_2 (family llama) and models/qwen2.
SUPPORTED_FAMILIES = ("llama", "qwen2")


def refuse_unmodelled_family(spec: ModelSpec) -> None:
    if spec.family not in SUPPORTED_FAMILIES or spec.is_moe or spec.mla is not None:
        raise NotModelledError(
            f"--stack torchtune: the {spec.family} family is not modelled (torchtune builders for llama and qwen2)"
        )


# The fused AdamW (torch/optim/adamw.py _fused_adamw) and the foreach one are modelled by components/optimizer.py.
MODELLED_OPTIMIZERS = (Optimizer.ADAMW_FUSED, Optimizer.ADAMW)


def refuse_unmodelled_torchtune(spec: ModelSpec, setup: TrainingSetup) -> None:
    refuse_unmodelled_family(spec)
    if setup.precision is not Precision.BF16:
        raise NotModelledError(
            f"--stack torchtune trains in pure bf16; --precision {setup.precision.value} is not modelled"
        )
    if setup.optimizer not in MODELLED_OPTIMIZERS:
        raise NotModelledError(
            f"--stack torchtune with --optimizer {setup.optimizer.value} is not modelled; use adamw-fused or adamw"
        )
    if setup.strategy not in (Strategy.SINGLE, Strategy.FSDP):
        raise NotModelledError("--stack torchtune is modelled for the single-device recipes and the distributed ones "
                               "over one FSDP2 mesh (--strategy fsdp)")
    if setup.strategy is Strategy.FSDP and setup.world_size > 1:
        # torchao's NF4 shards its inner tensors only when each divides by the world (nf4tensor.py
        # fsdp_pre_all_gather / chunk); the estimate's flat rule for them is not traced.
        if setup.method is Method.QLORA:
            raise NotModelledError("--stack torchtune QLoRA on several GPUs (torchao NF4 under FSDP2) is not modelled")
        if setup.activation_offload or setup.offload.value != "none":
            raise NotModelledError("--stack torchtune on several GPUs with activation offloading or fsdp_cpu_offload "
                                   "is not modelled")
    if setup.packing or setup.liger or setup.attn is not Attention.SDPA:
        raise NotModelledError("--stack torchtune with --packing, --liger or --attn other than sdpa is not modelled")
    if setup.activation_offload and not setup.gradient_checkpointing:
        raise NotModelledError("torchtune refuses enable_activation_offloading without activation checkpointing")
    if setup.lora is not None:
        lora_plan(setup)
