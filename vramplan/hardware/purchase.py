"""What a buyer can actually buy, at what upfront price, and what it draws from the wall.

Whole workstations and servers are bought at their catalog price. A bare GPU is buyable only as a PCIe card for a
desktop (consumer and workstation cards): its price plus a desktop host (DESKTOP_HOST_USD, a stated assumption the
user can change), with the host's requirements named. SXM and OAM modules come only on 8-GPU baseboards inside a
server, and passive datacenter PCIe cards need a server's airflow: those are bought as servers. Cloud instances
are rented, never bought.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from vramplan.hardware.catalog import Gpu, Price, System, newest_price

# The desktop PC around one PCIe card, USD: the single-RTX-5090 build of an Excelfore workstation cost report (public
# file id 12045472057, section 11, prices checked on Amazon/Newegg/Best Buy 2026-02-15) without its card: Ryzen 7
# 9800X3D, X870 board, 64 GB DDR5, 2 TB NVMe, case, 1,500 W PSU, coolers and a UPS (1,725 USD without the GPU liquid
# cooler, fans and UPS). A Threadripper-class host costs about 6,500 USD (public file id 19411347750). A stated
# assumption the user changes with `host_usd` in the jobs file.
DESKTOP_HOST_USD = 2345.0
# The host around 2-4 cards (a Threadripper PRO class workstation: more PCIe lanes, a 1,600-4,000 W supply): the
# parts list of a 1x RTX PRO 6000 Threadripper PRO 9975WX build without its card (public file id 19411347750),
# 6,499 USD. Used for a multi-GPU workstation the catalog has no price for.
WORKSTATION_HOST_USD = 6499.0
# Power of the machine around the GPUs, at full load:
# a workstation: the autonomous-ai 2x RTX PRO 6000 build draws 1,600 W with 2 x 600 W cards, so 400 W of host
# (catalog_data/systems/ws-2x-rtx-pro-6000.toml source);
WORKSTATION_HOST_W = 400.0
# a server: DGX H100 draws 10.2 kW at most with 8 x 700 W GPUs (docs.nvidia.com/dgx/dgxh100-user-guide, quoted in
# catalog_data/systems/hgx-h100-8gpu.toml): CPUs, NVSwitches, NICs and fans add 4.6 kW, 0.82 of the GPUs' TDP.
SERVER_HOST_SHARE_OF_GPU_W = (10_200 - 8 * 700) / (8 * 700)
# A PSU should run at no more than 80% of its rating under sustained load (ATX12V design guidance and PSU vendors'
# sizing advice); the requirement is rounded up to the next 50 W.
PSU_LOAD_SHARE = 0.8
PSU_STEP_W = 50
DESKTOP_SEGMENTS = ("consumer", "workstation")
PURCHASE_KINDS = ("list", "street", "msrp")


class Purchase(BaseModel):
    """One way to buy an option: the upfront price for the nodes used, what it is made of, and its power draw."""

    upfront_usd: float
    basis: str
    watts: float | None  # the whole machine at full load, every node
    estimated: bool = False  # True: priced from parts (card + assumed host), not a price for the machine
    host_requirements: str = ""


def _newest(prices: list[Price]) -> Price | None:
    return newest_price([price for price in prices if price.kind in PURCHASE_KINDS and price.currency == "USD"])


def machine_watts(gpu: Gpu, gpus: int, kind: str) -> float | None:
    """A machine with `gpus` of `gpu` at full load: GPUs' TDP plus its host (WORKSTATION_HOST_W or the server share)."""
    if gpu.tdp_w is None:
        return None
    gpu_watts = gpu.tdp_w * gpus
    if kind == "server":
        return gpu_watts * (1 + SERVER_HOST_SHARE_OF_GPU_W)
    return gpu_watts + WORKSTATION_HOST_W


def psu_watts(gpu: Gpu, gpus: int) -> int | None:
    """The smallest PSU rating that keeps a desktop's full load at PSU_LOAD_SHARE, in PSU_STEP_W steps."""
    load = machine_watts(gpu, gpus, "workstation")
    if load is None:
        return None
    return math.ceil(load / PSU_LOAD_SHARE / PSU_STEP_W) * PSU_STEP_W


def _desktop_requirements(gpu: Gpu, cards: int = 1) -> str:
    psu = psu_watts(gpu, cards)
    slots = "a PCIe" if cards == 1 else f"{cards} PCIe"
    slot = f"{slots} gen {gpu.pcie_gen} x16 slot{'s' if cards > 1 else ''}" if gpu.pcie_gen else \
        f"{slots} x16 slot{'s' if cards > 1 else ''}"
    power = ""
    if psu:
        power = (f", a PSU of at least {psu} W ({cards} x {gpu.tdp_w:.0f} W + {WORKSTATION_HOST_W:.0f} W host at "
                 f"{PSU_LOAD_SHARE:.0%} load)")
    plural = "s" if cards > 1 else ""
    room = "" if "unverified" in gpu.form_factor else f", room for {cards} {gpu.form_factor} card{plural}"
    machine = "desktop" if cards == 1 else "workstation"
    return f"{machine} with {slot}{power}{room}"


def purchase_of(record: Gpu | System, gpu: Gpu, nodes: int = 1, host_usd: float = DESKTOP_HOST_USD,
                workstation_host_usd: float = WORKSTATION_HOST_USD) -> tuple[Purchase | None, str]:
    """(how to buy the option, or None with why it cannot be bought). A machine without a price of its own is priced
    from its cards plus a host: `host_usd` around one card, `workstation_host_usd` around several."""
    if isinstance(record, System):
        if record.kind == "cloud":
            return None, "cloud instance: rented, not bought"
        watts = machine_watts(gpu, record.gpu_count, record.kind)
        watts = None if watts is None else watts * nodes
        price = _newest(record.prices)
        if price is not None:
            each = f"{price.kind} {price.amount:,.0f} USD ({price.date})"
            basis = each if nodes == 1 else f"{nodes} x {each}"
            return Purchase(upfront_usd=price.amount * nodes, basis=basis, watts=watts), ""
        card = _newest(gpu.prices)
        if record.kind == "workstation" and card is not None:
            host = host_usd if record.gpu_count == 1 else workstation_host_usd
            upfront = (card.amount * record.gpu_count + host) * nodes
            what = "desktop" if record.gpu_count == 1 else "workstation"
            basis = (f"estimated from parts (no price for the machine): {record.gpu_count} x {gpu.id} at "
                     f"{card.amount:,.0f} USD ({card.kind}, {card.date}) + {what} host {host:,.0f} USD")
            return Purchase(upfront_usd=upfront, basis=basis, watts=watts, estimated=True,
                            host_requirements=_desktop_requirements(gpu, record.gpu_count)), ""
        return None, "no purchase price for this machine in the catalog"
    if gpu.segment not in DESKTOP_SEGMENTS:
        if gpu.form_factor.upper().startswith(("SXM", "OAM", "SUPERCHIP")):
            return None, f"{gpu.form_factor} module: sold only on a multi-GPU baseboard inside a server"
        return None, "datacenter card: bought inside a server (passive cooling needs server airflow)"
    card = _newest(gpu.prices)
    if card is None:
        return None, "no price for this card in the catalog"
    watts = machine_watts(gpu, 1, "workstation")
    basis = (f"estimated from parts: card {card.amount:,.0f} USD ({card.kind}, {card.date}) + desktop host "
             f"{host_usd:,.0f} USD")
    return Purchase(upfront_usd=card.amount + host_usd, basis=basis, watts=watts, estimated=True,
                    host_requirements=_desktop_requirements(gpu)), ""
