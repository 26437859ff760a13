"""The named-model catalog (one TOML file per model in models/catalog/) and `--model` resolution."""

from __future__ import annotations

import sys
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vramplan.errors import ModelConfigError, NotModelledError
from vramplan.models.hf_config import load_config_file, spec_from_config
from vramplan.models.hub import path_exists
from vramplan.models.spec import ModelSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CATALOG_DIR = Path(__file__).parent / "catalog"
# Known model names whose architecture is not modelled yet: refused clearly rather than guessed.
NOT_YET_MODELLED: dict[str, str] = {}
NOT_YET_MODELLED_ALIASES: dict[str, str] = {}


class CatalogModel(BaseModel):
    """One catalog record: where its config comes from, and the config itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    hf_repo: str
    size_alias: str | None = None
    source: str
    retrieved: date
    notes: str = ""
    config: dict[str, Any]
    # config.json keys whose value is null (TOML has no null); they override the config class's default.
    config_nulls: list[str] = []

    @property
    def full_config(self) -> dict[str, Any]:
        return {**self.config, **dict.fromkeys(self.config_nulls)}

    @property
    def spec(self) -> ModelSpec:
        return spec_from_config(self.full_config, origin=self.id)


class ResolvedModel(BaseModel):
    """What `--model` named, how it was resolved, and the architecture."""

    model_config = ConfigDict(frozen=True)

    requested: str
    id: str
    name: str
    resolved_from: str
    spec: ModelSpec
    # The config.json fields the spec came from; `trace` builds the real model from them.
    config: dict[str, Any] = Field(default_factory=dict, exclude=True, repr=False)


@lru_cache(maxsize=1)
def load_catalog() -> dict[str, CatalogModel]:
    """Every catalog record by id; ids equal file stems, and aliases are unique."""
    return {file.stem: load_record(file.stem) for file in sorted(CATALOG_DIR.glob("*.toml"))}


@lru_cache(maxsize=1)
def size_aliases() -> dict[str, str]:
    """Size alias -> catalog id, from the index (tests/models/test_catalog.py holds it to the records)."""
    return dict(catalog_index()["aliases"])


# The catalog's lookup tables (size aliases, HF repo names -> ids), so resolving one name reads one record instead
# of all of them (the cold start of `vramplan estimate`). Written by `python -m vramplan.models.catalog`.
INDEX_FILE = CATALOG_DIR / "index.json"


@lru_cache(maxsize=1)
def catalog_index() -> dict[str, dict[str, str]]:
    """{"ids": id -> id, "aliases": size alias -> id, "repos": lower-cased HF repo -> id}."""
    import json

    return json.loads(INDEX_FILE.read_text())


def build_index(records: dict[str, CatalogModel]) -> dict[str, dict[str, str]]:
    """The index of `records`: size aliases (each claimed once) and lower-cased repo names, to ids."""
    aliases: dict[str, str] = {}
    for record in records.values():
        if record.size_alias:
            if record.size_alias in aliases:
                raise ModelConfigError(f"size alias {record.size_alias} is claimed twice")
            aliases[record.size_alias] = record.id
    repos = {record.hf_repo.lower(): record.id for record in records.values()}
    ids = {record.id: record.id for record in records.values()}
    return {"ids": dict(sorted(ids.items())), "aliases": dict(sorted(aliases.items())),
            "repos": dict(sorted(repos.items()))}


@lru_cache(maxsize=None)
def load_record(record_id: str) -> CatalogModel:
    """One catalog record, read from its own file."""
    file = CATALOG_DIR / f"{record_id}.toml"
    with file.open("rb") as handle:
        record = CatalogModel(**tomllib.load(handle))
    if record.id != file.stem:
        raise ModelConfigError(f"catalog file {file.name} has id {record.id!r}")
    return record


def _catalog_id(key: str) -> str | None:
    """The catalog id `key` names (an id, a size alias, an HF repo or its chat-tuned variant), or None."""
    index = catalog_index()
    if key in index["aliases"]:
        return index["aliases"][key]
    if key in index["ids"]:
        return key
    return index["repos"].get(key) or index["repos"].get(_base_repo(key))


def in_catalog(model: str) -> bool:
    """Whether `model` names a catalog model (an id, a size alias, an HF repo or its chat-tuned variant) or one
    the catalog knows is not yet modelled: what resolve_model answers without reading a file or the Hub."""
    key = model.strip().lower()
    return bool(key) and (key in NOT_YET_MODELLED_ALIASES or key in NOT_YET_MODELLED or _catalog_id(key) is not None)


def resolve_model(model: str) -> ResolvedModel:
    """A catalog id, an HF repo name in the catalog, a size alias, or a path to config.json (or its folder)."""
    key = model.strip().lower()
    if key in NOT_YET_MODELLED_ALIASES:
        key = NOT_YET_MODELLED_ALIASES[key]
    if key in NOT_YET_MODELLED:
        raise NotModelledError(f"--model {model}: {NOT_YET_MODELLED[key]} is not yet modelled")
    found = _catalog_id(key) if key else None
    if found is not None:
        record = load_record(found)
        if key in size_aliases():
            how = f"size alias {key} -> {record.id} ({record.hf_repo})"
        elif key == record.id:
            how = f"catalog {key} ({record.hf_repo})"
        elif key == record.hf_repo.lower():
            how = f"catalog {record.id} (by repo name)"
        else:
            how = f"catalog {record.id}: {model} is its chat-tuned variant, same architecture"
        return _from_record(model, record, how)
    path = Path(model).expanduser()
    if path_exists(path):
        config = load_config_file(path)
        spec = spec_from_config(config, origin=str(path))
        folder = path.resolve().parent if path.is_file() else path.resolve()
        name = config.get("_name_or_path") or folder.name
        return ResolvedModel(
            requested=model, id=str(path), name=str(name), resolved_from=f"config {path}", spec=spec, config=config
        )
    from vramplan.models.hub import hub_config, looks_like_hub_id

    if looks_like_hub_id(model.strip()):
        config, how = hub_config(model.strip())
        spec = spec_from_config(config, origin=model)
        return ResolvedModel(requested=model, id=model.strip(), name=model.strip(), resolved_from=how, spec=spec,
                             config=config)
    close = _close_names(key, load_catalog())
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ModelConfigError(
        f"--model {model}: not a catalog model, size alias, Hub id (org/name) or config.json path "
        f"({hint}see `vramplan models`; aliases: {' '.join(sorted(size_aliases(), key=_alias_order))})"
    )


def _close_names(key: str, catalog: dict) -> list[str]:
    """Catalog ids a mistyped name probably meant: the same letters and digits (llama3-8b -> llama-3-8b), then
    difflib's closest ids."""
    import difflib
    import re

    def squash(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    same = [record_id for record_id in catalog if squash(record_id) == squash(key)]
    close = difflib.get_close_matches(key, list(catalog), n=3, cutoff=0.6)
    return list(dict.fromkeys([*same, *close]))[:3]


def _from_record(requested: str, record: CatalogModel, how: str) -> ResolvedModel:
    return ResolvedModel(
        requested=requested,
        id=record.id,
        name=record.name,
        resolved_from=how,
        spec=record.spec,
        config=record.full_config,
    )


# Chat-tuned releases publish the base model's config.json under a suffixed repo name (Llama "-Instruct", Gemma
# "-it", Qwen "-Instruct", Mistral "-Instruct-v0.3"); the architecture, and so the memory, is the base model's.
CHAT_SUFFIXES = ("-instruct", "-it", "-chat")


def _base_repo(key: str) -> str | None:
    for suffix in CHAT_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
        if f"{suffix}-v" in key:  # mistralai/Mistral-7B-Instruct-v0.3 -> mistralai/Mistral-7B-v0.3
            return key.replace(suffix, "", 1)
    return None


def _alias_order(alias: str) -> float:
    return float(alias.rstrip("b"))


if __name__ == "__main__":
    import json

    INDEX_FILE.write_text(json.dumps(build_index(load_catalog()), indent=1) + "\n")
    print(INDEX_FILE)
