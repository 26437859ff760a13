"""How to spread a job over one system: which strategy, how many nodes, whether to offload; the fastest that fits.

A system is priced whole, so every layout uses all of its GPUs: with the per-GPU micro-batch fixed, data
parallelism over more GPUs raises tokens per second in this model (communication per rank is bounded by twice the
model-state bytes while compute per rank stays constant). The tiers, tried in order until one fits:

1. one node, no offload: full fine-tuning tries ddp, zero1, zero2, zero3, fsdp; LoRA/QLoRA tries ddp, zero3,
   fsdp and device-map (device_map="auto": layers split over the GPUs of one process);
2. one node with host-RAM offload (ZeRO-Offload of the optimizer, ZeRO-3 or FSDP2 parameter offload), each
   checked against the system's host RAM;
3. several nodes (NODE_COUNTS, cloud instances and servers with a known network figure) with fsdp, zero3 and
   fsdp-hybrid; the fewest nodes that fit.

Within the first tier that fits, the fastest layout is chosen; every layout tried is kept with its verdict.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from vramplan.errors import VramplanError
from vramplan.result import Estimate
from vramplan.hardware.catalog import Gpu, System
from vramplan.hardware.links import Links
from vramplan.hardware.throughput import StepTime, step_time, step_traffic
from vramplan.training import Method, Offload, Strategy, TrainingSetup, resolve_setup
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

    @property
    def label(self) -> str:
        gpus = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        nodes = f" x {self.nodes} nodes" if self.nodes > 1 else ""
        offload = f" + offload {self.offload}" if self.offload != "none" else ""
        return f"{self.strategy} on {gpus}{nodes}{offload}"


Estimator = Callable[[TrainingSetup], Estimate]


def variant(setup: TrainingSetup, gpus: int, nodes: int, strategy: Strategy, offload: Offload) -> TrainingSetup:
    """The setup on another layout, through resolve_setup so its checks (DeepSpeed optimizers, offload rules) run."""
    lora, quant = setup.lora, setup.quant
    return resolve_setup(
        setup.method, precision=setup.precision, optimizer=setup.optimizer, batch_size=setup.batch_size,
        seq_len=setup.seq_len, gradient_checkpointing=setup.gradient_checkpointing,
        lora_rank=lora.rank if lora else None, lora_targets=lora.targets if lora else None,
        lora_dropout=lora.dropout if lora else None, double_quant=quant.double_quant if quant else None,
        kbit_prep=quant.kbit_prep if quant else None, gpus=gpus, nodes=nodes,
        strategy=strategy if gpus * nodes > 1 or strategy is not Strategy.SINGLE else None, offload=offload,
        # the run's stack and switches travel with it: a layout never silently turns a torchtune or Liger run
        # into a plain HF one
        stack=setup.stack, loss=setup.loss, liger=setup.liger, packing=setup.packing, attn=setup.attn,
        optimizer_in_backward=setup.optimizer_in_backward, activation_offload=setup.activation_offload,
    )


def check_layout(
    setup: TrainingSetup, estimator: Estimator, gpu: Gpu, system: System | None, links: Links,
    flops_per_token: int, usable_bytes: int, utilisation: float,
) -> tuple[LayoutCheck, StepTime | None]:
    base = {"strategy": setup.strategy.value, "gpus": setup.gpus, "nodes": setup.nodes,
            "offload": setup.offload.value}
    try:
        estimate = estimator(setup)
    except VramplanError as err:
        return LayoutCheck(**base, fits=False, needed_bytes=None, host_bytes_per_node=0, tokens_per_second=None,
                           communication_share=None, reason=f"not modelled: {err}"), None
    needed, host = estimate.device_bytes, estimate.host_bytes * setup.gpus
    timing = None
    if gpu.bf16_dense_tflops is not None:
        timing = step_time(flops_per_token, setup, step_traffic(estimate.model.spec, setup), links,
                           gpu.bf16_dense_tflops, utilisation)
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
    """The layouts to try, tier by tier; a tier is (name, [setups or (layout, refusal reason)])."""
    def build(count: int, nodes: int, strategy: Strategy, offload: Offload = Offload.NONE):
        try:
            return variant(setup, count, nodes, strategy, offload)
        except VramplanError as err:
            return (f"{strategy.value} on {count} GPUs x {nodes}", str(err))

    if gpus == 1:
        yield "one GPU", [build(1, 1, Strategy.SINGLE)]
    else:
        strategies = FULL_STRATEGIES if setup.method is Method.FULL else ADAPTER_STRATEGIES
        yield f"one node of {gpus} GPUs", [build(gpus, 1, strategy) for strategy in strategies]
    yield "host-RAM offload", [build(gpus, 1, strategy, offload) for strategy, offload in OFFLOAD_LAYOUTS]
    if system is None or gpus == 1 or max_nodes < 2:
        return
    if system.kind not in MULTI_NODE_KINDS:
        yield "several nodes", [("several nodes", f"a {system.kind} is not offered as a multi-node cluster")]
        return
    if system.network_gbps is None:
        yield "several nodes", [("several nodes", "network bandwidth between nodes unknown (network_gbps)")]
        return
    for nodes in NODE_COUNTS:
        if nodes <= max_nodes:
            yield f"{nodes} nodes", [build(gpus, nodes, strategy) for strategy in MULTI_NODE_STRATEGIES]


def _refused(label: str, reason: str) -> LayoutCheck:
    strategy = label.partition(" on ")[0]
    return LayoutCheck(strategy=strategy, gpus=0, nodes=0, offload="none", fits=False, needed_bytes=None,
                       host_bytes_per_node=0, tokens_per_second=None, communication_share=None, reason=reason)


def choose_layout(
    setup: TrainingSetup, estimator: Estimator, gpu: Gpu, system: System | None, gpus: int, links: Links,
    flops_per_token: int, usable_bytes: int, utilisation: float, max_nodes: int,
) -> tuple[LayoutCheck | None, StepTime | None, list[LayoutCheck], str]:
    """(chosen layout, its step time, every layout tried, why it was chosen)."""
    tried: list[LayoutCheck] = []
    offloaded = None  # the best host-RAM offload layout, weighed against the fewest nodes that fit without it
    for tier, setups in _tiers(setup, gpus, system, max_nodes):
        results = []
        for candidate in setups:
            if isinstance(candidate, tuple):
                tried.append(_refused(*candidate))
                continue
            check, timing = check_layout(candidate, estimator, gpu, system, links, flops_per_token, usable_bytes,
                                         utilisation)
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
