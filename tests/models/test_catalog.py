import pytest

from vramplan.errors import ModelConfigError
from vramplan.models.catalog import CATALOG_DIR, load_catalog, resolve_model, size_aliases

CATALOG = load_catalog()
REQUIRED_ALIASES = {"1b", "3b", "7b", "8b", "13b", "14b", "32b", "70b", "72b", "405b", "671b"}


def test_every_file_loads_with_its_stem_as_id():
    files = sorted(CATALOG_DIR.glob("*.toml"))
    assert len(files) == len(CATALOG) >= 40
    assert {f.stem for f in files} == set(CATALOG)


def test_catalog_covers_the_families_asked_for():
    families = {record.spec.family for record in CATALOG.values()}
    assert families == {
        "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
        "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss",
    }


def test_size_aliases_map_to_named_representatives():
    assert set(size_aliases()) == REQUIRED_ALIASES
    resolved = resolve_model("70b")
    assert resolved.id == "llama-3.1-70b" and "size alias 70b" in resolved.resolved_from


def test_671b_resolves_to_deepseek_r1():
    resolved = resolve_model("671b")
    assert resolved.id == "deepseek-r1" and "size alias 671b" in resolved.resolved_from
    assert resolved.spec.moe is not None and resolved.spec.mla is not None


def test_resolve_by_repo_name():
    assert resolve_model("meta-llama/Llama-3.1-8B").id == "llama-3.1-8b"


def test_unknown_model_is_a_usage_error():
    with pytest.raises(ModelConfigError, match="not a catalog model"):
        resolve_model("llama-9-900b")


@pytest.mark.parametrize("record_id", sorted(CATALOG), ids=str)
def test_parameter_count_equals_transformers_meta_build(record_id):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    record = CATALOG[record_id]
    config = transformers.AutoConfig.for_model(**record.config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert record.spec.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("record_id", sorted(CATALOG), ids=str)
def test_every_record_is_sourced(record_id):
    record = CATALOG[record_id]
    assert record.source.strip() and record.hf_repo.count("/") == 1


def test_the_index_is_the_records_index():
    """models/catalog/index.json (aliases and repo names, read on every cold start) matches the records; rewrite it
    with `python -m vramplan.models.catalog` after editing a record."""
    from vramplan.models.catalog import build_index, catalog_index, load_catalog

    assert catalog_index() == build_index(load_catalog())
