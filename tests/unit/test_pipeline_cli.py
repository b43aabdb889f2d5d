"""`gflow run --remote-config FILE`: the endpoints file and the command's flags together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from services.common.errors import InvalidArgumentError
from services.pipeline.cli import RunCommand, _store_and_remote
from services.pipeline.config import PipelineConfig, RemoteConfig


def _endpoints(tmp_path: Path, remote: dict) -> Path:
    (tmp_path / "access").write_text("access-key\n")
    (tmp_path / "secret").write_text("secret-key\n")
    path = tmp_path / "endpoints.yaml"
    store = {
        "url": "s3://gflow",
        "endpoint": "127.0.0.1:9000",
        "access_key_file": str(tmp_path / "access"),
        "secret_key_file": str(tmp_path / "secret"),
    }
    path.write_text(yaml.safe_dump({"remote": remote, "store": store}))
    return path


def _command(endpoints: Path, **remote_flags) -> RunCommand:
    pipeline = PipelineConfig(remote=RemoteConfig(**remote_flags))
    return RunCommand(video=Path("clip.mp4"), remote_config=endpoints, pipeline=pipeline)


def test_file_keys_win_and_flags_give_the_rest(tmp_path):
    endpoints = _endpoints(tmp_path, {"flow": "10.0.0.2:50052", "retry_factor": 3.0})
    command = _command(endpoints, flow="127.0.0.1:1", retry_attempts=2, retry_factor=1.5)
    store, remote = _store_and_remote(command)
    assert (remote.flow, remote.retry_factor) == ("10.0.0.2:50052", 3.0)  # from the file
    assert remote.retry_attempts == 2  # from the flag
    assert dataclasses.replace(remote, flow="", retry_factor=2.0, retry_attempts=6) == (
        RemoteConfig()
    )
    assert (store.url, store.s3.access_key, store.s3.secret_key) == (
        "s3://gflow",
        "access-key",
        "secret-key",
    )


def test_unknown_or_bad_file_keys_are_named(tmp_path):
    with pytest.raises(InvalidArgumentError, match="remote_config.remote.retry_count"):
        _store_and_remote(_command(_endpoints(tmp_path, {"retry_count": 3})))
    with pytest.raises(InvalidArgumentError, match="remote.retry_attempts"):
        _store_and_remote(_command(_endpoints(tmp_path, {"retry_attempts": 0})))
