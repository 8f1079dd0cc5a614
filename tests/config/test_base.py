"""Config error lines name the key path as the user wrote it (no pydantic union tags)."""

from __future__ import annotations

import pytest

from edgekit.config.base import parse_model, read_yaml
from edgekit.config.run import RunConfig
from edgekit.errors import ConfigError


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_model(RunConfig, data, "station.yaml")
    return str(ei.value)


def test_tagged_union_tag_is_not_part_of_the_key_path() -> None:
    msg = _err({"bundle": "b", "source": {"type": "folder", "path": "x", "rat_hz": 3}})
    assert msg == "station.yaml: source.rat_hz: unknown key (remove it or check the spelling)"


def test_list_index_and_nested_value_error() -> None:
    msg = _err({"bundle": "b", "source": {"type": "folder", "path": "x"},
                "outputs": [{"type": "fake_gpio"}, {"type": "fake_gpio", "lines": {"reject": -1}}]})
    assert msg.startswith("station.yaml: outputs[1].lines.reject: -1 ")
    assert "\n" not in msg


def test_missing_required_key() -> None:
    assert _err({"source": {"type": "folder", "path": "x"}}) == "station.yaml: bundle: required key is missing"


def test_bad_yaml_names_line_and_column(tmp_path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"r.yaml: line \d+ column \d+: invalid YAML"):
        read_yaml(p)
