"""The library versions the trace was tested on: the same ranges as pyproject.toml's extras, and one stderr line
from `vramplan trace` when an installed library is outside its range (the installed versions are faked here)."""

from pathlib import Path

import pytest

from vramplan import versions
from vramplan.tomlfile import read_toml
from vramplan.versions import TESTED_VERSIONS, untested_versions, untested_warning

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# The extras whose libraries the trace runs, and what in them is not a tested range: triton's kernels never run in
# the trace (vramplan/measure/liger_kernels.py and liger_loss.py make them no-ops), it only has to import.
TRACED_EXTRAS = ("probe", "torchtune", "liger", "trl")
NOT_TRACED = {"triton"}
TESTED_INSTALL = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "accelerate": "1.16.0", "peft": "0.21.2",
                  "bitsandbytes": "0.50.2", "torchtune": "0.6.1", "torchao": "0.16.0", "liger-kernel": "0.8.5",
                  "trl": "1.16.0"}


def _extras() -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    extras = read_toml(PYPROJECT)["project"]["optional-dependencies"]
    requirements = [Requirement(line) for extra in TRACED_EXTRAS for line in extras[extra]]
    return {canonicalize_name(requirement.name): str(requirement.specifier) for requirement in requirements}


def _installed(monkeypatch, **overrides: str | None) -> None:
    table = {**TESTED_INSTALL, **{name.replace("_", "-"): version for name, version in overrides.items()}}
    monkeypatch.setattr(versions, "installed_version", table.get)


def test_tested_versions_equal_pyproject_extras():
    from packaging.specifiers import SpecifierSet

    extras = _extras()
    assert set(extras) - NOT_TRACED == set(TESTED_VERSIONS)
    for package, tested in TESTED_VERSIONS.items():
        assert SpecifierSet(extras[package]) == SpecifierSet(tested), package


def test_ci_pins_are_inside_the_tested_ranges(monkeypatch):
    """.ci/constraints.txt pins CI to the versions the suite last passed on: each must be inside its range."""
    from packaging.utils import canonicalize_name

    lines = (PYPROJECT.parent / ".ci" / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    pins = {canonicalize_name(name.strip()): version.strip() for name, version in pins.items()}
    monkeypatch.setattr(versions, "installed_version", pins.get)
    assert set(TESTED_VERSIONS) <= set(pins)
    assert untested_versions() == []


def test_the_faked_install_is_inside_every_range(monkeypatch):
    _installed(monkeypatch)
    assert untested_versions() == []


@pytest.mark.parametrize("package, installed", [
    pytest.param("accelerate", "1.17.0", id="above"),
    pytest.param("transformers", "5.23.9", id="below"),
    pytest.param("torch", "2.14.0.dev20270101", id="pre-release-of-the-bound"),
    pytest.param("torchtune", "0.6.2", id="pinned"),
    pytest.param("peft", "not-a-version", id="unparsable"),
])
def test_a_version_outside_its_range_is_reported(monkeypatch, package, installed):
    _installed(monkeypatch, **{package: installed})
    assert [(entry.package, entry.installed) for entry in untested_versions()] == [(package, installed)]


def test_a_pre_release_inside_the_range_and_a_missing_library_are_not_reported(monkeypatch):
    _installed(monkeypatch, torch="2.13.1rc1", liger_kernel=None)
    assert untested_versions() == []


def test_the_warning_is_one_line():
    entry = versions.UntestedVersion(package="accelerate", tested=">=1.15,<1.17", installed="1.17.0")
    assert untested_warning([entry]) == (
        "vramplan: warning: trace tested with accelerate >=1.15,<1.17; installed 1.17.0: the answer may differ "
        "from the real step"
    )
    two = untested_warning([entry, versions.UntestedVersion(package="peft", tested=">=0.21,<0.22", installed="0.22.0")])
    assert "\n" not in two and "accelerate >=1.15,<1.17 and peft >=0.21,<0.22; installed 1.17.0 and 0.22.0" in two


@pytest.mark.parametrize("options, libraries", [
    pytest.param(dict(method="full"), {"torch", "transformers", "accelerate"}, id="full"),
    pytest.param(dict(method="lora"), {"torch", "transformers", "accelerate", "peft"}, id="lora"),
    pytest.param(dict(method="qlora"), {"torch", "transformers", "accelerate", "peft", "bitsandbytes"}, id="qlora"),
    pytest.param(dict(method="full", optimizer="adamw-8bit"), {"torch", "transformers", "accelerate", "bitsandbytes"},
                 id="adamw-8bit"),
    pytest.param(dict(method="lora", liger=True), {"torch", "transformers", "accelerate", "peft", "liger-kernel"},
                 id="liger"),
    pytest.param(dict(method="full", gpus=2, strategy="fsdp"), {"torch", "transformers", "accelerate",
                                                                "bitsandbytes"}, id="fsdp"),
    pytest.param(dict(method="lora", stack="torchtune"), {"torch", "torchtune", "torchao"}, id="torchtune"),
])
def test_traced_libraries_follow_the_setup(options, libraries):
    from vramplan.measure.trace import traced_libraries
    from vramplan.training import resolve_setup

    options = dict(options)
    assert set(traced_libraries(resolve_setup(options.pop("method"), **options))) == libraries


def _trace_cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """`vramplan trace` on the tiny llama, its step replaced by one that stops it: what it wrote before running."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import vramplan.measure.hf_step as hf_step
    import vramplan.measure.trace as trace
    from vramplan.cli.app import main
    from vramplan.errors import NotModelledError

    def stop(*_, **__):
        raise NotModelledError("the step ran")

    monkeypatch.setattr(hf_step, "trace_training_step", stop)
    monkeypatch.setattr(trace, "_warned", set())
    tiny = Path(__file__).resolve().parents[2] / "validation" / "configs" / "tiny-llama.json"
    code = main(["trace", "--model", str(tiny), "--method", "lora", "--batch-size", "1", "--seq-len", "64", *args])
    return code, capsys.readouterr().err.splitlines()


def test_trace_warns_in_one_line_before_it_runs(monkeypatch, capsys):
    _installed(monkeypatch, accelerate="1.17.0")
    code, lines = _trace_cli(monkeypatch, capsys)
    assert code != 0 and len(lines) == 2 and "the step ran" in lines[1]
    assert lines[0] == (
        "vramplan: warning: trace tested with accelerate >=1.15,<1.17; installed 1.17.0: the answer may differ "
        "from the real step"
    )


def test_trace_is_silent_when_every_library_it_runs_is_tested(monkeypatch, capsys):
    _installed(monkeypatch, torchtune="0.7.0", bitsandbytes="0.51.0")  # not run by a LoRA trace on one GPU
    code, lines = _trace_cli(monkeypatch, capsys)
    assert code != 0 and len(lines) == 1 and "the step ran" in lines[0]
