"""The links a multi-GPU step's collectives cross, in bytes per second per direction.

Three links: GPU to GPU inside a node (NVLink where the system wires it, else PCIe), GPU to host RAM (PCIe, for
offloaded states), and node to node (the system's `network_gbps`).
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.hardware.catalog import Gpu, System

# NVIDIA quotes NVLink as the sum of both directions (H100 SXM5 "900 GB/s" is 18 links x 50 GB/s bidirectional,
# 450 GB/s each way: vramplan/hardware/catalog_data/gpus/h100-sxm5-80gb.toml notes, after cli99/llm-analysis gpu_configs).
NVLINK_DIRECTIONS = 2
# PCIe x16, per direction: the transfer rate (8/16/32/64 GT/s per lane for gen 3/4/5/6) x 16 lanes after line
# coding (128b/130b for gen 3-5; gen 6's FLIT mode 242B/256B). PCI-SIG spec figures as tabulated in Wikipedia's
# "PCI Express" article, table "PCI Express link performance" (15.75 / 31.5 / 63.0 / 121.0 GB/s).
PCIE_X16_BYTES_PER_S = {
    3: 15_754_000_000,
    4: 31_508_000_000,
    5: 63_015_000_000,
    6: 121_000_000_000,
}
BITS_PER_BYTE = 8
GB = 10**9  # the catalog's GB/s and Gbit/s are decimal


class Links(BaseModel):
    """Bytes per second per direction; None where the catalog does not say."""

    gpu_link: str  # "NVLink" or "PCIe gen N" or "unknown"
    gpu_to_gpu: int | None
    gpu_to_host: int | None
    node_to_node: int | None  # the whole node's network


def _nvlink_wired(system: System | None, gpu: Gpu) -> bool:
    """A system uses NVLink between its GPUs when its interconnect text names NVLink or NVSwitch (and does not
    say "no NVLink"); a bare GPU has no peer."""
    if system is None or gpu.nvlink_gb_s is None:
        return False
    text = system.interconnect.lower()
    return "no nvlink" not in text and ("nvlink" in text or "nvswitch" in text)


def links_of(gpu: Gpu, system: System | None) -> Links:
    pcie = PCIE_X16_BYTES_PER_S.get(gpu.pcie_gen) if gpu.pcie_gen is not None else None
    network = None
    if system is not None and system.network_gbps is not None:
        network = round(system.network_gbps * GB / BITS_PER_BYTE)
    if _nvlink_wired(system, gpu):
        return Links(gpu_link="NVLink", gpu_to_gpu=round(gpu.nvlink_gb_s * GB / NVLINK_DIRECTIONS),
                     gpu_to_host=pcie, node_to_node=network)
    name = f"PCIe gen {gpu.pcie_gen}" if pcie is not None else "unknown"
    return Links(gpu_link=name, gpu_to_gpu=pcie, gpu_to_host=pcie, node_to_node=network)
