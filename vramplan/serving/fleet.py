"""Serving across the hardware catalog: on each system, the smallest tensor-parallel size at which vLLM holds the
wanted sequences, how many such replicas the system runs, and what the system costs to rent or buy.

Each replica is one vLLM server over `tensor_parallel` GPUs sized by `size_serving` (vramplan/serving/sizing.py);
a system of `gpu_count` GPUs runs gpu_count // tensor_parallel independent replicas (no pipeline parallelism).
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.hardware.catalog import Gpu, HardwareCatalog, System, newest_price
from vramplan.hardware.purchase import DESKTOP_HOST_USD, WORKSTATION_HOST_USD, purchase_of
from vramplan.models.catalog import ResolvedModel
from vramplan.serving.device import serving_device
from vramplan.serving.formats import WeightFormat
from vramplan.serving.kv_cache import KvDtype
from vramplan.serving.sizing import ServedModel, ServeOptions, ServePlan, engine_rule, size_serving

# The tensor-parallel sizes tried, smallest first: the powers of two up to one 8-GPU node, the sizes vLLM's
# examples and the catalog's systems (1, 2, 4 or 8 GPUs) use.
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# vllm/config/model.py ModelConfig.verify_with_parallel_config: "Total number of attention heads (...) must be
# divisible by tensor parallel size" (a ValueError at start-up).
HEADS_RULE = "vLLM refuses a tensor-parallel size that does not divide the attention heads"


class FleetRow(BaseModel):
    """One system that serves the target: its smallest fitting TP, the replicas it holds, and its prices."""

    system: str
    name: str
    kind: str
    provider: str
    gpu: str
    gpu_count: int
    rocm: bool
    tensor_parallel: int  # GPUs of one replica
    replicas: int  # gpu_count // tensor_parallel
    gpu_total_bytes: int  # one GPU as vLLM measures it
    weights_bytes: int  # per GPU
    kv_bytes: int  # per GPU
    kv_tokens_per_replica: int  # vLLM's "GPU KV cache size: N tokens"
    sequences_per_replica: int  # sequences of max_model_len at once (capped by max_num_seqs)
    total_sequences: int  # sequences_per_replica x replicas
    rent_usd_per_hour: float | None  # newest cloud-hourly USD price of the instance
    rent_date: str = ""
    buy_usd: float | None  # upfront price of the machine
    buy_basis: str = ""
    buy_estimated: bool = False  # priced from parts (cards + an assumed host)
    cheapest_rent: bool = False
    cheapest_buy: bool = False


class FleetMiss(BaseModel):
    """A system that does not serve the target, with the reason at its largest tensor-parallel size tried."""

    system: str
    gpu: str
    gpu_count: int
    tensor_parallel: int  # the largest size tried; 0 when no size in TENSOR_PARALLEL_SIZES could be tried
    reason: str


class FleetPlan(BaseModel):
    """Every catalog system that serves the target, cheapest rent first (unpriced last), and those that do not."""

    engine: str  # e.g. "vLLM 0.31.0 V1 engine; rule read from source, not traced"
    engine_rule: str
    rule_source: str
    model: ServedModel
    weights_format: WeightFormat
    kv_dtype: KvDtype
    max_model_len: int
    concurrency_wanted: int
    tensor_parallel_sizes: list[int]
    allow_rocm: bool
    rows: list[FleetRow]
    misses: list[FleetMiss]
    skipped_rocm: list[str]  # ROCm systems left out (allow_rocm False)
    fits: bool  # at least one system serves the target
    notes: list[str]


def _sized(model: ResolvedModel, gpu: Gpu, options: ServeOptions, tp: int, cache: dict) -> ServePlan:
    """One replica of `tp` GPUs of `gpu`; systems sharing a GPU share the sizing."""
    key = (gpu.id, tp)
    if key not in cache:
        device = serving_device(gpu.id, gpu.name, gpu.memory_bytes, "catalog")
        cache[key] = size_serving(model, device, options.model_copy(update={"tensor_parallel": tp}))
    return cache[key]


def _first_fit(model: ResolvedModel, system: System, gpu: Gpu, options: ServeOptions, sizes: tuple[int, ...],
               cache: dict) -> tuple[ServePlan | None, FleetMiss | None]:
    """The plan at the smallest TP that fits, else why the largest one tried does not."""
    tried = [tp for tp in sizes if tp <= system.gpu_count and model.spec.num_heads % tp == 0]
    last = None
    for tp in tried:
        last = _sized(model, gpu, options, tp, cache)
        if last.fits:
            return last, None
    if last is None:
        reason = (f"no tensor-parallel size in {', '.join(map(str, sizes))} fits its {system.gpu_count} GPUs and "
                  f"divides the {model.spec.num_heads} attention heads ({HEADS_RULE})")
        return None, FleetMiss(system=system.id, gpu=gpu.id, gpu_count=system.gpu_count, tensor_parallel=0,
                               reason=reason)
    return None, FleetMiss(system=system.id, gpu=gpu.id, gpu_count=system.gpu_count,
                           tensor_parallel=last.tensor_parallel, reason=last.problems[0].message)


def _row(system: System, gpu: Gpu, plan: ServePlan, host_usd: float, workstation_host_usd: float) -> FleetRow:
    replicas = system.gpu_count // plan.tensor_parallel
    hourly = newest_price([p for p in system.prices if p.kind == "cloud-hourly" and p.currency == "USD"])
    purchase, _ = purchase_of(system, gpu, 1, host_usd, workstation_host_usd)
    return FleetRow(
        system=system.id, name=system.name, kind=system.kind, provider=system.provider, gpu=gpu.id,
        gpu_count=system.gpu_count, rocm=gpu.software == "rocm", tensor_parallel=plan.tensor_parallel,
        replicas=replicas, gpu_total_bytes=plan.gpu.total_bytes, weights_bytes=plan.budget.weights_bytes,
        kv_bytes=plan.budget.kv_bytes, kv_tokens_per_replica=plan.capacity.reported_tokens,
        sequences_per_replica=plan.capacity.sequences, total_sequences=plan.capacity.sequences * replicas,
        rent_usd_per_hour=hourly.amount if hourly else None, rent_date=hourly.date if hourly else "",
        buy_usd=purchase.upfront_usd if purchase else None, buy_basis=purchase.basis if purchase else "",
        buy_estimated=purchase.estimated if purchase else False,
    )


def _marked(rows: list[FleetRow]) -> list[FleetRow]:
    """Cheapest rent first (unpriced last), then cheapest purchase; the cheapest of each flagged."""
    rows = sorted(rows, key=lambda r: (r.rent_usd_per_hour is None, r.rent_usd_per_hour or 0.0,
                                       r.buy_usd is None, r.buy_usd or 0.0, r.tensor_parallel, r.system))
    rent = next((r for r in rows if r.rent_usd_per_hour is not None), None)
    buy = min((r for r in rows if r.buy_usd is not None), key=lambda r: r.buy_usd, default=None)
    return [r.model_copy(update={"cheapest_rent": r is rent, "cheapest_buy": r is buy}) for r in rows]


def _notes(allow_rocm: bool) -> list[str]:
    rocm = ("ROCm systems are included, sized by the same rule (read for CUDA: torch.cuda memory, CUDA graphs)"
            if allow_rocm else "ROCm systems are left out: the rule modelled is vLLM's CUDA one (--allow-rocm "
                               "includes them)")
    return [
        "each replica is one vLLM server over its tensor-parallel GPUs and must hold the wanted sequences alone; "
        "a system runs gpu_count // TP replicas and their sequences add up (no pipeline parallelism)",
        f"tensor-parallel sizes must divide the attention heads ({HEADS_RULE}: vllm/config/model.py)",
        "rent: the instance's newest cloud-hourly USD price; buy: the machine's newest catalog price, or its cards "
        "plus an assumed host (estimated)",
        rocm,
    ]


def size_fleet(model: ResolvedModel, catalog: HardwareCatalog, options: ServeOptions, allow_rocm: bool = False,
               tensor_parallel_sizes: tuple[int, ...] = TENSOR_PARALLEL_SIZES, host_usd: float = DESKTOP_HOST_USD,
               workstation_host_usd: float = WORKSTATION_HOST_USD) -> FleetPlan:
    """Serve `model` on every catalog system: `options.concurrency` (default 1) sequences of `options.max_model_len`
    on the system's GPUs at the smallest fitting tensor-parallel size; `options.tensor_parallel` is ignored."""
    from vramplan.errors import UsageError

    rule = engine_rule(options.engine)
    position_max = model.config.get("max_position_embeddings")
    max_len = options.max_model_len or position_max
    if not max_len:
        raise UsageError(f"--model {model.id}: its config.json has no max_position_embeddings; give --context")
    options = options.model_copy(update={"max_model_len": max_len, "concurrency": options.concurrency or 1})
    cache: dict = {}
    rows, misses, skipped = [], [], []
    for system in sorted(catalog.systems.values(), key=lambda s: s.id):
        gpu = catalog.gpus[system.gpu]
        if gpu.software == "rocm" and not allow_rocm:
            skipped.append(system.id)
            continue
        plan, miss = _first_fit(model, system, gpu, options, tensor_parallel_sizes, cache)
        if plan is None:
            misses.append(miss)
        else:
            rows.append(_row(system, gpu, plan, host_usd, workstation_host_usd))
    return FleetPlan(
        engine=f"vLLM {rule.version} {rule.engine} engine; rule read from source, not traced",
        engine_rule=rule.name, rule_source=rule.source,
        model=ServedModel(id=model.id, name=model.name, resolved_from=model.resolved_from,
                          max_position_embeddings=position_max),
        weights_format=options.weights, kv_dtype=options.kv_dtype, max_model_len=max_len,
        concurrency_wanted=options.concurrency, tensor_parallel_sizes=list(tensor_parallel_sizes),
        allow_rocm=allow_rocm, rows=_marked(rows), misses=misses, skipped_rocm=skipped, fits=bool(rows),
        notes=_notes(allow_rocm),
    )


def plan_fleet(model: str, options: ServeOptions, catalog: str | None = None, allow_rocm: bool = False,
               tensor_parallel_sizes: tuple[int, ...] = TENSOR_PARALLEL_SIZES) -> FleetPlan:
    """Resolve `--model` (catalog name, alias, Hub id, config.json), load the catalog, then size every system."""
    from vramplan.hardware.catalog import load_hardware
    from vramplan.models.catalog import resolve_model

    engine_rule(options.engine)
    hardware = load_hardware(catalog)
    return size_fleet(resolve_model(model), hardware, options, allow_rocm, tensor_parallel_sizes)
