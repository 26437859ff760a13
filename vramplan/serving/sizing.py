"""Serving sizing: how many sequences of a context vLLM can hold on a GPU, every memory term in bytes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from vramplan.models.catalog import ResolvedModel
from vramplan.serving.activations import ActivationPeak, profile_peak
from vramplan.serving.capacity import KvCapacity, kv_capacity
from vramplan.serving.device import ServingDevice
from vramplan.serving.engines import (
    DEFAULT_ENGINE,
    ENGINES,
    Entrypoint,
    EngineRule,
    batch_tier,
    default_max_num_batched_tokens,
)
from vramplan.serving.formats import WeightFormat, is_gguf
from vramplan.serving.kv_cache import KvDtype, KvLayout, kv_layout
from vramplan.serving.problems import (
    Problem,
    concurrency_problems,
    context_problem,
    kv_problems,
    startup_problem,
)
from vramplan.serving.vllm_budget import VllmBudget, cudagraph_estimate, kv_budget
from vramplan.serving.weights import ServingWeights, serving_weights


class ServeOptions(BaseModel):
    """How the model is served; None takes the engine's default."""

    weights: WeightFormat = WeightFormat.BF16
    kv_dtype: KvDtype = "auto"
    tensor_parallel: int = Field(1, ge=1, le=1024)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1, le=2**24)
    concurrency: int | None = Field(None, ge=1, le=2**20)
    max_num_seqs: int | None = Field(None, ge=1, le=2**20)
    max_num_batched_tokens: int | None = Field(None, ge=1, le=2**24)
    entrypoint: Entrypoint = "serve"
    enforce_eager: bool = False
    engine: str = DEFAULT_ENGINE.name


class ServedModel(BaseModel):
    id: str
    name: str
    resolved_from: str
    max_position_embeddings: int | None


class ServePlan(BaseModel):
    """The answer: per-GPU memory terms in bytes, the KV capacity, and whether the target fits."""

    engine: str  # e.g. "vLLM 0.31.0 V1 engine; rule read from source, not traced"
    engine_rule: str
    rule_source: str
    model: ServedModel
    gpu: ServingDevice
    tensor_parallel: int
    weights_format: WeightFormat
    kv_dtype: KvDtype
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    entrypoint: Entrypoint
    enforce_eager: bool
    weights: ServingWeights
    activation: ActivationPeak
    budget: VllmBudget
    kv: KvLayout
    capacity: KvCapacity
    concurrency_wanted: int | None
    fits: bool
    problems: list[Problem]
    notes: list[str]


def engine_rule(name: str) -> EngineRule:
    from vramplan.errors import UsageError

    if name not in ENGINES:
        raise UsageError(f"--engine {name!r}: choose {', '.join(ENGINES)}")
    return ENGINES[name]


def _notes(rule: EngineRule, options: ServeOptions, device: ServingDevice, layout: KvLayout) -> list[str]:
    notes = [f"every figure is per GPU, each of {options.tensor_parallel} tensor-parallel ranks"]
    if device.basis == "nvidia-smi":
        notes.append("total memory is the catalog's nvidia-smi figure; vLLM reads CUDA's total, about 0.4 GiB less")
    if options.weights is WeightFormat.NF4 or is_gguf(options.weights):
        if rule.version.startswith("0.31"):
            notes.append("vLLM 0.31.0 ships no bitsandbytes or GGUF loader (vllm/model_executor/model_loader/ has "
                         "neither); these weights are sized as stored")
    if layout.attention == "mla" and options.tensor_parallel > 1:
        notes.append("MLA's latent KV is replicated on every rank (max_tp_shards=1), not split")
    if any(group.kind == "sliding" for group in layout.groups):
        notes.append("sliding-window layers hold window + in-flight tokens per request in their own block tables "
                     "(vLLM's hybrid KV-cache manager)")
    notes.append("not modelled: speculative decoding, LoRA adapters, multimodal encoders, prefix-cache sharing")
    return notes


def size_serving(model: ResolvedModel, device: ServingDevice, options: ServeOptions) -> ServePlan:
    """Size vLLM serving `model` on `device` (one of `tensor_parallel` identical GPUs)."""
    rule = engine_rule(options.engine)
    spec, tp = model.spec, options.tensor_parallel
    position_max = model.config.get("max_position_embeddings")
    max_len = options.max_model_len or position_max
    if not max_len:
        from vramplan.errors import UsageError

        raise UsageError(f"--model {model.id}: its config.json has no max_position_embeddings; give --context")
    tier = batch_tier(rule, device.total_bytes, device.name)
    max_num_seqs = options.max_num_seqs or tier.max_num_seqs
    tokens = options.max_num_batched_tokens or default_max_num_batched_tokens(rule, tier, options.entrypoint, max_len)
    utilization = options.gpu_memory_utilization or rule.gpu_memory_utilization

    weights = serving_weights(spec, options.weights, tp, position_max)
    activation = profile_peak(spec, tokens, max_num_seqs, tp)
    graphs = 0 if options.enforce_eager else cudagraph_estimate(spec, max_num_seqs, tokens, device.id, tp)
    budget = kv_budget(rule, device.total_bytes, utilization, weights.total_bytes, activation.peak_bytes, graphs, tp)
    layout = kv_layout(spec, options.kv_dtype, tp, hybrid=rule.hybrid_kv)
    capacity = kv_capacity(rule, layout, budget.kv_bytes, max_len, max_num_seqs, rule.concurrent_batches * tokens)

    startup = startup_problem(budget) if rule.engine == "V1" else None  # V0 had no start-up check
    problems = [found for found in (startup, context_problem(max_len, position_max)) if found]
    problems += kv_problems(budget, capacity, max_len)
    problems += concurrency_problems(options.concurrency, capacity, max_num_seqs, max_len)
    return ServePlan(
        engine=f"vLLM {rule.version} {rule.engine} engine; rule read from source, not traced",
        engine_rule=rule.name, rule_source=rule.source,
        model=ServedModel(id=model.id, name=model.name, resolved_from=model.resolved_from,
                          max_position_embeddings=position_max),
        gpu=device, tensor_parallel=tp, weights_format=options.weights, kv_dtype=options.kv_dtype,
        max_model_len=max_len, max_num_seqs=max_num_seqs, max_num_batched_tokens=tokens,
        gpu_memory_utilization=utilization, entrypoint=options.entrypoint, enforce_eager=options.enforce_eager,
        weights=weights, activation=activation, budget=budget, kv=layout, capacity=capacity,
        concurrency_wanted=options.concurrency, fits=not problems, problems=problems,
        notes=_notes(rule, options, device, layout),
    )


def plan_serving(model: str, gpu: str, options: ServeOptions, catalog: str | None = None) -> ServePlan:
    """Resolve `--model` (catalog name, alias, Hub id, config.json) and `--gpu` (catalog GPU or a size), then size."""
    from vramplan.hardware.catalog import load_hardware
    from vramplan.hardware.targets import resolve_gpu_target
    from vramplan.models.catalog import resolve_model
    from vramplan.serving.device import serving_device

    engine_rule(options.engine)
    target = resolve_gpu_target(gpu, load_hardware(catalog).gpus)
    device = serving_device(target.id, target.name, target.memory_bytes, target.source)
    return size_serving(resolve_model(model), device, options)
