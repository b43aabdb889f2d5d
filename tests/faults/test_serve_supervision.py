"""Finding 5: `gflow serve` supervises. A worker killed with SIGKILL mid-fit is restarted (and
the log says so) and the run completes through retry and resume, bit-identical; SIGTERM drains
and stops every child, leaving no process and no bound port; the secret files it writes are the
owner's only (finding 1). Before the fix one crash stopped the whole stack, and SIGTERM left the
five services and SeaweedFS running with their ports bound."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.artifacts import Artifacts
from services.common.client import OWN_SUBCHANNELS
from services.common.errors import no_progress
from services.common.store import LocalFolderStore, S3Settings, S3Store
from services.ops.seaweedfs import free_ports
from services.pipeline.config import PipelineConfig, RemoteConfig
from services.pipeline.engine import (
    call_stage,
    depth_request,
    fit_request,
    flow_request,
    run_pipeline,
    segment_request,
)
from tests.faults.clips import lean_fit, stored_clip
from tests.integration.test_e2e_services import one_thread  # noqa: F401 - autouse: one thread

pytestmark = pytest.mark.s3

STAGES = ("pipeline", "depth", "flow", "segment", "fit")
FIT_FRAMES = 8


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of the processes `pid` started."""
    pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(p): Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode() for p in pids
    }


def _wait_for(condition, within_s: float, what: str):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {within_s} s")


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_serve(tmp_path) -> tuple[subprocess.Popen, Path, dict[str, int], Path]:
    folder = tmp_path / "serve"
    ports = dict(zip(STAGES, free_ports(len(STAGES)), strict=True))
    argv = [str(Path(sys.executable).parent / "gflow"), "serve", "--dir", str(folder)]
    argv += ["--s3-port", "0", *(f"--ports.{s}={p}" for s, p in ports.items())]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        serve = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: (folder / "endpoints.yaml").exists(), 300, "gflow serve starting")
    except BaseException:
        serve.kill()
        raise
    return serve, folder, ports, log_path


def _stopped_cleanly(children: set[int], ports: dict[str, int]) -> None:
    _wait_for(lambda: not any(_alive(p) for p in children), 60, "every child ending")
    assert [s for s in STAGES if not _port_free(ports[s])] == []


def _served_store(folder: Path) -> tuple[Artifacts, RemoteConfig]:
    """The store `gflow serve` started and its stages, as `gflow run --remote-config` sees
    them; retries wait long enough for a restarted worker to come back."""
    endpoints = yaml.safe_load((folder / "endpoints.yaml").read_text())
    store = endpoints["store"]
    settings = S3Settings(
        endpoint=store["endpoint"],
        access_key=Path(store["access_key_file"]).read_text().strip(),
        secret_key=Path(store["secret_key_file"]).read_text().strip(),
    )
    remote = RemoteConfig(
        **endpoints["remote"], retry_attempts=12, retry_first_delay_s=0.5, retry_max_delay_s=8.0
    )
    return Artifacts(S3Store(store["url"].removeprefix("s3://"), settings)), remote


def _fit_arrays(artifacts: Artifacts, result) -> dict[str, bytes]:
    return {a.name: artifacts.get_bytes(a.ref) for a in result.artifacts}


def test_a_worker_killed_mid_fit_is_restarted_and_the_run_completes_bit_identical(tmp_path):
    """SIGKILL the fit worker after its first checkpoint: `gflow serve` restarts it, the
    pipeline's retry reaches it, the fit resumes from the checkpoint, and every artifact equals
    an uninterrupted embedded run's. SIGTERM then leaves nothing behind."""
    serve, folder, ports, log_path = _start_serve(tmp_path)
    try:
        for secret in ("token", "s3-secret-key", "s3-access-key", "s3/identities.json"):
            assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600, secret
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        children = _children(serve.pid)
        assert len(children) == 6  # SeaweedFS and five services

        artifacts, remote = _served_store(folder)
        config = PipelineConfig(  # depth once: the stages are called below one by one
            fit=dataclasses.replace(lean_fit(), checkpoint_every=1),
            track_grid=0,
            remote=remote,
            two_pass_depth=False,
        )
        video = stored_clip(artifacts, 11, frame_count=FIT_FRAMES)
        results = {}
        for stage, request in (
            ("flow", lambda: flow_request(video, config)),
            ("depth", lambda: depth_request(video, results["flow"], config)),
            ("segment", lambda: segment_request(video, results["flow"], results["depth"], config)),
        ):
            results[stage] = call_stage(artifacts, stage, request(), remote, no_progress, 600)
        request = fit_request(video, results["depth"], results["flow"], results["segment"], config)
        with ThreadPoolExecutor(1) as pool:
            fitting = pool.submit(call_stage, artifacts, "fit", request, remote, no_progress, 900)
            checkpoint = _wait_for(
                lambda: [k for k in artifacts.store.list("fit/") if "/checkpoints/" in k],
                300,
                "the fit's first checkpoint",
            )[0]
            fit_key = checkpoint.split("/checkpoints/")[0]
            fit_pid = next(p for p, cmd in children.items() if "services.fit.server" in cmd)
            os.kill(fit_pid, signal.SIGKILL)
            assert not artifacts.store.exists(f"{fit_key}/result.pb")  # killed mid-fit
            fit = fitting.result(timeout=900)
        assert artifacts.get_json(fit.report)["resumed_from"] is not None
        assert artifacts.store.list(f"{fit_key}/checkpoints/") == []  # cleared once committed

        new_fit = _wait_for(
            lambda: [
                p
                for p, cmd in _children(serve.pid).items()
                if "services.fit.server" in cmd and p != fit_pid
            ],
            60,
            "the fit worker's restart",
        )
        _wait_for(lambda: _serving(ports["fit"]), 120, "the restarted fit worker serving")
        log = log_path.read_text()
        assert "the fit worker exited with code -9; restarting it in 1 s" in log
        assert f"the fit worker restarted (pid {new_fit[0]})" in log
        assert all(_serving(ports[s]) for s in STAGES)

        embedded = Artifacts(LocalFolderStore(tmp_path / "embedded"))
        reference = run_pipeline(
            embedded,
            stored_clip(embedded, 11, frame_count=FIT_FRAMES),
            dataclasses.replace(config, remote=RemoteConfig()),
        ).fit
        assert fit.key == reference.key
        assert _fit_arrays(artifacts, fit) == _fit_arrays(embedded, reference)

        everyone = set(_children(serve.pid))
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
        _stopped_cleanly(everyone, ports)
    finally:
        if serve.poll() is None:
            serve.kill()


def test_killing_serve_leaves_no_orphan(tmp_path):
    """Even SIGKILL, which it cannot handle: the kernel ends its children (PR_SET_PDEATHSIG)."""
    serve, _, ports, _ = _start_serve(tmp_path)
    everyone = set(_children(serve.pid))
    serve.kill()
    serve.wait()
    _stopped_cleanly(everyone, ports)
