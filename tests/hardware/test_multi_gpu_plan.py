"""Multi-GPU and multi-node planning: link bandwidths, bytes per step, step time, and the layouts plan chooses."""

import re

import pytest

from vramplan.api import estimate
from vramplan.hardware.catalog import HardwareCatalog, load_hardware
from vramplan.hardware.links import links_of
from vramplan.hardware.plan import CostAssumptions, plan_options
from vramplan.hardware.throughput import step_flops, step_time, step_traffic, step_work
from vramplan.models.catalog import resolve_model
from vramplan.training import resolve_setup

SPEC_8B = resolve_model("8b").spec
PARAMS_8B = 8_030_261_248  # Llama-3.1-8B, transformers' meta-device count (tests/models)


@pytest.fixture(scope="module")
def hardware():
    return load_hardware()


def test_link_bandwidths_from_the_catalog(hardware):
    p5 = hardware.systems["aws-p5.48xlarge"]
    links = links_of(hardware.gpus[p5.gpu], p5)
    # NVLink 4: 900 GB/s both directions together, 450 GB/s each way; EFA 3200 Gbit/s = 400 GB/s
    assert (links.gpu_link, links.gpu_to_gpu, links.node_to_node) == ("NVLink", 450 * 10**9, 400 * 10**9)
    # PCIe gen 5 x16: 32 GT/s x 16 lanes x 128/130 coding / 8 bits = 63.0 GB/s per direction
    assert links.gpu_to_host == pytest.approx(32e9 * 16 * 128 / 130 / 8, rel=1e-4)
    g6e = hardware.systems["aws-g6e.48xlarge"]  # L40S has no NVLink: PCIe gen 4 between GPUs
    pcie = links_of(hardware.gpus[g6e.gpu], g6e)
    assert pcie.gpu_link == "PCIe gen 4" and pcie.gpu_to_gpu == pytest.approx(16e9 * 16 * 128 / 130 / 8, rel=1e-4)
    ws = hardware.systems["ws-2x-rtx-6000-ada"]
    assert links_of(hardware.gpus[ws.gpu], ws).node_to_node is None


def test_network_figures_come_from_the_network_text(hardware):
    for system in hardware.systems.values():
        figures = [float(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*)\s*(?:Gb|Gigabit|GbE)", system.network)]
        if system.network_gbps is None:
            assert not figures, f"{system.id}: the network text states {figures} but network_gbps is empty"
        else:
            assert figures, f"{system.id}: network_gbps without a figure in the network text"
            counts = [int(n) for n in re.findall(r"(\d+)\s*x\b", system.network)] or [1]
            per_gpu = 8 if "per GPU" in system.network else 1
            assert system.network_gbps in {f * c * per_gpu for f in figures for c in counts + [1]}


@pytest.mark.parametrize(
    "strategy, rings",
    [
        pytest.param("ddp", 2, id="ddp-all-reduce-2-psi"),  # ZeRO paper 7.2.1: all-reduce = 2 psi
        pytest.param("zero2", 2, id="zero2-2-psi"),  # reduce-scatter + all-gather = 2 psi (ZeRO paper 7.2.2)
        pytest.param("zero3", 3, id="zero3-3-psi"),  # 2 parameter all-gathers + reduce-scatter = 3 psi
        pytest.param("fsdp", 3, id="fsdp-3-psi"),
    ],
)
def test_bytes_per_step_follow_the_zero_paper(strategy, rings):
    setup = resolve_setup("full", gpus=8, strategy=strategy)
    traffic = step_traffic(SPEC_8B, setup)
    psi = PARAMS_8B * 2  # bf16 parameters and gradients
    assert traffic.gpu_link_bytes == pytest.approx(rings * psi * 7 / 8, rel=1e-6)
    assert traffic.network_bytes == 0 and traffic.host_bytes == 0


def test_lora_ddp_reduces_only_the_adapters():
    setup = resolve_setup("lora", gpus=4, strategy="ddp")
    job = estimate("8b", "lora", gpus=4, strategy="ddp")
    assert step_traffic(SPEC_8B, setup).gpu_link_bytes == 2 * (job.trainable_params * 4) * 3 // 4  # fp32 adapters


def test_hybrid_sharding_crosses_the_network_once_per_gradient_shard():
    setup = resolve_setup("full", gpus=8, nodes=4, strategy="fsdp-hybrid")
    traffic = step_traffic(SPEC_8B, setup)
    psi = PARAMS_8B * 2
    assert traffic.hierarchical
    assert traffic.gpu_link_bytes == pytest.approx(3 * psi * 7 / 8, rel=1e-6)  # sharded within the node
    assert traffic.network_bytes == pytest.approx(2 * psi * 3 / 4, rel=1e-6)  # all-reduce of shards over 4 nodes
    flat = step_traffic(SPEC_8B, resolve_setup("full", gpus=8, nodes=4, strategy="fsdp"))
    assert flat.network_bytes == flat.gpu_link_bytes == pytest.approx(3 * psi * 31 / 32, rel=1e-6)


def test_step_time_adds_communication_and_device_map_runs_one_gpu_at_a_time(hardware):
    p5 = hardware.systems["aws-p5.48xlarge"]
    gpu = hardware.gpus[p5.gpu]
    links = links_of(gpu, p5)
    setup = resolve_setup("full", gpus=8, strategy="fsdp")
    flops = step_flops(SPEC_8B, setup).per_token
    work = step_work(SPEC_8B, setup, 0)
    timing = step_time(work, setup, step_traffic(SPEC_8B, setup), links, gpu, 0.4)
    compute = flops * 2048 / (gpu.bf16_dense_tflops * 1e12 * 0.4)
    comm = 3 * PARAMS_8B * 2 * 7 / 8 / (450 * 10**9)
    assert timing.compute_s == pytest.approx(compute) and timing.communication_s == pytest.approx(comm, rel=1e-6)
    assert timing.tokens_per_second == pytest.approx(8 * 2048 / (compute + comm), rel=1e-6)
    mapped = resolve_setup("lora", gpus=8, strategy="device-map")
    one = step_time(step_work(SPEC_8B, mapped, 0), mapped, step_traffic(SPEC_8B, mapped), links, gpu, 0.4)
    assert one.communication_s == 0 and one.tokens_per_second == pytest.approx(2048 / one.compute_s)


def _system_option(plan, system_id):
    return next(o for o in plan.options + plan.rejected if o.id == system_id)


def test_full_fine_tuning_shards_over_every_gpu(hardware):
    plan = plan_options(estimate("qwen2.5-32b", "full"), hardware, 10**8, CostAssumptions())
    h200 = _system_option(plan, "hgx-h200-8gpu")
    assert h200.fits and h200.gpus_used == 8 and h200.nodes == 1 and h200.strategy in ("fsdp", "zero3")
    assert {c.strategy for c in h200.layouts_tried} >= {"ddp", "zero1", "zero2", "zero3", "fsdp"}
    assert 0 < h200.communication_share < 1 and ("fastest" in h200.choice or "only fit" in h200.choice)
    for option in plan.options:
        assert option.kind == "gpu" or option.gpus_used == option.gpus_in_option


def test_lora_that_fits_one_gpu_runs_ddp(hardware):
    plan = plan_options(estimate("8b", "lora"), hardware, 10**8, CostAssumptions())
    p5 = _system_option(plan, "aws-p5.48xlarge")
    assert p5.strategy == "ddp" and p5.gpus_used == 8 and p5.nodes == 1
    single = _system_option(plan, "h100-sxm5-80gb")
    assert single.strategy == "single" and p5.tokens_per_second > 7 * single.tokens_per_second


def test_multi_node_when_one_node_is_not_enough(hardware):
    job = estimate("405b", "full", gradient_checkpointing=True)
    plan = plan_options(job, hardware, 10**8, CostAssumptions())
    p5 = _system_option(plan, "aws-p5.48xlarge")
    assert p5.fits and p5.nodes > 1 and p5.strategy in ("fsdp", "zero3", "fsdp-hybrid")
    fewer = [c for c in p5.layouts_tried if 1 < c.nodes < p5.nodes]
    assert fewer and not any(c.fits for c in fewer)  # the fewest nodes that fit
    one_node = _system_option(plan_options(job, hardware, 10**8, CostAssumptions(max_nodes=1)), "aws-p5.48xlarge")
    assert p5.cost_usd == pytest.approx(55.04 * p5.nodes * p5.hours)
    assert not one_node.fits
    lambda_h100 = _system_option(plan, "lambda-8x-h100-sxm")  # no network figure in the catalog
    assert not lambda_h100.fits
    assert any("network bandwidth between nodes unknown" in c.reason for c in lambda_h100.layouts_tried)


def test_offload_is_checked_against_host_ram(hardware):
    job = estimate("70b", "full", gradient_checkpointing=True)  # activations small enough for offload to decide
    system = hardware.systems["hgx-h100-8gpu"]
    small = system.model_copy(update={"id": "small-ram", "host_ram_bytes": 256 * 2**30})
    catalog = HardwareCatalog(gpus=hardware.gpus, systems={"hgx-h100-8gpu": system, "small-ram": small},
                              origins={})
    plan = plan_options(job, catalog, 10**8, CostAssumptions(max_nodes=1))
    roomy = _system_option(plan, "hgx-h100-8gpu")
    assert roomy.fits and roomy.offload != "none" and roomy.host_bytes_needed <= system.host_ram_bytes
    tight = _system_option(plan, "small-ram")
    assert not tight.fits
    offloads = [c for c in tight.layouts_tried if c.offload != "none" and c.needed_bytes is not None
                and c.needed_bytes <= int(hardware.gpus[system.gpu].memory_bytes * 0.9)]
    assert offloads and all("host RAM" in c.reason and not c.fits for c in offloads)


def test_layouts_keep_the_runs_stack_and_switches():
    """A multi-GPU layout is the same run on more GPUs: torchtune stays torchtune (FSDP only, no DDP or ZeRO), and
    the per-GPU need is the estimate of that run, never a plain HF run's."""
    from vramplan.api import estimate as estimate_run
    from vramplan.hardware.layouts import variant
    from vramplan.training import Offload, Strategy

    job = estimate_run("8b", "lora", stack="torchtune")
    sharded = variant(job.setup, 4, 1, Strategy.FSDP, Offload.NONE)
    assert (sharded.stack.value, sharded.loss.value) == ("torchtune", "chunked")
    plan = plan_options(job, load_hardware(), 10**8, CostAssumptions())
    assert plan.options and not any(option.strategy in ("ddp", "zero1", "zero2", "zero3") for option in plan.options)
