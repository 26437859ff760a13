"""--alloc-conf and the environment: PYTORCH_ALLOC_CONF parsed as c10/core/AllocatorConfig.cpp parses it."""

import pytest

from vramplan.allocator.caching import AllocatorConfig
from vramplan.allocator.config import alloc_conf_from_environment, describe, parse_alloc_conf
from vramplan.errors import NotModelledError, UsageError

MIB = 2**20


def test_the_modelled_keys():
    config = parse_alloc_conf("expandable_segments:True, max_split_size_mb:128,roundup_power2_divisions:4,"
                              "garbage_collection_threshold:0.6,pinned_use_cuda_host_register:True")
    assert config == AllocatorConfig(expandable_segments=True, max_split_size=128 * MIB, roundup_power2_divisions=4,
                                     garbage_collection_threshold=0.6)
    assert describe(config) == ("expandable_segments:True,max_split_size_mb:128,roundup_power2_divisions:4,"
                                "garbage_collection_threshold:0.6")
    assert parse_alloc_conf("") == parse_alloc_conf(None) == AllocatorConfig()
    assert describe(AllocatorConfig()) == "torch defaults"


@pytest.mark.parametrize("text", ["expandable_segments", "expandable_segments:maybe", "expandable_segments:true",
                                  "max_split_size_mb:10", "max_split_size_mb:big", "max_split_size_mb:20.5",
                                  "roundup_power2_divisions:3", "roundup_power2_divisions:0",
                                  "garbage_collection_threshold:1.5", "per_process_memory_fraction:0",
                                  "backend:foo", "no_such_key:1"])
def test_malformed_settings_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as raised:
        parse_alloc_conf(text)
    assert "\n" not in str(raised.value) and "--alloc-conf" in str(raised.value)


@pytest.mark.parametrize("text", ["backend:cudaMallocAsync", "roundup_power2_divisions:[256:1,>:8]"])
def test_unmodelled_settings_are_refused(text):
    with pytest.raises(NotModelledError):
        parse_alloc_conf(text)


def test_the_environment_as_torch_reads_it():
    """AllocatorConfig::instance: PYTORCH_ALLOC_CONF first, then the older PYTORCH_CUDA_ALLOC_CONF."""
    assert alloc_conf_from_environment({}) is None
    assert alloc_conf_from_environment({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}) == (
        "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    both = {"PYTORCH_CUDA_ALLOC_CONF": "a:1", "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert alloc_conf_from_environment(both) == ("PYTORCH_ALLOC_CONF", "expandable_segments:True")
