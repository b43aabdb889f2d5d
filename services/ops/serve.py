"""`gflow serve`: a local S3 store and every service as separate processes on loopback,
supervised: a crashed worker (or the store) is restarted with backoff, SIGTERM or SIGINT drains
and stops them all, and none outlives `gflow serve` even when it is killed."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.client import OWN_SUBCHANNELS
from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.runtime import DEFAULT_PORTS
from services.ops.seaweedfs import (
    SeaweedS3,
    die_with_parent,
    restart_seaweed_s3,
    start_seaweed_s3,
    write_secret,
)

log = logging.getLogger(__name__)

STAGE_SERVICES = ("depth", "flow", "segment", "fit")
BUCKET = "gflow"


@dataclass
class ServeCommand:
    """Start a local SeaweedFS S3 store and the depth, flow, segment, fit and pipeline services
    as separate processes on 127.0.0.1, and write the endpoints file `gflow run` reads. A
    crashed service is restarted (after 1, 2, 4 ... 30 s); SIGTERM or Ctrl-C stops them all."""

    # Folder for the store's data, the auth token, credentials, endpoints file and logs.
    dir: Path = Path("gflow-serve")
    # S3 gateway port (0 = any free port).
    s3_port: int = 8333
    # Port of each service; the defaults are the ones compose and Helm use.
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Seconds to wait for every service to report SERVING.
    start_timeout_s: float = 120.0
    # GPUs per stage, STAGE=ID[,ID...], e.g. depth=0 flow=0 segment=0 fit=0,1: a stage's
    # workers see only their GPU (CUDA_VISIBLE_DEVICES); fit gets one worker per id, the n-th
    # on port fit + n, behind round-robin. Once any is given, a stage not named runs on the CPU;
    # none given: every worker sees every GPU.
    gpus: list[str] = field(default_factory=list)


# A crashed worker is restarted after 1 s, then 2, 4, ... at most 30 s while it keeps crashing;
# once it has run STABLE_AFTER_S the wait starts from 1 s again.
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0
# Seconds a worker gets to drain after SIGTERM before it is killed (its own drain is 30 s).
STOP_GRACE_S = 35.0


def parse_gpu_assignment(items: list[str]) -> dict[str, tuple[str, ...]]:
    """`["depth=0", "fit=2,3"]` -> `{"depth": ("0",), "fit": ("2", "3")}`."""
    assignment: dict[str, tuple[str, ...]] = {}
    for item in items:
        stage, sep, ids = item.partition("=")
        if not sep:
            raise InvalidArgumentError("--gpus", f"{item!r}: write STAGE=ID[,ID...], e.g. fit=2,3")
        if stage not in STAGE_SERVICES:
            raise InvalidArgumentError(
                "--gpus",
                f"{item!r}: {stage!r} is not a stage; GPUs go to {', '.join(STAGE_SERVICES)}",
            )
        if stage in assignment:
            raise InvalidArgumentError(
                "--gpus", f"names {stage} twice: give its ids once, e.g. {stage}=0,1"
            )
        gpu_ids = tuple(ids.split(","))
        if not all(i.strip().isdigit() for i in gpu_ids):
            raise InvalidArgumentError(
                "--gpus", f"{item!r}: GPU ids are the indices nvidia-smi -L lists, e.g. {stage}=0"
            )
        assignment[stage] = tuple(i.strip() for i in gpu_ids)
    return assignment


@dataclass(frozen=True)
class WorkerPlan:
    """Where one stage worker listens and which GPUs it sees."""

    name: str  # the stage, or fit-N for the N-th extra fit worker
    stage: str
    port: int
    cuda_visible_devices: str | None  # None: inherited (every GPU)


def plan_workers(ports: dict[str, int], gpus: list[str]) -> list[WorkerPlan]:
    """One worker per stage (per listed GPU for fit), on the ports given (fit + n for the
    n-th fit worker), each seeing only its GPUs once any assignment is given."""
    assignment = parse_gpu_assignment(gpus)
    plans = []
    for stage in STAGE_SERVICES:
        ids = assignment.get(stage, ())
        if not gpus:
            placements: list[str | None] = [None]
        elif stage == "fit" and ids:
            placements = list(ids)
        else:
            placements = [",".join(ids)]  # "" hides every GPU: the CPU
        for n, visible in enumerate(placements):
            name = stage if n == 0 else f"{stage}-{n}"
            plans.append(WorkerPlan(name, stage, ports[stage] + n, visible))
    taken = [p.port for p in plans] + [ports["pipeline"]]
    clash = sorted({port for port in taken if taken.count(port) > 1})
    if clash:
        raise InvalidArgumentError(
            "--gpus",
            f"the fit workers take ports {ports['fit']}.. (fit + n), which clash with another "
            f"service on {clash}: give the others other --ports",
        )
    return plans


def grpc_target(addresses: list[str]) -> str:
    """One address as is; several as gRPC's fixed-list target `ipv4:a,b` (round-robin in the
    project's client)."""
    return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)


def stage_targets(plans: list[WorkerPlan]) -> dict[str, str]:
    """The gRPC target of each stage over its workers."""
    return {
        stage: grpc_target([f"127.0.0.1:{p.port}" for p in plans if p.stage == stage])
        for stage in STAGE_SERVICES
    }


@dataclass
class Worker:
    """One supervised service process and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_delay_s: float = RESTART_FIRST_DELAY_S
    restart_at: float | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        self.started_at = time.monotonic()

    def restart_if_exited(self) -> None:
        """Schedule a restart of an exited worker, saying so, and do it when its wait is over."""
        now = time.monotonic()
        code = self.process.poll()
        if code is None:
            if now - self.started_at > STABLE_AFTER_S:
                self.restart_delay_s = RESTART_FIRST_DELAY_S
            return
        if self.restart_at is None:
            self.restart_at = now + self.restart_delay_s
            log.warning(
                "the %s worker exited with code %s; restarting it in %.0f s (log: %s)",
                self.name,
                code,
                self.restart_delay_s,
                self.log_path,
            )
        elif now >= self.restart_at:
            self.start()
            self.restart_at = None
            self.restart_delay_s = min(2 * self.restart_delay_s, RESTART_MAX_DELAY_S)
            log.warning("the %s worker restarted (pid %d)", self.name, self.process.pid)


@dataclass
class LocalServices:
    """What `start_local_services` started; `supervise` keeps it up, `stop()` ends it all."""

    s3: SeaweedS3
    workers: dict[str, Worker]
    endpoints_file: Path

    def supervise(self, stop: threading.Event) -> None:
        """Until `stop` is set: restart the store or any worker that exited."""
        while not stop.wait(0.5):
            if self.s3.process.poll() is not None:
                log.warning(
                    "the object store exited with code %s; restarting it (log: %s)",
                    self.s3.process.returncode,
                    self.s3.log_path,
                )
                self.s3 = restart_seaweed_s3(self.s3)
                log.warning("the object store restarted on %s", self.s3.endpoint)
            for worker in self.workers.values():
                worker.restart_if_exited()

    def stop(self) -> None:
        """SIGTERM every worker (each drains its calls), kill what outlives the grace, then
        stop the store."""
        running = [w.process for w in self.workers.values() if w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.s3.stop()


def run_until_signalled(services: LocalServices) -> None:
    """Supervise until SIGTERM or SIGINT, then drain and stop every child: none is left."""
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("%s received: draining and stopping every service", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        services.supervise(stop)
    finally:
        services.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")


def _wait_serving(port: int, deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[OWN_SUBCHANNELS]) as channel:
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
    plans = plan_workers(command.ports, command.gpus)
    targets = stage_targets(plans)
    root = command.dir.resolve()
    (root / "logs").mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    token_file = root / "token"
    if not token_file.exists():
        write_secret(token_file, secrets.token_urlsafe(24))
    secret_file = root / "s3-secret-key"
    if not secret_file.exists():
        write_secret(secret_file, secrets.token_urlsafe(24))
    s3 = start_seaweed_s3(
        root / "s3",
        secret_file.read_text(),
        s3_port=command.s3_port,
        keep_free=[p.port for p in plans] + [command.ports["pipeline"]],
    )
    access_file = root / "s3-access-key"
    write_secret(access_file, s3.access_key)
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
    workers: dict[str, Worker] = {}
    started = LocalServices(s3, workers, root / "endpoints.yaml")
    try:
        for plan in plans:
            argv = [sys.executable, "-m", f"services.{plan.stage}.server", "--port"]
            argv += [str(plan.port), *common]
            worker_env = dict(env)
            if plan.cuda_visible_devices is not None:
                worker_env["CUDA_VISIBLE_DEVICES"] = plan.cuda_visible_devices
            log.info(
                "%s worker on port %d, GPUs %s",
                plan.name,
                plan.port,
                "all" if plan.cuda_visible_devices is None else plan.cuda_visible_devices or "none",
            )
            workers[plan.name] = Worker(
                plan.name, argv, worker_env, root / "logs" / f"{plan.name}.log"
            )
            workers[plan.name].start()
        args = [a.replace("--", "--server.", 1) if a.startswith("--") else a for a in common]
        argv = [sys.executable, "-m", "services.pipeline.server", "--server.port"]
        argv += [str(command.ports["pipeline"]), *args]
        for stage in STAGE_SERVICES:
            argv += [f"--remote.{stage}", targets[stage]]
        argv += ["--remote.auth-token-file", str(token_file)]
        workers["pipeline"] = Worker("pipeline", argv, env, root / "logs" / "pipeline.log")
        workers["pipeline"].start()
        deadline = time.monotonic() + command.start_timeout_s
        for port in [p.port for p in plans] + [command.ports["pipeline"]]:
            _wait_serving(port, deadline)
    except BaseException:
        started.stop()
        raise
    endpoints = {
        "remote": targets | {"auth_token_file": str(token_file)},
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
