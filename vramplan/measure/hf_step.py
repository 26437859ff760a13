"""Run the real Hugging Face training step on CPU and count its live tensor bytes.

The model is built from its config with random weights (no download), wrapped as users wrap it (peft LoRA,
bitsandbytes 4-bit through transformers' own loader, gradient checkpointing), and driven through
forward, backward and optimizer step the way transformers' Trainer drives it: accelerate's autocast around
the forward, `zero_grad(set_to_none=True)` after the step. The steady-state step (after a warm-up step, so
optimizer states exist) is the one measured. Sized for small configs: the tensors are real.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any

import torch
from pydantic import BaseModel

from vramplan.measure.livebytes import LiveBytesTracker
from vramplan.training import Method, Optimizer, Precision, TrainingSetup

_AUTOCAST_DTYPE = {
    Precision.BF16: torch.bfloat16,
    Precision.BF16_MIXED: torch.bfloat16,
    Precision.FP16_MIXED: torch.float16,
}
_LOAD_DTYPE = {
    Precision.BF16: torch.bfloat16,
    Precision.BF16_MIXED: torch.float32,
    Precision.FP16_MIXED: torch.float32,
    Precision.FP32: torch.float32,
}


class StepTrace(BaseModel):
    """Live-bytes peaks of one steady-state training step."""

    peak_allocated_bytes: int
    peak_phase: str
    phase_peaks: dict[str, int]
    idle_bytes: int
    total_params: int
    trainable_params: int


def build_model(config: dict[str, Any], setup: TrainingSetup):
    """A randomly initialised model for `config`, prepared for `setup` as a Trainer user would."""
    import transformers

    hf_config = transformers.AutoConfig.for_model(**config)
    if getattr(hf_config, "pad_token_id", None) is not None and hf_config.pad_token_id >= hf_config.vocab_size:
        hf_config.pad_token_id = None  # random-init test configs may shrink the vocabulary below the pad id
    dtype = _LOAD_DTYPE[setup.precision]
    if setup.method is Method.QLORA:
        model = _load_4bit(hf_config, setup, dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    if setup.method is Method.QLORA and setup.quant.kbit_prep:
        import peft

        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=setup.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif setup.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if setup.method is not Method.FULL:
            model.enable_input_require_grads()
    if setup.method is not Method.FULL:
        import peft

        lora = setup.lora
        targets = lora.targets if isinstance(lora.targets, str) else list(lora.targets)
        peft_config = peft.LoraConfig(
            r=lora.rank, lora_alpha=2 * lora.rank, lora_dropout=lora.dropout, target_modules=targets
        )
        model = peft.get_peft_model(model, peft_config)
    return model


def _load_4bit(hf_config, setup: TrainingSetup, dtype):
    """Quantize through transformers' bitsandbytes loader, as `from_pretrained(quantization_config=...)` does."""
    import transformers

    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=setup.quant.quant_type,
        bnb_4bit_use_double_quant=setup.quant.double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    with tempfile.TemporaryDirectory() as folder:
        transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype).save_pretrained(folder)
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map="cpu", quantization_config=quant, attn_implementation="sdpa"
        )


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


def _cuda_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: `at::dropout` takes `native_dropout`, whose mask is bool (1 byte/element).

    On CPU `at::dropout` keeps a mask in the input's dtype instead (aten/src/ATen/native/Dropout.cpp,
    `is_fused_kernel_acceptable` is CUDA-only), which would over-count the trace.
    """
    if not training or p == 0.0:
        return input
    return torch.ops.aten.native_dropout(input, p, True)[0]


@contextlib.contextmanager
def _cuda_like_kernels():
    original = torch.nn.functional.dropout
    torch.nn.functional.dropout = _cuda_dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = original


def trace_training_step(config: dict[str, Any], setup: TrainingSetup, seed: int = 0) -> StepTrace:
    """Peak live bytes of the second training step of `config` under `setup`, on CPU."""
    from accelerate.utils import convert_to_fp32

    torch.manual_seed(seed)
    model = build_model(config, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, setup.optimizer)
    vocab = int(config["vocab_size"])
    input_ids = torch.randint(0, vocab, (setup.batch_size, setup.seq_len))
    tracker = LiveBytesTracker(skip_matmul_arithmetic=True)
    autocast = (
        torch.autocast("cpu", dtype=_AUTOCAST_DTYPE[setup.precision])
        if setup.autocast
        else contextlib.nullcontext()
    )
    with _cuda_like_kernels(), tracker:
        tracker.track_all(model.parameters())
        tracker.track_all(model.buffers())
        for _ in range(2):
            tracker.reset_peak()
            tracker.set_phase("forward")
            with autocast:
                outputs = model(input_ids=input_ids, labels=input_ids)
            if setup.autocast:
                # accelerate's prepare_model wraps forward in convert_outputs_to_fp32 (Trainer with bf16/fp16=True).
                outputs = convert_to_fp32(outputs)
            loss = outputs.loss
            del outputs
            tracker.set_phase("backward")
            loss.backward()
            del loss
            tracker.set_phase("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.set_phase("idle")
    return StepTrace(
        peak_allocated_bytes=tracker.peak_bytes,
        peak_phase=tracker.peak_phase,
        phase_peaks=dict(tracker.phase_peaks),
        idle_bytes=tracker.live_bytes,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in params),
    )
