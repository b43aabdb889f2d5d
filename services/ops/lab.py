"""`gflow lab`: the object store and the services as containers on this host (docker SDK).

Each stage runs on the GPUs named for it (`--gpus depth=0 flow=1 fit=2,3`: one device request per
container, one fit container per listed GPU) or on its CPU image when none is named. Every
container uses the host's network and listens on 127.0.0.1 only. `up` waits for the containers'
health checks and writes the endpoints file `gflow run --remote-config` reads, as `gflow serve`
does; `down` drains and removes the containers and keeps the store's volume unless asked.

Planning (`plan_lab`, `run_kwargs`, `endpoints`) is pure; only `lab_up/status/logs/down` talk to
the Docker engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import docker
import docker.errors
import requests
import tyro
import yaml
from docker.types import DeviceRequest, Mount

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from services.common.runtime import DEFAULT_PORTS
from services.ops.serve import BUCKET, STAGE_SERVICES, grpc_target, parse_gpu_assignment

log = logging.getLogger(__name__)

LAB_LABEL = "gflow.lab"  # value: the lab's name; every container and the volume carry it
SERVICE_LABEL = "gflow.lab.service"  # store, depth, flow, segment, fit or pipeline
GPUS_LABEL = "gflow.lab.gpus"  # the GPU ids of the container ("" = CPU)
SPEC_LABEL = "gflow.lab.spec"  # digest of spec and image: `up` keeps an unchanged container
CPU_VARIANT_STAGES = ("depth", "flow", "fit")  # their CPU images are tagged `<tag>-cpu`
SECRET_FILES = ("auth_token", "s3_access_key", "s3_secret_key")
SECRETS_IN_CONTAINER = "/run/gflow"
WEIGHTS_IN_CONTAINER = "/weights"  # where the images' GFLOW_*_CHECKPOINT defaults point
WEIGHTS_STAGES = ("depth", "flow")
STORE_DATA_IN_CONTAINER = "/data"
# Docker's health checks run every 2 s here (the images say 15 s), so `up` sees health soon.
HEALTH_INTERVAL_NS = 2_000_000_000
# Seconds a stopping container gets to drain after SIGTERM (the compose file's stop_grace_period).
DRAIN_S = 45
START_ORDER = ("store", *STAGE_SERVICES, "pipeline")


@dataclass
class LabSettings:
    """What every `gflow lab` action shares: where the lab's files are, which images it runs."""

    # Folder for the lab's secrets and its endpoints file.
    dir: Path = Path("gflow-lab")
    # Prefix of the container names and value of the gflow.lab label.
    name: str = "gflow-lab"
    # Image registry prefix (e.g. registry.lab:5000/), empty for local images.
    registry: str = ""
    # Image tag; depth, flow and fit without a GPU use `<tag>-cpu` (deploy/lab/build-images.sh).
    tag: str = "latest"


@dataclass
class LabUpCommand:
    """Start the store, the stage containers and the pipeline service on this host, wait until
    all are healthy and write DIR/endpoints.yaml (again: only changed containers restart)."""

    # GPUs per stage, STAGE=ID[,ID...], e.g. depth=0 flow=1 segment=1 fit=2,3 (one fit container
    # per id); a stage not named runs on the CPU.
    gpus: list[str] = field(default_factory=list)
    # KEY=VALUE set in every service container, e.g. OMP_NUM_THREADS=1.
    env: list[str] = field(default_factory=list)
    # Folder with the model checkpoints (MASt3R, UniMatch, RAFT), mounted read-only at /weights
    # in the depth and flow containers, where their GFLOW_*_CHECKPOINT defaults look.
    weights: Path | None = None
    # S3 port of the store on 127.0.0.1.
    s3_port: int = 8333
    # Port of each service on 127.0.0.1; the n-th fit container listens on fit + n.
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Seconds to wait for every container to report healthy.
    start_timeout_s: float = 300.0
    # Which lab: its folder, its name, its images.
    lab: tyro.conf.OmitArgPrefixes[LabSettings] = field(default_factory=LabSettings)


@dataclass
class LabStatusCommand:
    """List the lab's containers: service, state, health, GPUs, image."""

    # Which lab: its folder, its name, its images.
    lab: tyro.conf.OmitArgPrefixes[LabSettings] = field(default_factory=LabSettings)


@dataclass
class LabLogsCommand:
    """Print the logs of a service's containers (every fit container for `fit`)."""

    service: tyro.conf.Positional[str]
    # Lines from the end of each container's log.
    tail: int = 200
    # Which lab: its folder, its name, its images.
    lab: tyro.conf.OmitArgPrefixes[LabSettings] = field(default_factory=LabSettings)


@dataclass
class LabDownCommand:
    """Stop the lab: the pipeline first, the store last, each draining its in-flight calls."""

    # Also delete the store's volume (every stored artifact).
    remove_store: bool = False
    # Seconds each container gets to drain after SIGTERM before it is killed.
    drain_s: int = DRAIN_S
    # Which lab: its folder, its name, its images.
    lab: tyro.conf.OmitArgPrefixes[LabSettings] = field(default_factory=LabSettings)


@dataclass
class LabCommand:
    """Run the store and the services as containers on this host's GPUs (Docker)."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Annotated[LabUpCommand, tyro.conf.subcommand("up")]
        | Annotated[LabStatusCommand, tyro.conf.subcommand("status")]
        | Annotated[LabLogsCommand, tyro.conf.subcommand("logs")]
        | Annotated[LabDownCommand, tyro.conf.subcommand("down")]
    ]


@dataclass(frozen=True)
class ContainerSpec:
    """One container of the lab, as planned."""

    name: str
    service: str  # store, depth, flow, segment, fit or pipeline
    image: str
    port: int  # where it listens on 127.0.0.1 (S3 for the store, gRPC otherwise)
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    gpu_ids: tuple[str, ...] = ()
    weights_dir: str = ""  # host folder mounted read-only at WEIGHTS_IN_CONTAINER ("" = none)

    def digest(self, image_id: str) -> str:
        """Changes when the spec or the image behind its tag changes."""
        text = json.dumps([asdict(self), image_id], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(
                "--env", f"{item!r}: write KEY=VALUE, e.g. OMP_NUM_THREADS=1"
            )
        pairs.append((key, value))
    return tuple(pairs)


def image_name(settings: LabSettings, service: str, on_gpu: bool) -> str:
    cpu = "-cpu" if service in CPU_VARIANT_STAGES and not on_gpu else ""
    return f"{settings.registry}gflow-{service}:{settings.tag}{cpu}"


def plan_lab(command: LabUpCommand) -> list[ContainerSpec]:
    """Every container of the lab, in start order: store, stages, pipeline."""
    settings = command.lab
    gpus = parse_gpu_assignment(command.gpus)
    user_env = parse_env(command.env)
    weights_dir = ""
    if command.weights is not None:
        if not command.weights.is_dir():
            raise InvalidArgumentError(
                "--weights",
                f"{command.weights} is not a folder: give the folder that holds the checkpoints "
                "(docs/deploy.md, Weights)",
            )
        weights_dir = str(command.weights.resolve())
    missing = [s for s in (*STAGE_SERVICES, "pipeline") if s not in command.ports]
    if missing:
        raise InvalidArgumentError("--ports", f"no port for {', '.join(missing)}")
    secret = {name: f"{SECRETS_IN_CONTAINER}/{name}" for name in SECRET_FILES}
    store_env = (
        ("GFLOW_S3_ENDPOINT", f"127.0.0.1:{command.s3_port}"),
        ("GFLOW_S3_ACCESS_KEY_FILE", secret["s3_access_key"]),
        ("GFLOW_S3_SECRET_KEY_FILE", secret["s3_secret_key"]),
    )
    server_flags = ("--store.url", f"s3://{BUCKET}", "--auth-token-file", secret["auth_token"])
    specs: list[ContainerSpec] = []  # the services; the store goes first, below
    stage_targets: dict[str, str] = {}
    for stage in STAGE_SERVICES:
        stage_gpus = gpus.get(stage, ())
        # One container per listed GPU for fit (the workers share the load); one otherwise.
        placements = [(g,) for g in stage_gpus] if stage == "fit" and stage_gpus else [stage_gpus]
        targets = []
        for index, gpu_ids in enumerate(placements):
            port = command.ports[stage] + index
            name = f"{settings.name}-{stage}" + (f"-{index}" if len(placements) > 1 else "")
            extra = ("--max-concurrent-jobs", "1") if stage == "fit" else ()
            specs.append(
                ContainerSpec(
                    name=name,
                    service=stage,
                    image=image_name(settings, stage, bool(gpu_ids)),
                    port=port,
                    command=("--host", "127.0.0.1", "--port", str(port), *server_flags, *extra),
                    environment=(("GFLOW_PORT", str(port)), *store_env, *user_env),
                    gpu_ids=gpu_ids,
                    weights_dir=weights_dir if stage in WEIGHTS_STAGES else "",
                )
            )
            targets.append(f"127.0.0.1:{port}")
        stage_targets[stage] = grpc_target(targets)
    port = command.ports["pipeline"]
    remotes = [(f"--remote.{s}", stage_targets[s]) for s in STAGE_SERVICES]
    specs.append(
        ContainerSpec(
            name=f"{settings.name}-pipeline",
            service="pipeline",
            image=image_name(settings, "pipeline", on_gpu=False),
            port=port,
            command=(
                "--server.host",
                "127.0.0.1",
                "--server.port",
                str(port),
                *[
                    f.replace("--", "--server.", 1) if f.startswith("--") else f
                    for f in server_flags
                ],
                *[part for pair in remotes for part in pair],
                "--remote.auth-token-file",
                secret["auth_token"],
            ),
            environment=(("GFLOW_PORT", str(port)), *store_env, *user_env),
        )
    )
    store = ContainerSpec(
        name=f"{settings.name}-store",
        service="store",
        image=f"{settings.registry}gflow-store:{settings.tag}",
        port=command.s3_port,
        command=(
            "--port",
            str(command.s3_port),
            "--data",
            STORE_DATA_IN_CONTAINER,
            "--access-key-file",
            secret["s3_access_key"],
            "--secret-key-file",
            secret["s3_secret_key"],
            # The services start after the store, on the same host network.
            "--keep-free",
            *[str(spec.port) for spec in specs],
        ),
        environment=(),
    )
    specs.insert(0, store)
    ports = [s.port for s in specs]
    clashes = sorted({p for p in ports if ports.count(p) > 1})
    if clashes:
        raise InvalidArgumentError(
            "--ports",
            f"port {clashes[0]} is planned twice (fit workers take --ports.fit, fit+1, ...): "
            "choose other --ports or --s3-port",
        )
    return specs


def volume_name(settings: LabSettings) -> str:
    return f"{settings.name}-store"


def run_kwargs(spec: ContainerSpec, settings: LabSettings, digest: str) -> dict[str, Any]:
    """Arguments of `docker.containers.run` for `spec`: host network, secrets read-only, the
    store's data in its volume, the weights folder read-only, one NVIDIA device request for the
    container's GPUs."""
    secrets_dir = settings.dir.resolve() / "secrets"
    mounts = [
        Mount(f"{SECRETS_IN_CONTAINER}/{name}", str(secrets_dir / name), "bind", read_only=True)
        for name in SECRET_FILES
    ]
    if spec.service == "store":
        mounts.append(Mount(STORE_DATA_IN_CONTAINER, volume_name(settings), "volume"))
    if spec.weights_dir:
        mounts.append(Mount(WEIGHTS_IN_CONTAINER, spec.weights_dir, "bind", read_only=True))
    device_requests = (
        [DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])]
        if spec.gpu_ids
        else []
    )
    return {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "detach": True,
        "network_mode": "host",
        "environment": dict(spec.environment),
        "mounts": mounts,
        "device_requests": device_requests,
        "healthcheck": {"interval": HEALTH_INTERVAL_NS},
        "labels": {
            LAB_LABEL: settings.name,
            SERVICE_LABEL: spec.service,
            GPUS_LABEL: ",".join(spec.gpu_ids),
            SPEC_LABEL: digest,
        },
    }


def endpoints(specs: list[ContainerSpec], settings: LabSettings) -> dict[str, Any]:
    """The endpoints file's content, in the layout `gflow serve` writes."""
    secrets_dir = settings.dir.resolve() / "secrets"
    targets: dict[str, list[str]] = {}
    for spec in specs:
        targets.setdefault(spec.service, []).append(f"127.0.0.1:{spec.port}")

    def target(service: str) -> str:
        return grpc_target(targets[service])

    return {
        "remote": {s: target(s) for s in STAGE_SERVICES}
        | {"auth_token_file": str(secrets_dir / "auth_token")},
        "pipeline": target("pipeline"),
        "store": {
            "url": f"s3://{BUCKET}",
            "endpoint": target("store"),
            "access_key_file": str(secrets_dir / "s3_access_key"),
            "secret_key_file": str(secrets_dir / "s3_secret_key"),
        },
    }


def write_secrets(settings: LabSettings) -> None:
    """Token and S3 keys, made once and kept: the folder is private, the files are readable by
    the containers' user (uid 10001), which sees only the files mounted into it."""
    folder = settings.dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name in SECRET_FILES:
        path = folder / name
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.write_text(secrets.token_urlsafe(24))
            temporary.chmod(0o644)
            temporary.rename(path)


def connect() -> docker.DockerClient:
    """A client of the Docker engine (DOCKER_HOST, else the local socket), checked to answer."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise FailedPreconditionError(
            f"cannot reach the Docker engine at {where} ({exc}): start it (as root: "
            "`dockerd &` or `systemctl start docker`) or point DOCKER_HOST at a running one"
        ) from exc
    return client


def _image_id(client: docker.DockerClient, spec: ContainerSpec) -> str:
    try:
        return client.images.get(spec.image).id
    except docker.errors.ImageNotFound as exc:
        folder = "deploy/lab" if spec.service == "store" else "deploy/docker"
        raise FailedPreconditionError(
            f"image {spec.image} (for the {spec.service} container) is missing: build it with "
            f"deploy/lab/build-images.sh (CPU images, no registry needed) or `docker build -f "
            f"{folder}/{spec.service}.Dockerfile -t {spec.image} .` from the repository root, "
            "or set --registry/--tag to where yours are"
        ) from exc


def _lab_containers(client: docker.DockerClient, settings: LabSettings) -> list:
    found = client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={settings.name}"})
    order = {service: i for i, service in enumerate(START_ORDER)}
    return sorted(found, key=lambda c: (order.get(c.labels.get(SERVICE_LABEL), 0), c.name))


def _stop(container, drain_s: int) -> None:
    """SIGTERM (the servers drain their in-flight calls), SIGKILL after drain_s; then remove."""
    log.info("stopping %s", container.name)
    container.stop(timeout=drain_s)
    container.remove()


def _wait_healthy(containers: list, deadline: float) -> None:
    waiting = list(containers)
    while waiting:
        for container in list(waiting):
            container.reload()
            state = container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                tail = container.logs(tail=30).decode(errors="replace")
                raise UnavailableError(
                    f"container {container.name} exited with status {state['ExitCode']}; "
                    f"its last log lines:\n{tail}"
                )
            if state.get("Health", {}).get("Status") == "healthy":
                log.info("%s is healthy", container.name)
                waiting.remove(container)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(c.name for c in waiting)
            raise UnavailableError(
                f"not healthy in time: {names}; see `gflow lab logs SERVICE`, or raise "
                "--start-timeout-s"
            )
        if waiting:
            time.sleep(0.5)


def lab_up(command: LabUpCommand) -> Path:
    """Start what is missing or changed, wait for health, write the endpoints file."""
    settings = command.lab
    specs = plan_lab(command)
    client = connect()
    digests = {s.name: s.digest(_image_id(client, s)) for s in specs}
    write_secrets(settings)
    try:
        client.volumes.get(volume_name(settings))
    except docker.errors.NotFound:
        client.volumes.create(volume_name(settings), labels={LAB_LABEL: settings.name})
    existing = {c.name: c for c in _lab_containers(client, settings)}
    planned = {s.name for s in specs}
    for name, container in existing.items():
        if name not in planned:  # e.g. fewer fit workers than last time
            _stop(container, DRAIN_S)
    deadline = time.monotonic() + command.start_timeout_s
    for group in (["store"], STAGE_SERVICES, ["pipeline"]):
        started = []
        for spec in (s for s in specs if s.service in group):
            current = existing.get(spec.name)
            if current is not None:
                current.reload()
                unchanged = current.labels.get(SPEC_LABEL) == digests[spec.name]
                if unchanged and current.status == "running":
                    log.info("%s is up to date", spec.name)
                    started.append(current)
                    continue
                _stop(current, DRAIN_S)
            log.info("starting %s (%s, GPUs: %s)", spec.name, spec.image, spec.gpu_ids or "none")
            started.append(client.containers.run(**run_kwargs(spec, settings, digests[spec.name])))
        _wait_healthy(started, deadline)
    endpoints_file = settings.dir / "endpoints.yaml"
    temporary = endpoints_file.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(endpoints(specs, settings), sort_keys=False))
    temporary.rename(endpoints_file)
    return endpoints_file


def lab_status(command: LabStatusCommand) -> list[dict[str, str]]:
    """One row per container of the lab, in start order."""
    rows = []
    for container in _lab_containers(connect(), command.lab):
        state = container.attrs["State"]
        rows.append(
            {
                "container": container.name,
                "service": container.labels.get(SERVICE_LABEL, ""),
                "state": state["Status"],
                "health": state.get("Health", {}).get("Status", "none"),
                "gpus": container.labels.get(GPUS_LABEL) or "cpu",
                "image": container.attrs["Config"]["Image"],
            }
        )
    return rows


def lab_logs(command: LabLogsCommand) -> str:
    containers = [
        c
        for c in _lab_containers(connect(), command.lab)
        if c.labels.get(SERVICE_LABEL) == command.service
    ]
    if not containers:
        raise InvalidArgumentError(
            "service",
            f"no {command.service!r} container in lab {command.lab.name!r}: services are "
            f"{', '.join(START_ORDER)}; `gflow lab status` lists what runs",
        )
    return "\n".join(
        f"==> {c.name} <==\n" + c.logs(tail=command.tail).decode(errors="replace")
        for c in containers
    )


def lab_down(command: LabDownCommand) -> int:
    """Stop and remove the lab's containers (pipeline first, store last); returns how many."""
    settings = command.lab
    client = connect()
    containers = _lab_containers(client, settings)
    for container in reversed(containers):
        _stop(container, command.drain_s)
    if command.remove_store:
        try:
            client.volumes.get(volume_name(settings)).remove()
            log.info("removed the store's volume %s", volume_name(settings))
        except docker.errors.NotFound:
            pass
    (settings.dir / "endpoints.yaml").unlink(missing_ok=True)
    return len(containers)


def status_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "no containers"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = [[c.upper() for c in columns], *([r[c] for c in columns] for r in rows)]
    return "\n".join(
        "  ".join(cell.ljust(widths[c]) for c, cell in zip(columns, line, strict=True)).rstrip()
        for line in lines
    )


def run_lab(command: LabCommand) -> Path | str:
    """`gflow lab ACTION`: the endpoints file after `up`, text for the others."""
    action = command.action
    if isinstance(action, LabUpCommand):
        return lab_up(action)
    if isinstance(action, LabStatusCommand):
        return status_table(lab_status(action))
    if isinstance(action, LabLogsCommand):
        return lab_logs(action)
    return f"removed {lab_down(action)} containers of lab {action.lab.name!r}"
