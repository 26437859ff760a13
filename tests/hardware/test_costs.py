"""Cost arithmetic with hand-checked figures: rent, energy, amortised purchase, break-even, and what can be bought."""

import pytest

from vramplan.hardware.catalog import load_hardware
from vramplan.hardware.costs import (HOURS_PER_MONTH, amortised_usd, break_even, energy_usd, rent_usd,
                                     yearly_energy_usd)
from vramplan.hardware.purchase import (DESKTOP_HOST_USD, WORKSTATION_HOST_W, machine_watts, psu_watts,
                                        purchase_of)


def test_rent_is_hourly_price_times_hours():
    # AWS p5.48xlarge 55.04 USD/h for 10 h
    assert rent_usd(55.04, 10.0) == pytest.approx(550.40)


def test_energy_by_hand():
    # 2,700 W for 40 h = 108 kWh; at 0.15 USD/kWh = 16.20 USD
    assert energy_usd(2700, 40.0, 0.15) == pytest.approx(16.20)
    # a year half busy: 2,700 W x 4,380 h = 11,826 kWh = 1,773.90 USD
    assert yearly_energy_usd(2700, 0.5, 0.15) == pytest.approx(1773.90)


def test_amortised_share_by_hand():
    # 30,000 USD over 3 years (26,280 h): 26.28 h of use is 1/1000 of it
    assert amortised_usd(30_000, 26.28, 3) == pytest.approx(30.0)
    # busy half the time: each hour of use carries twice the share
    assert amortised_usd(30_000, 26.28, 3, busy_share=0.5) == pytest.approx(60.0)


def test_break_even_by_hand():
    # Buy 10,000 USD, 4 GPUs, 1,000 W; the jobs take 50 h on it (7.50 USD of energy at 0.15) and 100 USD to rent.
    # Saving per run 92.50: 10,000 / 92.5 = 108.1 runs. Per month over 3 years: 10,000 / 36 = 277.78 USD must be
    # saved; 92.50 / 50 h = 1.85 USD per busy hour, so 150.15 machine-hours = 600.6 GPU-hours a month.
    result = break_even(10_000, 50.0, energy_usd(1000, 50.0, 0.15), 4, 100.0, 3)
    assert result.runs == pytest.approx(108.108, rel=1e-4)
    assert result.hours_per_month == pytest.approx(150.15, rel=1e-4)
    assert result.gpu_hours_per_month == pytest.approx(600.60, rel=1e-4)
    assert result.within_reach


def test_break_even_never_and_out_of_reach():
    # renting for less than the electricity: buying never pays
    never = break_even(10_000, 50.0, energy_usd(1000, 50.0, 0.15), 4, 5.0, 3)
    assert never.runs is None and not never.within_reach
    # 500,000 USD against 10 USD saved per 10 h: 13,889 machine-hours a month, more than a month holds
    far = break_even(500_000, 10.0, 0.0, 8, 10.0, 3)
    assert far.hours_per_month > HOURS_PER_MONTH and not far.within_reach


def test_what_can_be_bought():
    catalog = load_hardware()
    gpus, systems = catalog.gpus, catalog.systems
    # a consumer card: its price plus the assumed desktop, with the desktop's PSU named
    card, why = purchase_of(gpus["rtx-4090"], gpus["rtx-4090"])
    assert why == "" and card.estimated and card.host_requirements
    assert card.upfront_usd == pytest.approx(max(p.amount for p in gpus["rtx-4090"].prices if p.kind != "cloud-hourly"
                                                 ) + DESKTOP_HOST_USD)
    # 450 W + 400 W = 850 W at most 80% of the PSU: 1,062.5 W, rounded up to 1,100 W
    assert psu_watts(gpus["rtx-4090"], 1) == 1100 and "1100 W" in card.host_requirements
    assert card.watts == 450 + WORKSTATION_HOST_W
    # modules and cloud instances are not bought
    assert purchase_of(gpus["b300"], gpus["b300"])[0] is None
    assert purchase_of(systems["aws-p5.48xlarge"], gpus["h100-sxm5-80gb"])[1].startswith("cloud")
    # a server at its catalog price, times the nodes; its power includes the host share (DGX H100: 10.2 kW)
    server, _ = purchase_of(systems["hgx-h100-8gpu"], gpus["h100-sxm5-80gb"], nodes=2)
    price = max((p for p in systems["hgx-h100-8gpu"].prices), key=lambda p: p.date).amount
    assert server.upfront_usd == pytest.approx(2 * price) and not server.estimated
    assert machine_watts(gpus["h100-sxm5-80gb"], 8, "server") == pytest.approx(10_200)
    assert server.watts == pytest.approx(2 * 10_200)
