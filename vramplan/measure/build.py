"""Build the model a user trains, from its config, wrapped as they wrap it: real (small) or fake (any size).

Both builders follow a transformers Trainer user: `from_config`/`from_pretrained` with the load dtype,
bitsandbytes 4-bit through transformers' own quantizer for QLoRA, peft's `prepare_model_for_kbit_training`,
non-reentrant gradient checkpointing, then `get_peft_model`.

The fake builder never allocates: it builds on the meta device, wraps with peft there, then materialises every
tensor as a FakeTensor on the CPU device (../shared/MEMORY_FACTS.md, "Tracing on CPU"). For QLoRA each
quantized weight is produced by bitsandbytes' own `quantize_4bit` (so its storage is sized exactly as
bitsandbytes allocates it, double quantization included) and kept as a plain Parameter carrying its
QuantState: `Params4bit` cannot wrap a FakeTensor, and `Linear4bit.forward` only reads `weight.quant_state`
before calling `bnb.matmul_4bit`, the real autograd function.

Mixture-of-experts models need nothing special here: transformers v5 keeps experts as 3D nn.Parameters and the
router as a custom module, so its 4-bit quantizer leaves both in the load dtype and peft's k-bit preparation
upcasts them to fp32, exactly as a user's run does.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from vramplan.training import Attention, Method, Optimizer, Precision, TrainingSetup

LOAD_DTYPE = {
    Precision.BF16: torch.bfloat16,
    Precision.BF16_PURE: torch.bfloat16,
    Precision.BF16_MIXED: torch.float32,
    Precision.FP16_MIXED: torch.float32,
    Precision.FP32: torch.float32,
}
AUTOCAST_DTYPE = {
    Precision.BF16: torch.bfloat16,
    Precision.BF16_MIXED: torch.bfloat16,
    Precision.FP16_MIXED: torch.float16,
}


def _refuse_untraceable(config: dict[str, Any]) -> None:
    if config.get("model_type") == "gpt_oss":
        from vramplan.errors import NotModelledError

        # GptOssPreTrainedModel._supports_sdpa = False: the trace, like the estimate, covers SDPA models only.
        raise NotModelledError("gpt_oss cannot be traced: transformers has no SDPA path for it (eager attention)")


def hf_config_for(config: dict[str, Any]):
    import transformers

    fields = {key: value for key, value in config.items() if not key.startswith("_")}
    hf_config = transformers.AutoConfig.for_model(**fields)
    if getattr(hf_config, "pad_token_id", None) is not None and hf_config.pad_token_id >= hf_config.vocab_size:
        hf_config.pad_token_id = None  # random-init test configs may shrink the vocabulary below the pad id
    return hf_config


def _quantization_config(setup: TrainingSetup, quant_storage: torch.dtype = torch.uint8):
    import transformers

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=setup.quant.quant_type,
        bnb_4bit_use_double_quant=setup.quant.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=quant_storage,
    )


def attention_implementation(setup: TrainingSetup) -> str:
    """transformers' attn_implementation for `--attn`; flash-attn's kernels need CUDA, so a CPU trace refuses them."""
    if setup.attn is Attention.FLASH:
        from vramplan.errors import NotModelledError

        raise NotModelledError("--attn flash cannot run on CPU (flash-attn is CUDA-only); its saved tensors are "
                               "SDPA's flash kernel's, which `--attn sdpa` traces")
    return setup.attn.value


def build_real_model(config: dict[str, Any], setup: TrainingSetup, device: str = "cpu"):
    """A randomly initialised model with real tensors on `device` (on the CPU: small configs only).

    QLoRA goes through a saved checkpoint because transformers quantizes while loading (`from_pretrained`).
    """
    import transformers

    _refuse_untraceable(config)
    hf_config = hf_config_for(config)
    dtype = LOAD_DTYPE[setup.precision]
    if setup.method is Method.QLORA:
        with tempfile.TemporaryDirectory() as folder:
            transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype).save_pretrained(folder)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, device_map=device, quantization_config=_quantization_config(setup),
                attn_implementation=attention_implementation(setup),
            )
    else:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, dtype=dtype, attn_implementation=attention_implementation(setup)
            )
    return _wrap_for_training(model, setup)


def build_fake_model(
    config: dict[str, Any], setup: TrainingSetup, fake_mode, *, quant_storage: torch.dtype = torch.uint8
):
    """The same model with FakeTensor parameters on the CPU device: no memory, any size.

    `quant_storage` is bitsandbytes' `bnb_4bit_quant_storage`: the element type the packed 4-bit bytes are viewed
    as (FSDP-QLoRA stores them as bfloat16 so that FSDP can shard them with the other bf16 weights).
    """
    import transformers

    _refuse_untraceable(config)
    hf_config = hf_config_for(config)
    dtype = LOAD_DTYPE[setup.precision]
    quantizer = None
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            hf_config, dtype=dtype, attn_implementation=attention_implementation(setup)
        )
        if setup.transformers == 4:  # 4.x's per-expert nn.Linear layout, before bitsandbytes and peft see it
            from vramplan.measure.moe_v4 import use_v4_experts

            use_v4_experts(model)
    if setup.method is Method.QLORA:
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(_quantization_config(setup, quant_storage), pre_quantized=False)
        quantizer.preprocess_model(model, device_map={"": "cpu"}, dtype=dtype)
        model.hf_quantizer = quantizer
        model.is_loaded_in_4bit = True  # what the quantizer's after-loading step sets
    model = _wrap_for_training(model, setup)
    if quantizer is not None:
        import bitsandbytes as bnb

        # Double quantization builds bitsandbytes' dynamic map from Python scalars: build it outside fake mode.
        bnb.functional.name2qmap.setdefault("dynamic", bnb.functional.create_dynamic_map())
    settings = _4bit_settings(model) if quantizer is not None else {}
    with fake_mode:
        model.to_empty(device="cpu")  # materialises each parameter separately: tied weights come apart
        model.tie_weights()
        _quantize_fake_4bit(model, dtype, settings)
    return model


def _4bit_settings(model) -> dict[int, dict[str, Any]]:
    """Each Linear4bit's quantization settings, read before `to_empty` replaces its Params4bit weight."""
    import bitsandbytes as bnb

    return {
        id(module): dict(
            blocksize=module.weight.blocksize,
            compress_statistics=module.weight.compress_statistics,
            quant_type=module.weight.quant_type,
            quant_storage=module.weight.quant_storage,
        )
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }


def _quantize_fake_4bit(model, dtype: torch.dtype, settings: dict[int, dict[str, Any]]) -> None:
    """Give every Linear4bit a weight quantized by bitsandbytes itself, from a fake full-precision weight."""
    if not settings:
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if id(module) not in settings:
            continue
        full = torch.empty(module.out_features, module.in_features, dtype=dtype)
        packed, quant_state = bnb.functional.quantize_4bit(full, **settings[id(module)])
        weight = torch.nn.Parameter(packed, requires_grad=False)
        weight.quant_state = quant_state
        weight.bnb_quantized = True
        module.weight = weight
        module.quant_state = quant_state


def _wrap_for_training(model, setup: TrainingSetup):
    model.config.use_cache = False
    model.train()
    checkpointing = {"use_reentrant": False}
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        import peft

        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=setup.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif setup.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        if setup.method is not Method.FULL:
            model.enable_input_require_grads()
    if setup.method is Method.FULL:
        return model
    import peft

    lora = setup.lora
    targets = lora.targets if isinstance(lora.targets, str) else list(lora.targets)
    peft_config = peft.LoraConfig(r=lora.rank, lora_alpha=2 * lora.rank, lora_dropout=lora.dropout,
                                  target_modules=targets)
    return peft.get_peft_model(model, peft_config)


def make_optimizer(params: list[torch.nn.Parameter], optimizer: Optimizer):
    """The optimizer each `--optimizer` name stands for (Trainer's `optim=` choices)."""
    if optimizer is Optimizer.ADAMW:
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)
    if optimizer is Optimizer.ADAMW_FUSED:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if optimizer is Optimizer.SGD:
        return torch.optim.SGD(params, lr=1e-4)
    if optimizer is Optimizer.ADAFACTOR:
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-4, relative_step=False, scale_parameter=False, warmup_init=False)
    if optimizer is Optimizer.ADAMW_8BIT:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    raise ValueError(f"{optimizer.value} keeps its state outside torch's allocator; it cannot be traced on CPU")
