"""What each training framework (`--stack`) does when the user leaves an option out, with the file it comes from.

resolve_setup fills every option the user did not give from the stack's Preset; explicit options always win.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from vramplan.choices import Attention, Loss, Optimizer, Stack


class Preset(BaseModel):
    """A stack's defaults for the options that move memory."""

    model_config = ConfigDict(frozen=True)

    stack: Stack
    optimizer: Optimizer
    checkpointing_full: bool
    checkpointing_adapters: bool  # LoRA and QLoRA
    lora_rank: int
    lora_targets: str  # "all-linear" or a comma list of module names in transformers' naming
    lora_dropout: float
    loss: Loss
    attn: Attention
    packing: bool
    sources: tuple[str, ...]


PRESETS = {
    Stack.HF: Preset(
        stack=Stack.HF,
        # transformers/training_args.py: default_optim = "adamw_torch_fused" with torch >= 2.8.
        optimizer=Optimizer.ADAMW_FUSED,
        # TrainingArguments.gradient_checkpointing=False; peft's prepare_model_for_kbit_training and the common
        # LoRA/QLoRA recipes (TRL SFT examples) turn it on.
        checkpointing_full=False,
        checkpointing_adapters=True,
        # peft LoraConfig: r=8, lora_dropout=0.0; "all-linear" as the TRL/peft QLoRA recipes write it. vramplan keeps
        # its long-standing 16 / 0.05 for the plain hf stack, stated in every answer.
        lora_rank=16,
        lora_targets="all-linear",
        lora_dropout=0.05,
        loss=Loss.STANDARD,  # transformers loss_utils.ForCausalLMLoss
        attn=Attention.SDPA,  # transformers v5 picks sdpa when attn_implementation is not given
        packing=False,  # trl SFTConfig.packing = False
        sources=("transformers/training_args.py", "trl/trainer/sft_config.py", "peft/tuners/lora/config.py"),
    ),
    Stack.AXOLOTL: Preset(
        stack=Stack.AXOLOTL,
        # axolotl/utils/schemas/training.py: optimizer defaults to transformers' (adamw_torch_fused on torch >= 2.8).
        optimizer=Optimizer.ADAMW_FUSED,
        # axolotl examples (examples/llama-3/qlora.yml, lora-1b.yml) set gradient_checkpointing: true.
        checkpointing_full=True,
        checkpointing_adapters=True,
        # examples/llama-3/qlora.yml: lora_r 32, lora_dropout 0.05, lora_target_linear true.
        lora_rank=32,
        lora_targets="all-linear",
        lora_dropout=0.05,
        loss=Loss.STANDARD,
        attn=Attention.SDPA,
        packing=False,  # schemas/config.py sample_packing: bool | None = None (off)
        sources=("axolotl/utils/schemas/config.py", "axolotl examples/llama-3/qlora.yml"),
    ),
    Stack.LLAMA_FACTORY: Preset(
        stack=Stack.LLAMA_FACTORY,
        optimizer=Optimizer.ADAMW_FUSED,  # TrainingArguments' default optim
        # hparams/model_args.py: disable_gradient_checkpointing = False, so checkpointing is on for every method.
        checkpointing_full=True,
        checkpointing_adapters=True,
        # hparams/finetuning_args.py LoraArguments: lora_rank 8, lora_dropout 0.0, lora_target "all".
        lora_rank=8,
        lora_targets="all-linear",
        lora_dropout=0.0,
        loss=Loss.STANDARD,
        attn=Attention.SDPA,  # model_args.py flash_attn "auto": sdpa when flash-attn is not installed
        packing=False,  # data_args.py packing: None -> off for sft unless set
        sources=("LLaMA-Factory src/llamafactory/hparams/finetuning_args.py", "hparams/model_args.py"),
    ),
    Stack.TORCHTUNE: Preset(
        stack=Stack.TORCHTUNE,
        # recipes/configs/llama3_1/8B_lora_single_device.yaml: torch.optim.AdamW with fused: True.
        optimizer=Optimizer.ADAMW_FUSED,
        # 8B_lora_single_device.yaml / 8B_qlora_single_device.yaml: enable_activation_checkpointing: True;
        # 8B_full_single_device.yaml: True as well.
        checkpointing_full=True,
        checkpointing_adapters=True,
        # 8B_lora_single_device.yaml: lora_rank 8, lora_dropout 0.0, lora_attn_modules [q_proj, v_proj,
        # output_proj], apply_lora_to_mlp True (w1, w2, w3), apply_lora_to_output False.
        lora_rank=8,
        lora_targets="q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        lora_dropout=0.0,
        loss=Loss.CHUNKED,  # loss: torchtune.modules.loss.CEWithChunkedOutputLoss (num_output_chunks 8)
        attn=Attention.SDPA,  # torchtune.modules.attention uses F.scaled_dot_product_attention
        packing=False,  # dataset: packed: False
        sources=("torchtune recipes/configs/llama3_1/8B_lora_single_device.yaml", "torchtune/modules/loss"),
    ),
}


def preset_for(stack: Stack) -> Preset:
    return PRESETS[stack]
