"""How to spread a job over one system: which strategy, how many nodes, whether to offload; the fastest that fits.

A system is priced whole, so every layout uses all of its GPUs: with the per-GPU micro-batch fixed, data
parallelism over more GPUs raises tokens per second in this model (communication per rank is bounded by twice the
model-state bytes while compute per rank stays constant). The tiers, tried in order until one fits:

1. one node, no offload: full fine-tuning tries ddp, zero1, zero2, zero3, fsdp; LoRA/QLoRA tries ddp, zero3,
   fsdp and device-map (device_map="auto": layers split over the GPUs of one process);
1b. the same node with the run's settings traded for memory, one more trade per tier (MEMORY_TRADES): gradient
   checkpointing on, then micro-batch 1 with gradient accumulation (the same tokens per optimizer step), then the
   8-bit AdamW (bitsandbytes; not under DeepSpeed, whose engine builds its own optimizer); each trade is named in
   the answer;
2. one node with host-RAM offload (ZeRO-Offload of the optimizer, ZeRO-3 or FSDP2 parameter offload), each
   checked against the system's host RAM;
3. several nodes (NODE_COUNTS, cloud instances and servers with a known network figure) with fsdp, zero3 and
   fsdp-hybrid; the fewest nodes that fit.

Within the first tier that fits, the fastest layout is chosen; every layout tried is kept with its verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from vramplan.errors import VramplanError
from vramplan.result import Estimate
from vramplan.hardware.catalog import Gpu, System
from vramplan.hardware.links import Links
from vramplan.hardware.throughput import StepTime, step_time, step_traffic, step_work
from vramplan.training import (
    DEEPSPEED_STRATEGIES,
    Method,
    Offload,
    Optimizer,
    Strategy,
    TrainingSetup,
    objective_options,
    resolve_setup,
)
from vramplan.units import gib

# Node counts tried for multi-node layouts: powers of two, as clusters are usually allocated.
NODE_COUNTS = (2, 4, 8, 16, 32, 64)
FULL_STRATEGIES = (Strategy.DDP, Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3, Strategy.FSDP)
ADAPTER_STRATEGIES = (Strategy.DDP, Strategy.ZERO3, Strategy.FSDP, Strategy.DEVICE_MAP)
OFFLOAD_LAYOUTS = ((Strategy.ZERO2, Offload.OPTIMIZER), (Strategy.ZERO3, Offload.OPTIMIZER),
                   (Strategy.ZERO3, Offload.PARAMS), (Strategy.FSDP, Offload.PARAMS))
MULTI_NODE_STRATEGIES = (Strategy.FSDP, Strategy.ZERO3, Strategy.FSDP_HYBRID)
MULTI_NODE_KINDS = ("cloud", "server")


class LayoutCheck(BaseModel):
    """One way to run the job on a system, and whether it fits."""

    strategy: str
    gpus: int  # per node
    nodes: int
    offload: str
    fits: bool
    needed_bytes: int | None  # per GPU (device, NCCL buffers included); None when the estimate refused
    host_bytes_per_node: int  # host RAM the offloaded states need on one node
    tokens_per_second: float | None
    communication_share: float | None
    reason: str  # why it does not fit, or what limits its speed
    traded: list[str] = []  # the settings changed to save memory, in words
    settings: dict[str, Any] = {}  # the same changes as option values (gradient_checkpointing, batch_size, optimizer)

    @property
    def label(self) -> str:
        gpus = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        nodes = f" x {self.nodes} nodes" if self.nodes > 1 else ""
        offload = f" + offload {self.offload}" if self.offload != "none" else ""
        traded = f" with {', '.join(self.traded)}" if self.traded else ""
        return f"{self.strategy} on {gpus}{nodes}{offload}{traded}"


Estimator = Callable[[TrainingSetup], Estimate]


def memory_trades(setup: TrainingSetup, strategy: Strategy | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The trades of time for memory the run has not made yet, cumulative: each entry adds one to the one before."""
    trades: list[tuple[str, dict[str, Any]]] = []
    changes: dict[str, Any] = {}
    if not setup.gradient_checkpointing:
        changes["gradient_checkpointing"] = True
        trades.append(("gradient checkpointing", dict(changes)))
    if setup.batch_size > 1:
        changes["batch_size"] = 1
        trades.append((f"micro-batch 1 x {setup.batch_size} accumulation steps", dict(changes)))
    eight_bit = setup.optimizer in (Optimizer.ADAMW, Optimizer.ADAMW_FUSED) and strategy not in DEEPSPEED_STRATEGIES
    if eight_bit and setup.stack.value == "hf":
        changes["optimizer"] = Optimizer.ADAMW_8BIT
        trades.append(("8-bit AdamW", dict(changes)))
    return trades


def traded(setup: TrainingSetup, settings: dict[str, Any]) -> TrainingSetup:
    """The run with trade settings applied (validated again by variant's resolve_setup)."""
    return setup.model_copy(update=settings) if settings else setup


def _trade_names(setup: TrainingSetup, settings: dict[str, Any]) -> list[str]:
    names = []
    if settings.get("gradient_checkpointing"):
        names.append("gradient checkpointing")
    if "batch_size" in settings:
        names.append(f"micro-batch 1 x {setup.batch_size} accumulation steps")
    if "optimizer" in settings:
        names.append("8-bit AdamW")
    return names


def variant(setup: TrainingSetup, gpus: int, nodes: int, strategy: Strategy, offload: Offload) -> TrainingSetup:
    """The setup on another layout, through resolve_setup so its checks (DeepSpeed optimizers, offload rules) run."""
    lora, quant = setup.lora, setup.quant
    return resolve_setup(
        setup.method, precision=setup.precision, optimizer=setup.optimizer, batch_size=setup.batch_size,
        gradient_checkpointing=setup.gradient_checkpointing,
        lora_rank=lora.rank if lora else None, lora_targets=lora.targets if lora else None,
        lora_dropout=lora.dropout if lora else None, double_quant=quant.double_quant if quant else None,
        kbit_prep=quant.kbit_prep if quant else None, gpus=gpus, nodes=nodes,
        strategy=strategy if gpus * nodes > 1 or strategy is not Strategy.SINGLE else None, offload=offload,
        # the run's stack and switches travel with it: a layout never silently turns a torchtune or Liger run
        # into a plain HF one
        stack=setup.stack, loss=setup.loss, liger=setup.liger, packing=setup.packing, attn=setup.attn,
        optimizer_in_backward=setup.optimizer_in_backward, activation_offload=setup.activation_offload,
        **objective_options(setup),
    )


def check_layout(
    setup: TrainingSetup, estimator: Estimator, gpu: Gpu, system: System | None, links: Links,
    usable_bytes: int, utilisation: float | None, original: TrainingSetup | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[LayoutCheck, StepTime | None]:
    """`setup` is the layout to check; `original` the run before `settings` traded memory for time."""
    settings = settings or {}
    original = original or setup
    base = {"strategy": setup.strategy.value, "gpus": setup.gpus, "nodes": setup.nodes,
            "offload": setup.offload.value, "traded": _trade_names(original, settings), "settings": settings}
    try:
        estimate = estimator(setup)
    except VramplanError as err:
        return LayoutCheck(**base, fits=False, needed_bytes=None, host_bytes_per_node=0, tokens_per_second=None,
                           communication_share=None, reason=f"not modelled: {err}"), None
    needed, host = estimate.needed_on(gpu.memory_bytes), estimate.host_bytes * setup.gpus
    timing = None
    if gpu.bf16_dense_tflops is not None:
        spec = estimate.model.spec
        work = step_work(spec, setup, estimate.components.get("optimizer_states", 0))
        timing = step_time(work, setup, step_traffic(spec, setup), links, gpu, utilisation)
    reason = ""
    if needed > usable_bytes:
        reason = f"needs {gib(needed):.1f} GiB per GPU of {gib(usable_bytes):.1f} GiB usable"
    elif host and (system is None or system.host_ram_bytes is None):
        reason = f"offload needs {gib(host):.0f} GiB of host RAM per node; the catalog gives none for this option"
    elif host and host > system.host_ram_bytes:
        reason = (f"offload needs {gib(host):.0f} GiB of host RAM per node ({gib(estimate.host_bytes):.0f} GiB x "
                  f"{setup.gpus} GPUs); the system has {gib(system.host_ram_bytes):.0f} GiB")
    elif timing is not None and timing.missing:
        reason = f"speed unknown: {timing.missing}"
    check = LayoutCheck(**base, fits=not reason or reason.startswith("speed unknown"), needed_bytes=needed,
                        host_bytes_per_node=host, tokens_per_second=timing.tokens_per_second if timing else None,
                        communication_share=timing.communication_share if timing else None, reason=reason)
    return check, timing


def _tiers(setup: TrainingSetup, gpus: int, system: System | None, max_nodes: int):
    """The layouts to try, tier by tier; a tier is (name, [(setup, trade settings) or (layout, refusal reason)])."""
    def build(count: int, nodes: int, strategy: Strategy, offload: Offload = Offload.NONE,
              settings: dict[str, Any] | None = None):
        settings = settings or {}
        try:
            return variant(traded(setup, settings), count, nodes, strategy, offload), settings
        except VramplanError as err:
            return (f"{strategy.value} on {count} GPUs x {nodes}", str(err))

    if gpus == 1:
        node, strategies = "one GPU", (Strategy.SINGLE,)
    else:
        node = f"one node of {gpus} GPUs"
        strategies = FULL_STRATEGIES if setup.method is Method.FULL else ADAPTER_STRATEGIES
    count = 1 if gpus == 1 else gpus
    yield node, [build(count, 1, strategy) for strategy in strategies]
    for depth in range(len(memory_trades(setup))):
        layouts = []
        for strategy in strategies:
            trades = memory_trades(setup, strategy)
            if depth < len(trades):
                layouts.append(build(count, 1, strategy, settings=trades[depth][1]))
        yield f"{node}, trading time for memory", layouts
    yield "host-RAM offload", [build(gpus, 1, strategy, offload) for strategy, offload in OFFLOAD_LAYOUTS]
    if system is None or gpus == 1 or max_nodes < 2:
        return
    if system.kind not in MULTI_NODE_KINDS:
        yield "several nodes", [("several nodes", f"a {system.kind} is not offered as a multi-node cluster")]
        return
    if system.network_gbps is None:
        yield "several nodes", [("several nodes", "network bandwidth between nodes unknown (network_gbps)")]
        return
    # before more nodes, the cheapest trade (checkpointing) is made where the run has not made it
    first = memory_trades(setup)[:1]
    settings = first[0][1] if first and "gradient_checkpointing" in first[0][1] else {}
    for nodes in NODE_COUNTS:
        if nodes <= max_nodes:
            yield f"{nodes} nodes", [build(gpus, nodes, strategy, settings=settings)
                                     for strategy in MULTI_NODE_STRATEGIES]


def _refused(label: str, reason: str) -> LayoutCheck:
    strategy = label.partition(" on ")[0]
    return LayoutCheck(strategy=strategy, gpus=0, nodes=0, offload="none", fits=False, needed_bytes=None,
                       host_bytes_per_node=0, tokens_per_second=None, communication_share=None, reason=reason)


def choose_layout(
    setup: TrainingSetup, estimator: Estimator, gpu: Gpu, system: System | None, gpus: int, links: Links,
    usable_bytes: int, utilisation: float | None, max_nodes: int,
) -> tuple[LayoutCheck | None, StepTime | None, list[LayoutCheck], str]:
    """(chosen layout, its step time, every layout tried, why it was chosen)."""
    tried: list[LayoutCheck] = []
    offloaded = None  # the best host-RAM offload layout, weighed against the fewest nodes that fit without it
    for tier, setups in _tiers(setup, gpus, system, max_nodes):
        results = []
        for candidate, detail in setups:
            if isinstance(candidate, str):
                tried.append(_refused(candidate, detail))
                continue
            check, timing = check_layout(candidate, estimator, gpu, system, links, usable_bytes, utilisation,
                                         original=setup, settings=detail)
            tried.append(check)
            if check.fits:
                results.append((check, timing))
        if results:
            chosen, timing = max(results, key=lambda r: (r[0].tokens_per_second or 0.0, -(r[0].needed_bytes or 0)))
            others = [c.label for c, _ in results if c is not chosen]
            why = f"{tier}: {chosen.label}" + (", the fastest of those that fit" if others else ", the only fit")
            if others:
                why += f" (also fit: {', '.join(others)})"
            if tier == "host-RAM offload":
                # Offload pays in PCIe traffic; several nodes may cost fewer node-hours: look on before choosing.
                offloaded = (chosen, timing, why)
                continue
            if offloaded is not None and _node_hours(offloaded[0]) <= _node_hours(chosen):
                chosen_off, timing_off, why_off = offloaded
                return chosen_off, timing_off, tried, why_off + f"; fewer node-hours per token than {chosen.label}"
            if offloaded is not None:
                why += f"; fewer node-hours per token than {offloaded[0].label}"
            return chosen, timing, tried, why
    if offloaded is not None:
        return offloaded[0], offloaded[1], tried, offloaded[2]
    return None, None, tried, "no layout fits"


def _node_hours(check: LayoutCheck) -> float:
    """Nodes per token per second: what a layout costs per token, up to the price of one node."""
    return check.nodes / check.tokens_per_second if check.tokens_per_second else float("inf")
