"""A missing, unreadable or unknown config -> one-line UsageError naming the file."""

from __future__ import annotations

import pytest

from vramplan.errors import UsageError
from vramplan.importers import load_run_config


@pytest.mark.parametrize(
    "name, content, kind, fragment",
    [
        pytest.param("bad.yaml", "model: [unclosed\n", None, "not valid YAML at line", id="bad-yaml"),
        pytest.param("bad.json", "{\"a\": }", None, "not valid JSON", id="bad-json"),
        pytest.param("list.yaml", "- a\n- b\n", None, "expected a mapping", id="top-level-list"),
        pytest.param("empty.yaml", "", None, "expected a mapping", id="empty"),
        pytest.param("what.yaml", "learning_rate: 0.1\nepochs: 3\n", None, "cannot tell which trainer", id="unknown"),
        pytest.param("a.yaml", "base_model: x\nadapter: lora\n", "unsloth", "unknown config kind", id="bad-kind"),
        pytest.param("args.json", "{\"output_dir\": \"o\", \"adapter_config\": \"nope.json\"}", None,
                     "cannot read the peft adapter config", id="missing-adapter"),
    ],
)
def test_bad_config_is_a_one_line_usage_error(tmp_path, name, content, kind, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UsageError) as err:
        load_run_config(path, kind=kind)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert str(tmp_path) in message


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_run_config(tmp_path / "absent.yml")


def test_folder_without_a_config(tmp_path):
    with pytest.raises(UsageError, match="a folder without training_args.json"):
        load_run_config(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(UsageError, match="cannot read"):
        load_run_config(path)
