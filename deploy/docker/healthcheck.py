"""Container health check: ask the server's standard gRPC health service whether it serves.

Docker's HEALTHCHECK runs it inside the image (Kubernetes uses its native `grpc:` probe instead).
The health service is exempt from the bearer token, so no secret is needed here.

Usage: python healthcheck.py [--port P] [--service NAME] [--timeout S] [--tls-ca PEM]
Defaults come from GFLOW_PORT (set by each image) and GFLOW_HEALTH_TLS_CA (set it when the server
runs with --tls-cert/--tls-key). Exit status: 0 when SERVING, 1 otherwise, with the reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger("gflow.healthcheck")


def check(target: str, service: str, timeout_s: float, tls_ca: Path | None) -> str | None:
    """None when `service` on `target` answers SERVING, else why not."""
    if tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"health check of {target} failed: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"{target} reports {status} for service {service!r}"
    return None


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GFLOW_PORT", "0")))
    parser.add_argument("--service", default="", help="'' = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    tls_default = os.environ.get("GFLOW_HEALTH_TLS_CA") or None
    parser.add_argument("--tls-ca", type=Path, default=tls_default, help="PEM root certificate")
    args = parser.parse_args(argv)
    if args.port <= 0:
        log.error("no port: pass --port or set GFLOW_PORT")
        return 1
    problem = check(f"{args.host}:{args.port}", args.service, args.timeout, args.tls_ca)
    if problem is not None:
        log.error("%s", problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
