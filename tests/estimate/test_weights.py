import pytest

from vramplan.estimate.components.weights import weight_memory
from vramplan.estimate.dtypes import tensor_bytes
from vramplan.estimate.quant import quantized_linear_bytes
from vramplan.models.catalog import load_catalog
from vramplan.training import resolve_setup

LLAMA_8B = load_catalog()["llama-3.1-8b"].spec


def _storage_bytes(tensors) -> int:
    seen = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = tensor_bytes(storage.nbytes())
    return sum(seen.values())


@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "single-quant"])
@pytest.mark.parametrize("shape", [(256, 512), (688, 256), (1000, 64)], ids=str)
def test_4bit_storage_matches_bitsandbytes_quantize(shape, double_quant):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    weight = torch.randn(*shape, dtype=torch.bfloat16)
    packed, state = functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=double_quant)
    tensors = [packed, state.absmax, state.code]
    if double_quant:
        tensors += [state.state2.absmax, state.state2.code, state.offset]
    out_features, in_features = shape
    assert quantized_linear_bytes(in_features, out_features, double_quant) == _storage_bytes(tensors)


def test_double_quant_saves_about_0_37_bits_per_param():
    # QLoRA paper, section 3: 0.5 bits of absmax overhead fall to 0.127 bits with double quantization.
    n_in, n_out = 4096, 14336
    single = quantized_linear_bytes(n_in, n_out, double_quant=False)
    double = quantized_linear_bytes(n_in, n_out, double_quant=True)
    saved_bits = 8 * (single - double) / (n_in * n_out)
    assert saved_bits == pytest.approx(0.5 - 0.127, abs=0.01)


def test_full_bf16_weights_are_two_bytes_per_param():
    memory = weight_memory(LLAMA_8B, resolve_setup("full"))
    assert memory.base_bytes == pytest.approx(2 * LLAMA_8B.total_params, rel=1e-4)
    assert memory.trainable_params == LLAMA_8B.total_params


def test_kbit_prep_doubles_embedding_and_lm_head():
    with_prep = weight_memory(LLAMA_8B, resolve_setup("qlora"))
    without = weight_memory(LLAMA_8B, resolve_setup("qlora", kbit_prep=False))
    grown = with_prep.base_bytes - without.base_bytes
    # peft/utils/other.py: non-4-bit bf16 parameters cast to fp32: +2 bytes each.
    assert grown == pytest.approx(2 * LLAMA_8B.non_quantized_params, rel=1e-3)


def test_lora_all_linear_rank16_llama8b_parameter_count():
    # peft print_trainable_parameters for Llama-3.1-8B, r=16, all-linear: 41,943,040 trainable.
    memory = weight_memory(LLAMA_8B, resolve_setup("lora"))
    assert memory.trainable_params == 41_943_040
    assert memory.adapter_bytes == 4 * 41_943_040
