"""The scripts the images run, exercised for real: health check, weights notice, entrypoint,
and the compose secrets maker."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import runtime
from services.common.store import StoreConfig
from tests.deploy.support import (
    DEPLOY,
    DOCKER,
    ROOT,
    SERVICES,
    assignments,
    dockerfile,
    parse_dockerfile,
)

HEALTHCHECK = DOCKER / "healthcheck.py"
CHECK_WEIGHTS = DOCKER / "check_weights.py"


def run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any GFLOW_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GFLOW_")}
    env.update(extra)
    return env


@pytest.fixture
def health_server(tmp_path):
    """A real gRPC server of the project's runtime on a free loopback port, with auth on."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token")
    config = runtime.ServerConfig(
        port=0,
        auth_token_file=token_file,
        drain_seconds=0.1,
        log_json=False,
        store=StoreConfig(url=str(tmp_path / "store")),
    )
    server = runtime.serve([], config)
    yield server
    server.stop(0)


def test_healthcheck_passes_on_a_serving_server_without_the_token(health_server):
    result = run([sys.executable, str(HEALTHCHECK), "--port", str(health_server.port)], clean_env())
    assert result.returncode == 0, result.stderr
    # The port can come from GFLOW_PORT, as in the images.
    result = run([sys.executable, str(HEALTHCHECK)], clean_env(GFLOW_PORT=str(health_server.port)))
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_with_the_reason(health_server):
    port = str(health_server.port)
    unknown = run(
        [sys.executable, str(HEALTHCHECK), "--port", port, "--service", "gflow.v1.Nope"],
        clean_env(),
    )
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr

    health_server.stop(0)
    down = run([sys.executable, str(HEALTHCHECK), "--port", port, "--timeout", "1"], clean_env())
    assert down.returncode == 1
    assert f"127.0.0.1:{port}" in down.stderr and "UNAVAILABLE" in down.stderr

    no_port = run([sys.executable, str(HEALTHCHECK)], clean_env())
    assert no_port.returncode == 1 and "GFLOW_PORT" in no_port.stderr


def test_weights_notice_names_each_missing_file_and_where_to_get_it(tmp_path):
    present = tmp_path / "unimatch.pth"
    present.write_bytes(b"weights")
    missing = tmp_path / "absent" / "raft.pth"
    env = clean_env(GFLOW_RAFT_WEIGHTS=str(missing), GFLOW_UNIMATCH_CHECKPOINT=str(present))
    result = run([sys.executable, str(CHECK_WEIGHTS), "flow"], env)
    assert result.returncode == 0  # a missing file never stops the service
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0] and "GFLOW_RAFT_WEIGHTS" in lines[0]
    assert "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth" in lines[0]
    assert "reports unavailable in Describe" in lines[0]

    depth = run([sys.executable, str(CHECK_WEIGHTS), "depth"], clean_env())
    assert "/weights/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth" in depth.stderr
    assert "download.europe.naverlabs.com" in depth.stderr

    for stage in ("segment", "fit", "pipeline"):
        quiet = run([sys.executable, str(CHECK_WEIGHTS), stage], clean_env())
        assert (quiet.returncode, quiet.stderr) == (0, "")
    assert run([sys.executable, str(CHECK_WEIGHTS), "nope"], clean_env()).returncode == 2


def test_weights_defaults_are_the_paths_the_images_set():
    sys.path.insert(0, str(DOCKER))
    try:
        import check_weights
    finally:
        sys.path.remove(str(DOCKER))
    assert sorted(check_weights.WEIGHTS) == sorted(SERVICES)
    for stage, weights in check_weights.WEIGHTS.items():
        env = assignments(parse_dockerfile(dockerfile(stage)), "ENV")
        image_paths = {k: v for k, v in env.items() if v.startswith("/weights/")}
        assert image_paths == {w.env: w.default for w in weights}


def test_entrypoint_warns_then_becomes_the_stage_server(tmp_path):
    """The real entrypoint and the real flow server CLI (--help: parse flags, print, exit 0)."""
    env = clean_env(
        GFLOW_STAGE="flow",
        GFLOW_RAFT_WEIGHTS=str(tmp_path / "raft.pth"),
        GFLOW_UNIMATCH_CHECKPOINT=str(tmp_path / "unimatch.pth"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT),
    )
    result = run(["sh", str(DOCKER / "entrypoint.sh"), "--help"], env)
    assert result.returncode == 0, result.stderr
    assert "--store.url" in result.stdout and "--auth-token-file" in result.stdout
    assert str(tmp_path / "raft.pth") in result.stderr
    assert str(tmp_path / "unimatch.pth") in result.stderr

    unset = run(["sh", str(DOCKER / "entrypoint.sh")], clean_env())
    assert unset.returncode != 0 and "GFLOW_STAGE" in unset.stderr


def test_make_secrets_creates_private_secrets_once(tmp_path):
    shutil.copy(DEPLOY / "make-secrets.sh", tmp_path)
    first = run(["sh", str(tmp_path / "make-secrets.sh")], clean_env(), cwd=tmp_path.parent)
    assert first.returncode == 0, first.stderr
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    values = {}
    for name, length in (("auth_token", 48), ("s3_access_key", 20), ("s3_secret_key", 40)):
        path = secrets / name
        values[name] = path.read_text()
        assert len(values[name]) == length and values[name].isalnum()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by uid 10001 in containers
    assert len(set(values.values())) == 3

    again = run(["sh", str(tmp_path / "make-secrets.sh")], clean_env())
    assert again.returncode == 0
    assert {name: (secrets / name).read_text() for name in values} == values
    assert again.stdout.count("kept") == 3
