"""The object store inside `gflow lab`'s store container: SeaweedFS S3 on the host's loopback.

The container's health check looks for the ready file, written once a signed S3 bucket round trip
works (`start_seaweed_s3` returns only then).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import tyro

from services.common.logs import setup_logging
from services.ops.seaweedfs import start_seaweed_s3

log = logging.getLogger(__name__)


@dataclass
class StoreServeCommand:
    """Run SeaweedFS (master, volume, filer, S3) with its data under --data until SIGTERM."""

    data: Path = Path("/data")
    # S3 port on 127.0.0.1 (the container uses the host's network).
    port: int = 8333
    access_key_file: Path = Path("/run/gflow/s3_access_key")
    secret_key_file: Path = Path("/run/gflow/s3_secret_key")
    ready_file: Path = Path("/tmp/gflow-store-ready")
    # Ports of the lab's services on this host, which weed's other listeners must leave alone.
    keep_free: tuple[int, ...] = ()


def serve_store(command: StoreServeCommand) -> None:
    server = start_seaweed_s3(
        command.data,
        command.secret_key_file.read_text().strip(),
        command.access_key_file.read_text().strip(),
        command.port,
        keep_free=command.keep_free,
    )
    command.ready_file.touch()
    log.info("S3 store serving on %s, data in %s", server.endpoint, command.data)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.process.wait()
    command.ready_file.unlink(missing_ok=True)


def main() -> None:
    setup_logging("INFO")
    serve_store(tyro.cli(StoreServeCommand))


if __name__ == "__main__":
    main()
