"""--attn and --packing: which layers get a mask, and what eager attention keeps (the trace side is in the matrix's
CI cases: tiny-*-packing, tiny-*-eager)."""

from __future__ import annotations

from vramplan.estimate import estimate_memory
from vramplan.estimate.components.activations.attention import masked_layer_ids, model_mask_bytes, scores_elements
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup


def test_packing_masks_every_layer_and_flash_none():
    spec = resolve_model("gemma-3-4b").spec
    assert masked_layer_ids(spec, resolve_setup("lora", packing=True)) == tuple(range(spec.num_layers))
    assert masked_layer_ids(spec, resolve_setup("lora", seq_len=8192, attn="flash")) == ()
    assert masked_layer_ids(spec, resolve_setup("lora", seq_len=8192))  # its sliding-window layers
    # one b x s x s bool mask per attention kind (full and sliding)
    setup = resolve_setup("lora", packing=True, batch_size=4, seq_len=1024)
    assert model_mask_bytes(spec, setup) == 2 * 4 * 1024 * 1024


def test_flash_equals_sdpa_without_masks():
    model = resolve_model("llama-3.1-8b")
    sdpa = estimate_memory(model, resolve_setup("lora", seq_len=4096))
    flash = estimate_memory(model, resolve_setup("lora", seq_len=4096, attn="flash"))
    assert flash.peak_allocated_bytes == sdpa.peak_allocated_bytes


def test_eager_keeps_the_fp32_softmax_and_the_probabilities_per_layer():
    model = resolve_model("llama-3.1-8b")
    common = dict(batch_size=1, seq_len=1024, gradient_checkpointing=False)
    sdpa = estimate_memory(model, resolve_setup("full", **common))
    eager = estimate_memory(model, resolve_setup("full", attn="eager", **common))
    scores = scores_elements(model.spec, resolve_setup("full", **common))
    forward = {e.phase: e.total_bytes for e in sdpa.phases}["forward"]
    extra = {e.phase: e.total_bytes for e in eager.phases}["forward"] - forward
    # at the logits every layer keeps 6 bytes per score (fp32 softmax output + bf16 probabilities); plus the mask
    assert 6 * scores * model.spec.num_layers < extra < 6 * scores * (model.spec.num_layers + 2)
