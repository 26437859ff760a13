"""The library versions the trace was tested on, and which installed ones fall outside them.

`vramplan trace` runs these libraries' own internals (transformers' modelling files, peft's LoRA layers,
bitsandbytes' Linear4bit, accelerate's fsdp2_prepare_model, torchtune's recipes, liger's Python around its kernels)
on fake tensors, so a new release can change the answer. TESTED_VERSIONS are the ranges the test suite passed on;
they equal pyproject.toml's extras (tests/measure/test_versions.py holds the two together). Widen a range in both
places only after the suite passes on the new release.
"""

from __future__ import annotations

from pydantic import BaseModel

# distribution name -> the specifier the suite passed on (pyproject.toml: probe, torchtune and liger extras).
TESTED_VERSIONS = {
    "torch": ">=2.13,<2.14",
    "transformers": ">=5.24,<5.26",
    "accelerate": ">=1.15,<1.17",
    "peft": ">=0.21,<0.22",
    "bitsandbytes": ">=0.50,<0.51",
    "torchtune": "==0.6.1",
    "torchao": "==0.16.0",
    "liger-kernel": "==0.8.5",
    "trl": "==1.16.0",
}


class UntestedVersion(BaseModel):
    """An installed library outside the range the trace was tested on."""

    package: str
    tested: str
    installed: str


def installed_version(package: str) -> str | None:
    """The installed distribution's version, read from its metadata without importing it; None if absent."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def untested_versions(packages=tuple(TESTED_VERSIONS)) -> list[UntestedVersion]:
    """The installed `packages` whose version is outside TESTED_VERSIONS; absent ones are not listed.

    A pre-release inside the range counts as inside (2.13.1rc1 for >=2.13,<2.14); one of the upper bound does not
    (2.14.0.dev is not <2.14, PEP 440). A version packaging cannot parse counts as untested.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    untested = []
    for package in packages:
        installed = installed_version(package)
        if installed is None:
            continue
        try:
            inside = SpecifierSet(TESTED_VERSIONS[package]).contains(Version(installed), prereleases=True)
        except InvalidVersion:
            inside = False
        if not inside:
            untested.append(UntestedVersion(package=package, tested=TESTED_VERSIONS[package], installed=installed))
    return untested


def untested_warning(untested: list[UntestedVersion]) -> str:
    """One line naming every untested library, e.g. `vramplan: warning: trace tested with accelerate >=1.15,<1.17;
    installed 1.17.0: the answer may differ from the real step`."""
    tested = " and ".join(f"{entry.package} {entry.tested}" for entry in untested)
    installed = " and ".join(entry.installed for entry in untested)
    return (f"vramplan: warning: trace tested with {tested}; installed {installed}: the answer may differ from the "
            "real step")
