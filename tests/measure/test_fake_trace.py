"""The fake-tensor trace (any model size, no memory) counts exactly what the real step allocates.

Real: small random-init models with real tensors, a whole training step as warm-up (what a GPU probe does).
Fake: the same config built on the meta device and materialised as FakeTensors, QLoRA quantized by
bitsandbytes' own quantize_4bit, warmed up with one optimizer step only. Same bytes, to the byte.
"""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vramplan.measure.hf_step import trace_training_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

pytestmark = pytest.mark.trace
CONFIGS = Path(__file__).resolve().parents[2] / "validation" / "configs"

CASES = [
    pytest.param("tiny-llama", dict(method="full"), id="llama-full"),
    pytest.param("tiny-qwen2-tied", dict(method="full", optimizer="sgd"), id="qwen2-tied-sgd"),
    pytest.param("tiny-mistral", dict(method="full", optimizer="adamw-8bit"), id="mistral-adamw8bit"),
    pytest.param("tiny-qwen3", dict(method="lora", precision="bf16-mixed"), id="qwen3-lora-bf16mixed"),
    pytest.param("tiny-llama", dict(method="qlora"), id="llama-qlora-dq"),
    pytest.param("tiny-gemma3", dict(method="qlora", double_quant=False, kbit_prep=False, gradient_checkpointing=False),
                 id="gemma3-qlora-plain"),
]


@pytest.mark.parametrize("name, options", CASES)
def test_fake_trace_equals_real_trace(name, options):
    config = resolve_model(str(CONFIGS / f"{name}.json")).config
    options = dict(options)
    setup = resolve_setup(options.pop("method"), **{"batch_size": 2, "seq_len": 256, **options})
    fake = trace_training_step(config, setup, fake=True, warmup="optimizer")
    real = trace_training_step(config, setup, fake=False, warmup="step")
    assert fake.peak_allocated_bytes == real.peak_allocated_bytes
    assert fake.peak_phase == real.peak_phase
    assert fake.categories == real.categories
    assert fake.total_params == real.total_params
    assert fake.trainable_params == real.trainable_params


def test_qlora_weights_are_stored_as_bitsandbytes_allocates_them():
    """The traced idle bytes of a QLoRA model include each 4-bit weight, its absmax and (double quant) state2."""
    import bitsandbytes as bnb
    import torch

    config = resolve_model(str(CONFIGS / "tiny-llama.json")).config
    setup = resolve_setup("qlora", batch_size=1, seq_len=64, lora_targets="q_proj")
    trace = trace_training_step(config, setup)
    q_proj = next(row for row in trace.by_module if row.module == "model.layers.*.self_attn.q_proj.base_layer")
    weight = torch.empty(config["hidden_size"], config["hidden_size"], dtype=torch.bfloat16)
    packed, state = bnb.functional.quantize_4bit(weight, compress_statistics=True, quant_type="nf4")
    tensors = [packed, state.absmax, state.code, state.state2.absmax, state.state2.code, state.offset]
    from vramplan.measure.livebytes import cuda_block_bytes

    per_layer = sum(cuda_block_bytes(t.untyped_storage().nbytes()) for t in tensors)
    assert q_proj.categories["parameters"] == config["num_hidden_layers"] * per_layer
