"""The parameter inventory (vramplan/estimate/params.py): the one list of parameter tensors every memory term and
strategy reads, held to the model's own parameter count and to bitsandbytes' and torchao's storage."""

from collections import Counter

import pytest

from vramplan.estimate.dtypes import HALF_BYTES, tensor_bytes
from vramplan.estimate.params import layer_units, model_units, torchtune_units
from vramplan.estimate.quant import nf4_bytes, quantized_linear_bytes
from vramplan.models.catalog import load_catalog
from vramplan.training import resolve_setup

CATALOG = load_catalog()


def _count(units, **flags) -> int:
    return sum(u.count * t.params for u in units for t in u.tensors
               if all(getattr(t, name) is value for name, value in flags.items()))


def _shapes(units) -> Counter:
    """How many base (non-adapter) tensors of each shape the model holds."""
    shapes = Counter()
    for unit in units:
        for t in unit.tensors:
            if not t.adapter:
                shapes[t.shape] += unit.count
    return shapes


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("name", sorted(CATALOG), ids=str)
def test_inventory_counts_every_parameter_once(name, method):
    """`sum(p.numel() for p in model.parameters())` (ModelSpec.total_params), adapters aside; every decoder layer in
    exactly one unit."""
    spec = CATALOG[name].spec
    units = model_units(spec, resolve_setup(method))
    assert _count(units, adapter=False) == spec.total_params
    layers = [i for unit in layer_units(units) for i in unit.layers]
    assert sorted(layers) == list(range(spec.num_layers))


def test_qlora_quantizes_exactly_the_layer_linears_as_bitsandbytes_stores_them():
    spec = CATALOG["qwen3-30b-a3b"].spec
    units = model_units(spec, resolve_setup("qlora"))
    quantized = Counter((t.shape, u.count) for u in units for t in u.tensors if t.quantized)
    linears = Counter(((lin.out_features, lin.in_features), 1) for lin in spec.all_layer_linears)
    assert sum(n * c for (_, c), n in quantized.items()) == sum(linears.values())
    # stored: the packed bytes as a 16-bit tensor plus the QuantState; together bitsandbytes' own storage
    # (tests/estimate/test_weights.py holds quantized_linear_bytes to bitsandbytes.functional.quantize_4bit)
    layer = layer_units(units)[0]
    held = sum(t.nbytes for t in layer.tensors if t.quantized) + layer.extra_bytes
    expected = sum(quantized_linear_bytes(lin.in_features, lin.out_features, True) for lin in spec.linears_of(0))
    assert held == expected


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_torchtune_stores_the_same_tensors_in_bf16(method):
    """One inventory: torchtune's recipe holds the Hugging Face model's tensors (same shapes), all bf16, its NF4
    weights as torchao stores them (tests/estimate/test_torchtune.py holds nf4_bytes to torchao)."""
    spec = CATALOG["llama-3.2-1b"].spec
    setup = resolve_setup(method, stack="torchtune")
    hf, tt = model_units(spec, resolve_setup(method)), torchtune_units(spec, setup)
    assert _shapes(hf) == _shapes(tt)
    assert {t.width for u in tt for t in u.tensors} == {HALF_BYTES}
    nf4 = [t for u in tt for t in u.tensors if t.quantized]
    assert bool(nf4) == (method == "qlora")
    layer = layer_units(tt)[0]
    if nf4:
        held = sum(t.nbytes for t in layer.tensors if t.quantized) + layer.extra_bytes
        assert held == sum(nf4_bytes(t.params) for t in layer.tensors if t.quantized)
    else:
        assert layer.held_bytes(adapter=False) == sum(tensor_bytes(t.params * HALF_BYTES) for t in layer.tensors
                                                      if not t.adapter)
