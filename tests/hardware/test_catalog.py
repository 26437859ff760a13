"""Every hardware catalog file loads, validates, and agrees with the others (ids, references, counts)."""


import pytest

from vramplan.errors import UsageError
from vramplan.hardware.catalog import CATALOG_DIR, Gpu, System, load_hardware

GPU_FILES = sorted((CATALOG_DIR / "gpus").glob("*.toml"))
SYSTEM_FILES = sorted((CATALOG_DIR / "systems").glob("*.toml"))


@pytest.fixture(scope="module")
def hardware():
    return load_hardware()


def test_counts_meet_the_minimums(hardware):
    assert len(hardware.gpus) >= 30
    assert len(hardware.systems) >= 12
    assert sum(1 for s in hardware.systems.values() if s.kind == "cloud") >= 6
    assert len({s.provider for s in hardware.systems.values() if s.kind == "cloud"}) >= 3
    assert {gpu.segment for gpu in hardware.gpus.values()} == {"datacenter", "workstation", "consumer"}
    assert {gpu.id for gpu in hardware.gpus.values() if gpu.software == "rocm"} >= {"mi300x", "mi325x", "mi355x"}


@pytest.mark.parametrize("path", GPU_FILES, ids=[path.stem for path in GPU_FILES])
def test_gpu_file(path, hardware):
    gpu: Gpu = hardware.gpus[path.stem]
    assert gpu.source and gpu.retrieved
    # memory is exact bytes, within a few percent of the marketed size (GB or GiB)
    marketed_low, marketed_high = gpu.memory_marketed_gb * 0.9 * 10**9, gpu.memory_marketed_gb * 1.05 * 2**30
    assert marketed_low <= gpu.memory_bytes <= marketed_high
    for field in ("bandwidth_gb_s", "bf16_dense_tflops", "tdp_w"):
        if getattr(gpu, field) is None:
            assert field in gpu.unverified or "bf16" in field and gpu.notes, f"{field} missing without a reason"
    if gpu.fp8_dense_tflops and gpu.bf16_dense_tflops:
        assert gpu.fp8_dense_tflops >= gpu.bf16_dense_tflops
    assert (gpu.vendor == "AMD") == (gpu.software == "rocm")
    for price in gpu.prices:
        assert price.kind != "cloud-hourly", "a bare GPU has a purchase price"


@pytest.mark.parametrize("path", SYSTEM_FILES, ids=[path.stem for path in SYSTEM_FILES])
def test_system_file(path, hardware):
    system: System = hardware.systems[path.stem]
    assert system.gpu in hardware.gpus
    assert system.source and system.retrieved
    if system.kind == "cloud":
        assert all(price.kind == "cloud-hourly" for price in system.prices)


def test_user_catalog_layers_over_ours(tmp_path):
    (tmp_path / "gpus").mkdir()
    ours = (CATALOG_DIR / "gpus" / "h100-sxm5-80gb.toml").read_text()
    (tmp_path / "gpus" / "h100-sxm5-80gb.toml").write_text(ours.replace("bandwidth_gb_s = 3350", "bandwidth_gb_s = 1"))
    (tmp_path / "gpus" / "lab-card.toml").write_text(
        ours.replace('id = "h100-sxm5-80gb"', 'id = "lab-card"').replace("NVIDIA H100 SXM5 80GB", "Lab card"))
    layered = load_hardware(tmp_path)
    assert layered.gpus["h100-sxm5-80gb"].bandwidth_gb_s == 1
    assert "lab-card" in layered.gpus and layered.origins["lab-card"].startswith(str(tmp_path))
    assert load_hardware().gpus["h100-sxm5-80gb"].bandwidth_gb_s == 3350


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("x.toml", 'id = "y"\n', "retrieved|Field required|does not match"),
        ("bad.toml", "id = [", "not valid TOML"),
    ],
)
def test_user_files_are_validated_like_ours(tmp_path, name, text, message):
    (tmp_path / "gpus").mkdir()
    (tmp_path / "gpus" / name).write_text(text)
    with pytest.raises(UsageError, match=message):
        load_hardware(tmp_path)


def test_a_system_must_name_a_catalog_gpu(tmp_path):
    (tmp_path / "systems").mkdir()
    ours = (CATALOG_DIR / "systems" / "aws-p5.48xlarge.toml").read_text()
    (tmp_path / "systems" / "aws-p5.48xlarge.toml").write_text(ours.replace('gpu = "h100-sxm5-80gb"', 'gpu = "nope"'))
    with pytest.raises(UsageError, match="nope"):
        load_hardware(tmp_path)


def test_catalog_folder_must_exist(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        load_hardware(tmp_path / "missing")
    with pytest.raises(UsageError, match="neither"):
        load_hardware(tmp_path)
