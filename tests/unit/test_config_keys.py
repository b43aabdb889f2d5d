"""Config JSON parsing names the bad field; content keys are stable and input-sensitive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from services.common.config import parse_config_json, to_json
from services.common.errors import InvalidArgumentError
from services.common.keys import content_key


@dataclass
class Inner:
    backend: Literal["dis", "raft"] = "dis"
    weights: Path | None = None
    scale: float = 1.0


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 3


def test_round_trip_through_json():
    config = Outer(Inner("raft", Path("/w/raft.pth"), 2.5), steps=7)
    assert parse_config_json(to_json(config), Outer) == config
    assert parse_config_json("", Outer) == Outer()


@pytest.mark.parametrize(
    "text, field_name",
    [
        ('{"stepz": 1}', "config_json.stepz"),
        ('{"steps": "many"}', "config_json.steps"),
        ('{"inner": {"backend": "flownet"}}', "config_json.inner.backend"),
        ('{"inner": 3}', "config_json.inner"),
        ("{not json", "config_json"),
    ],
)
def test_bad_fields_are_named(text, field_name):
    with pytest.raises(InvalidArgumentError) as info:
        parse_config_json(text, Outer)
    assert info.value.field == field_name


def test_content_key_is_stable_and_sensitive():
    key = content_key("flow", "dis", Outer(), ["video-hash"])
    assert key == content_key("flow", "dis", Outer(), ["video-hash"])
    assert key.startswith("flow/") and len(key) == len("flow/") + 40
    others = {
        content_key("flow", "raft", Outer(), ["video-hash"]),
        content_key("flow", "dis", Outer(steps=4), ["video-hash"]),
        content_key("flow", "dis", Outer(), ["other-video"]),
        content_key("depth", "dis", Outer(), ["video-hash"]),
    }
    assert key not in others and len(others) == 4
    # 2.0 and 2 are the same parameter value
    assert content_key("s", "b", {"x": 2.0}, []) == content_key("s", "b", {"x": 2}, [])
