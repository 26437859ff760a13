"""Serving across the catalog: the smallest fitting tensor-parallel size per system, replicas, prices, marks."""

import pytest

from vramplan.errors import UsageError
from vramplan.hardware.catalog import load_hardware
from vramplan.models.catalog import resolve_model
from vramplan.serving.device import serving_device
from vramplan.serving.fleet import TENSOR_PARALLEL_SIZES, plan_fleet, size_fleet
from vramplan.serving.sizing import ServeOptions, size_serving

H100_SYSTEMS = ("hgx-h100-8gpu", "lambda-8x-h100-sxm", "aws-p5.48xlarge", "coreweave-h100")
ROCM_SYSTEM = """id = "rocm-8x-mi300x"
name = "8x MI300X test server"
kind = "cloud"
provider = "test"
gpu = "mi300x"
gpu_count = 8
interconnect = "Infinity Fabric"
source = "test fixture"
retrieved = 2026-01-01

[[prices]]
amount = 0.5
currency = "USD"
kind = "cloud-hourly"
date = "2026-01"
source = "test fixture"
"""


def _fleet(model, **options):
    return plan_fleet(model, ServeOptions(**options))


def _rows(fleet):
    return {row.system: row for row in fleet.rows}


def test_llama_8b_bf16_fits_h100_systems_at_tp1():
    fleet = _fleet("llama-3.1-8b", max_model_len=8192)
    assert fleet.fits and fleet.concurrency_wanted == 1 and fleet.max_model_len == 8192
    assert fleet.engine.endswith("rule read from source, not traced")
    rows = _rows(fleet)
    for system in H100_SYSTEMS:
        row = rows[system]
        assert (row.tensor_parallel, row.replicas) == (1, 8)
        assert row.total_sequences == 8 * row.sequences_per_replica and row.sequences_per_replica >= 1
    # the row is size_serving's answer for one GPU of the system at that TP
    h100 = load_hardware().gpus["h100-sxm5-80gb"]
    device = serving_device(h100.id, h100.name, h100.memory_bytes, "catalog")
    single = size_serving(resolve_model("llama-3.1-8b"), device, ServeOptions(max_model_len=8192, concurrency=1))
    assert rows["hgx-h100-8gpu"].kv_tokens_per_replica == single.capacity.reported_tokens
    assert rows["hgx-h100-8gpu"].kv_bytes == single.budget.kv_bytes


def test_llama_70b_bf16_needs_tp2_or_more_on_80gb_gpus():
    # 70.6B parameters x 2 bytes = 141 GB of bf16 weights: more than one 80 GB GPU holds
    fleet = _fleet("llama-3.1-70b", max_model_len=8192)
    catalog = load_hardware()
    on_80gb = [row for row in fleet.rows if row.gpu in ("h100-sxm5-80gb", "a100-sxm4-80gb")]
    assert {row.system for row in on_80gb} >= set(H100_SYSTEMS)
    assert all(row.tensor_parallel >= 2 and row.replicas == row.gpu_count // row.tensor_parallel for row in on_80gb)
    assert all(row.tensor_parallel * row.replicas <= catalog.systems[row.system].gpu_count for row in fleet.rows)
    # one-GPU systems of up to 48 GB cannot hold it at all
    missed = {miss.system: miss for miss in fleet.misses}
    assert missed["aws-g6e.xlarge"].tensor_parallel == 1
    assert missed["aws-g6e.xlarge"].reason.startswith("No available memory for the cache blocks")


def test_smallest_tp_is_chosen_and_more_sequences_never_lower_it():
    few = _rows(_fleet("llama-3.1-70b", max_model_len=8192, concurrency=1))
    many = _rows(_fleet("llama-3.1-70b", max_model_len=8192, concurrency=16))
    assert set(many) <= set(few)
    assert all(many[system].tensor_parallel >= few[system].tensor_parallel for system in many)
    assert few["hgx-h100-8gpu"].tensor_parallel == 2 and many["hgx-h100-8gpu"].tensor_parallel == 4


def test_sorted_by_rent_unpriced_last_with_the_cheapest_marked():
    fleet = _fleet("llama-3.1-8b", max_model_len=8192)
    rents = [row.rent_usd_per_hour for row in fleet.rows]
    priced = [rent for rent in rents if rent is not None]
    assert rents[:len(priced)] == sorted(priced) and all(rent is None for rent in rents[len(priced):])
    (rent,) = [row for row in fleet.rows if row.cheapest_rent]
    (buy,) = [row for row in fleet.rows if row.cheapest_buy]
    assert rent is fleet.rows[0] and rent.rent_usd_per_hour == min(priced)
    assert buy.buy_usd == min(row.buy_usd for row in fleet.rows if row.buy_usd is not None)
    # newest prices: the hgx-h100 server's 2024 list price over its 2023 street estimate
    assert _rows(fleet)["hgx-h100-8gpu"].buy_usd == 317000 and _rows(fleet)["hgx-h100-8gpu"].rent_usd_per_hour is None


def test_tensor_parallel_must_divide_the_attention_heads():
    # Qwen2.5-7B has 28 attention heads: vLLM refuses TP 8
    fleet = _fleet("qwen2.5-7b", max_model_len=8192)
    assert all(row.tensor_parallel != 8 for row in fleet.rows)
    only_eight = plan_fleet("qwen2.5-7b", ServeOptions(max_model_len=8192), tensor_parallel_sizes=(8,))
    assert not only_eight.fits and all(miss.tensor_parallel == 0 for miss in only_eight.misses)
    assert "28 attention heads" in only_eight.misses[0].reason


def test_nothing_fits():
    fleet = plan_fleet("405b", ServeOptions(max_model_len=8192), tensor_parallel_sizes=(1,))
    assert not fleet.fits and fleet.rows == [] and len(fleet.misses) == len(load_hardware().systems)


@pytest.fixture
def rocm_catalog(tmp_path):
    (tmp_path / "systems").mkdir()
    (tmp_path / "systems" / "rocm-8x-mi300x.toml").write_text(ROCM_SYSTEM)
    return str(tmp_path)


def test_rocm_systems_are_left_out_unless_allowed(rocm_catalog):
    options = ServeOptions(max_model_len=8192)
    left_out = plan_fleet("llama-3.1-8b", options, rocm_catalog)
    assert left_out.skipped_rocm == ["rocm-8x-mi300x"] and "rocm-8x-mi300x" not in _rows(left_out)
    assert any("CUDA" in note for note in left_out.notes)
    allowed = plan_fleet("llama-3.1-8b", options, rocm_catalog, allow_rocm=True)
    row = _rows(allowed)["rocm-8x-mi300x"]
    assert row.rocm and row.cheapest_rent and allowed.skipped_rocm == []  # the fixture's 0.50 USD/h is cheapest


def test_context_from_the_model_and_bad_engine():
    model = resolve_model("gemma-2-2b")
    fleet = size_fleet(model, load_hardware(), ServeOptions())
    assert fleet.max_model_len == 8192 and fleet.tensor_parallel_sizes == list(TENSOR_PARALLEL_SIZES)
    with pytest.raises(UsageError, match="--engine"):
        size_fleet(model, load_hardware(), ServeOptions(engine="sglang"))
