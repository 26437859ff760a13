"""Fitting the CUDA context and allocator slack per GPU from probe records (hand-made records, hand-checked)."""

from vramplan.validate.calibrate import calibrate

GIB = 2**30


def probe(gpu, allocated, reserved, nvml, context, status="ok"):
    return {"gpu": gpu, "status": status, "max_memory_allocated": allocated, "max_memory_reserved": reserved,
            "nvml_peak_used": nvml, "cuda_context_bytes": context}


def test_medians_per_gpu_ignore_ooms_and_cpu_records():
    records = [
        probe("NVIDIA H100 80GB HBM3", 10 * GIB, 11 * GIB, 12 * GIB, 500 * 2**20),
        probe("NVIDIA H100 80GB HBM3", 20 * GIB, 21 * GIB, 22 * GIB, 520 * 2**20),
        probe("NVIDIA H100 80GB HBM3", 40 * GIB, 60 * GIB, 61 * GIB, 510 * 2**20),  # a fragmentation spike
        probe("NVIDIA H100 80GB HBM3", 70 * GIB, None, None, None, status="oom"),
        probe("cpu", 1 * GIB, None, None, None),
        probe("NVIDIA RTX A6000", 8 * GIB, 9 * GIB, 10 * GIB, 300 * 2**20),
    ]
    h100, a6000 = calibrate(records)
    assert h100.gpu == "NVIDIA H100 80GB HBM3" and h100.probes == 3
    assert h100.cuda_context_bytes == 510 * 2**20
    assert h100.reserved_slack_fraction == 0.1  # median of 0.1, 0.05 and 0.5
    assert h100.other_device_bytes == GIB - 510 * 2**20
    assert a6000.probes == 1 and a6000.cuda_context_bytes == 300 * 2**20
