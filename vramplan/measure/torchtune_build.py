"""Build the model a torchtune recipe trains, for a vramplan ModelSpec, as FakeTensors on the CPU device.

What the single-device recipes do (recipes/lora_finetune_single_device.py and full_finetune_single_device.py,
`_setup_model`): instantiate the component builder under `training.set_default_dtype(bf16)` (every parameter,
the LoRA adapters included, is bf16), `set_trainable_params` to the adapter parameters for LoRA, then
`training.set_activation_checkpointing(model, {TransformerSelfAttentionLayer})`.

Here the builder runs on the meta device. QLoRA's `to_nf4` (torchao/dtypes/nf4tensor.py) runs there too, so each
NF4Tensor's inner tensors (packed nibbles, int8 scalers, bf16 per-scaler-block factors, the mean, the 16-value
lookup table) get exactly the sizes torchao gives them; they are then re-made as fake CPU tensors of those sizes.
NF4 cannot be built under FakeTensorMode directly: `FrozenNF4Linear` swaps its weight with
`torch.utils.swap_tensors`, which refuses a fake tensor (fake mode keeps a weak reference to it).
"""

from __future__ import annotations

from typing import Any

import torch

import vramplan.measure.torchtune_compat  # noqa: F401 - before any torchtune import (torchao 0.16 names)
from vramplan.errors import NotModelledError
from vramplan.estimate.components.weights import max_seq_len
from vramplan.estimate.lora_targets import lora_plan
from vramplan.estimate.scope import SUPPORTED_FAMILIES
from vramplan.training import Method, TrainingSetup

# torchao/dtypes/nf4tensor.py NF4Tensor: the tensors one NF4 weight is stored as.
NF4_INNER = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")


def _builder_kwargs(config: dict[str, Any], setup: TrainingSetup) -> dict[str, Any]:
    return dict(
        vocab_size=int(config["vocab_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        num_kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        embed_dim=int(config["hidden_size"]),
        intermediate_dim=int(config["intermediate_size"]),
        max_seq_len=max_seq_len(config, setup.seq_len),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
    )


def build_meta_model(config: dict[str, Any], family: str, setup: TrainingSetup, device: str = "meta"):
    """The torchtune TransformerDecoder on `device` (meta; or cpu for a small real model), bf16, trainable parameters
    and activation checkpointing set as the recipe sets them."""
    from torchtune import training
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    if family not in SUPPORTED_FAMILIES:
        raise NotModelledError(
            f"--stack torchtune: the {family} family is not modelled (torchtune builders for llama and qwen2 only)"
        )
    kwargs = _builder_kwargs(config, setup)
    tied = bool(config.get("tie_word_embeddings", False))
    if "rope_theta" in config:
        kwargs["rope_base"] = config["rope_theta"]
    lora = None
    if setup.method is not Method.FULL:
        plan = lora_plan(setup)
        if plan.output and tied:
            raise NotModelledError("torchtune cannot put LoRA on a tied output projection (apply_lora_to_output)")
        lora = dict(
            lora_attn_modules=plan.torchtune_attn, apply_lora_to_mlp=plan.mlp, apply_lora_to_output=plan.output,
            lora_rank=setup.lora.rank, lora_alpha=2 * setup.lora.rank, lora_dropout=setup.lora.dropout,
            quantize_base=setup.method is Method.QLORA,
        )
    with torch.device(device), training.set_default_dtype(torch.bfloat16):
        model = _instantiate(family, tied, kwargs, lora)
    if lora is not None:
        set_trainable_params(model, get_adapter_params(model))
    if setup.gradient_checkpointing:
        from torchtune.modules import TransformerSelfAttentionLayer

        training.set_activation_checkpointing(model, auto_wrap_policy={TransformerSelfAttentionLayer})
    model.train()
    return model


def _instantiate(family: str, tied: bool, kwargs: dict[str, Any], lora: dict[str, Any] | None):
    if family == "qwen2":
        from torchtune.models.qwen2._component_builders import lora_qwen2, qwen2

        return qwen2(**kwargs, tie_word_embeddings=tied) if lora is None else lora_qwen2(
            **lora, **kwargs, tie_word_embeddings=tied)
    if tied:  # Llama 3.2 1B/3B tie the output to the embedding (llama3_2 builders)
        from torchtune.models.llama3_2._component_builders import llama3_2, lora_llama3_2

        return llama3_2(**kwargs) if lora is None else lora_llama3_2(**lora, **kwargs)
    from torchtune.models.llama3_1._component_builders import llama3_1, lora_llama3_1

    return llama3_1(**kwargs) if lora is None else lora_llama3_1(**lora, **kwargs)


def materialise_fake(model, fake_mode) -> None:
    """Replace every meta parameter and buffer by a fake CPU tensor of the same size (NF4: each inner tensor)."""
    with fake_mode:
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                data = _fake_nf4(param) if is_nf4(param) else torch.empty_like(param, device="cpu")
                module._parameters[name] = torch.nn.Parameter(data, requires_grad=param.requires_grad)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = torch.empty_like(buffer, device="cpu")
        for module in model.modules():
            if hasattr(module, "rope_init"):
                _build_rope_cache(module)


def _build_rope_cache(rope) -> None:
    """The RoPE buffers (fp32 theta [head_dim/2] and cache [max_seq_len, head_dim/2, 2]) as `rope_init` builds them.

    torchtune's meta-device loading calls `rope_init()` after materialising (training/_distributed.py). Llama 3.1's
    `Llama3ScaledRoPE.rope_init` returns early on meta and its `apply_scaling` reads values (a Python loop), so
    there theta is made directly with its size and the cache built by the module's own `build_rope_cache`.
    """
    if not hasattr(rope, "apply_scaling"):
        rope.rope_init()
        return
    rope.register_buffer("theta", torch.empty(rope.dim // 2, dtype=torch.float32), persistent=False)
    rope.build_rope_cache(rope.max_seq_len)
    rope.is_cache_built = True


def is_nf4(tensor) -> bool:
    from torchao.dtypes.nf4tensor import NF4Tensor

    return isinstance(tensor, NF4Tensor)


def nf4_inner_tensors(tensor) -> list[torch.Tensor]:
    return [getattr(tensor, name) for name in NF4_INNER]


def _fake_nf4(weight):
    from torchao.dtypes.nf4tensor import NF4Tensor, SubclassTensorArgs

    inner = {name: torch.empty_like(getattr(weight, name), device="cpu") for name in NF4_INNER}
    meta = SubclassTensorArgs(
        weight.size(), weight.stride(), weight.storage_offset(), weight.dtype, torch.device("cpu"), False
    )
    return NF4Tensor(
        meta, weight.block_size, weight.n_blocks, weight.scaler_block_size, inner["quantized_scalers"],
        inner["quantization_factor"], inner["scaler_mean"], inner["quantized_data"], inner["nf4"],
    )
