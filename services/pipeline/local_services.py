"""`gflow serve`: a local S3 store and every service as separate processes on loopback."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import UnavailableError
from services.common.runtime import DEFAULT_PORTS
from services.pipeline.seaweed import SeaweedS3, start_seaweed_s3

log = logging.getLogger(__name__)

STAGE_SERVICES = ("depth", "flow", "segment", "fit")
BUCKET = "gflow"


@dataclass
class ServeCommand:
    """Start a local SeaweedFS S3 store and the depth, flow, segment, fit and pipeline services
    as separate processes on 127.0.0.1, and write the endpoints file `gflow run` reads."""

    # Folder for the store's data, the auth token, credentials, endpoints file and logs.
    dir: Path = Path("gflow-serve")
    # S3 gateway port (0 = any free port).
    s3_port: int = 8333
    # Port of each service; the defaults are the ones compose and Helm use.
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Seconds to wait for every service to report SERVING.
    start_timeout_s: float = 120.0


@dataclass
class LocalServices:
    """What `start_local_services` started; `stop()` drains and ends everything."""

    s3: SeaweedS3
    processes: dict[str, subprocess.Popen]
    endpoints_file: Path

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.s3.stop()


def _wait_serving(port: int, deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise UnavailableError(f"the service on port {port} did not become healthy in time")


def start_local_services(command: ServeCommand) -> LocalServices:
    """SeaweedFS, then the four stage services, then the pipeline service pointed at them."""
    root = command.dir.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
    secret_file = root / "s3-secret-key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(24))
        secret_file.chmod(0o600)
    s3 = start_seaweed_s3(root / "s3", secret_file.read_text(), s3_port=command.s3_port)
    access_file = root / "s3-access-key"
    access_file.write_text(s3.access_key)
    env = {
        **os.environ,
        "GFLOW_S3_ENDPOINT": s3.endpoint,
        "GFLOW_S3_ACCESS_KEY_FILE": str(access_file),
        "GFLOW_S3_SECRET_KEY_FILE": str(secret_file),
    }
    common = [
        "--store.url",
        f"s3://{BUCKET}",
        "--auth-token-file",
        str(token_file),
        "--no-log-json",
    ]
    processes: dict[str, subprocess.Popen] = {}
    started = LocalServices(s3, processes, root / "endpoints.yaml")
    try:
        for stage in [*STAGE_SERVICES, "pipeline"]:
            args = ["--port", str(command.ports[stage]), *common]
            if stage == "pipeline":
                args = [a.replace("--", "--server.", 1) if a.startswith("--") else a for a in args]
                for remote in STAGE_SERVICES:
                    args += [f"--remote.{remote}", f"127.0.0.1:{command.ports[remote]}"]
                args += ["--remote.auth-token-file", str(token_file)]
            log_file = open(root / "logs" / f"{stage}.log", "ab")  # noqa: SIM115 - lives with the process
            processes[stage] = subprocess.Popen(
                [sys.executable, "-m", f"services.{stage}.server", *args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + command.start_timeout_s
        for stage in processes:
            _wait_serving(command.ports[stage], deadline)
    except BaseException:
        started.stop()
        raise
    endpoints = {
        "remote": {s: f"127.0.0.1:{command.ports[s]}" for s in STAGE_SERVICES}
        | {"auth_token_file": str(token_file)},
        "pipeline": f"127.0.0.1:{command.ports['pipeline']}",
        "store": {
            "url": f"s3://{BUCKET}",
            "endpoint": s3.endpoint,
            "access_key_file": str(access_file),
            "secret_key_file": str(secret_file),
        },
    }
    started.endpoints_file.write_text(yaml.safe_dump(endpoints, sort_keys=False))
    return started
