"""vLLM's KV budget rule, the capacity, and the "does not fit" reasons (vLLM's own errors)."""

import pytest

from vramplan.serving.device import ServingDevice
from vramplan.serving.engines import DEFAULT_ENGINE, VLLM_0_31
from vramplan.serving.sizing import ServeOptions, plan_serving, size_serving
from vramplan.models.catalog import resolve_model


def _plan(model="8b", gpu="rtx-3090", **options):
    return plan_serving(model, gpu, ServeOptions(**options))


def test_pinned_engine_is_vllm_0_31_with_its_defaults():
    plan = _plan(max_model_len=8192)
    assert DEFAULT_ENGINE is VLLM_0_31 and plan.engine.startswith("vLLM 0.31.0 V1 engine")
    assert plan.gpu_memory_utilization == 0.92 and plan.max_num_seqs == 256 and plan.max_num_batched_tokens == 2048
    assert plan.gpu.basis == "cuda-total" and plan.gpu.total_bytes == 25327697920


def test_budget_terms_add_up():
    budget = _plan(max_model_len=8192).budget
    assert budget.requested_bytes == -(-budget.total_bytes * 92 // 100)
    assert budget.kv_bytes == (budget.requested_bytes - budget.weights_bytes - budget.activation_bytes
                               - budget.non_torch_bytes - budget.cudagraph_bytes)


def test_h100_defaults_and_llm_class():
    serve = _plan(gpu="h100-sxm5-80gb", max_model_len=8192)
    llm = _plan(gpu="h100-sxm5-80gb", max_model_len=8192, entrypoint="llm")
    a100 = _plan(gpu="a100-sxm4-80gb", max_model_len=8192)
    assert (serve.max_num_batched_tokens, serve.max_num_seqs) == (8192, 1024)
    assert llm.max_num_batched_tokens == 16384 and (a100.max_num_batched_tokens, a100.max_num_seqs) == (2048, 256)


@pytest.mark.parametrize("tokens", [512, 2048, 8192, 32768])
def test_kv_never_grows_with_the_profiling_batch(tokens):
    smaller = _plan(max_model_len=8192, max_num_batched_tokens=tokens).budget.kv_bytes
    larger = _plan(max_model_len=8192, max_num_batched_tokens=tokens * 2).budget.kv_bytes
    assert larger <= smaller


def test_fp8_kv_doubles_the_tokens_and_eager_frees_the_graph_estimate():
    auto, fp8 = _plan(max_model_len=8192), _plan(max_model_len=8192, kv_dtype="fp8")
    assert fp8.capacity.blocks in (2 * auto.capacity.blocks, 2 * auto.capacity.blocks + 1)
    eager = _plan(max_model_len=8192, enforce_eager=True)
    assert eager.budget.cudagraph_bytes == 0 and eager.budget.kv_bytes > auto.budget.kv_bytes


def test_sequences_are_capped_by_max_num_seqs():
    plan = _plan(model="1b", gpu="h100-sxm5-80gb", max_model_len=1024, max_num_seqs=64)
    assert plan.capacity.max_concurrency > 64 and plan.capacity.sequences == 64


def test_no_memory_for_the_cache_blocks():
    plan = _plan(model="70b", gpu="rtx-4090", max_model_len=4096)
    assert not plan.fits and [p.code for p in plan.problems] == ["no-kv-memory"]
    assert plan.problems[0].message.startswith("No available memory for the cache blocks")


def test_context_too_long_names_the_longest_that_fits():
    plan = _plan(max_model_len=131072)
    problem = plan.problems[0]
    assert problem.code == "context-too-long" and not plan.fits
    assert problem.message.startswith("To serve at least one request with the model's max seq len (131072)")
    assert str(plan.capacity.estimated_max_model_len) in problem.fix
    shorter = _plan(max_model_len=plan.capacity.estimated_max_model_len)
    assert shorter.capacity.fits_one_sequence


def test_utilization_above_what_is_free_at_startup():
    plan = _plan(max_model_len=4096, gpu_memory_utilization=0.995)
    assert "startup-free-memory" in [p.code for p in plan.problems]


def test_concurrency_target_and_context_above_the_model():
    plan = _plan(max_model_len=16384, concurrency=10)
    assert [p.code for p in plan.problems] == ["concurrency"] and not plan.fits
    assert _plan(max_model_len=16384, concurrency=2).fits
    above = _plan(model="mistral-7b", max_model_len=65536, kv_dtype="fp8", weights="awq")
    assert "context-above-model" in [p.code for p in above.problems]


def test_raw_memory_size_and_tensor_parallel():
    resolved = resolve_model("llama-3.1-70b")
    device = ServingDevice(id="80GiB", name="80 GiB", total_bytes=80 * 2**30, basis="size")
    one = size_serving(resolved, device, ServeOptions(tensor_parallel=2, max_model_len=8192))
    four = size_serving(resolved, device, ServeOptions(tensor_parallel=4, max_model_len=8192))
    assert one.weights.total_bytes > four.weights.total_bytes
    assert four.capacity.blocks > one.capacity.blocks


def test_vllm_0_10_counts_nccl_and_no_graphs():
    old = _plan(model="70b", gpu="h100-sxm5-80gb", engine="vllm-0.10", tensor_parallel=4, max_model_len=8192)
    new = _plan(model="70b", gpu="h100-sxm5-80gb", tensor_parallel=4, max_model_len=8192)
    assert old.budget.cudagraph_bytes == 0 and new.budget.cudagraph_bytes > 0
    assert old.budget.non_torch_bytes > new.budget.non_torch_bytes
    assert old.gpu_memory_utilization == 0.9 and old.capacity.reported_tokens == old.capacity.blocks * 16
