"""`gflow lab` for real: the store and every service as containers of the locally built CPU
images (`make test-containers` builds them, starts dockerd and sets GFLOW_TEST_CONTAINERS=1).

The clip of the services end-to-end test runs through the containers with `gflow run
--remote-config` on the endpoints file `gflow lab up` wrote, and every artifact, figure and key
must equal the embedded run's (the comparison of tests/integration/test_e2e_services.py, which
runs both on one thread; the containers get OMP_NUM_THREADS=1 and OPENCV_FOR_THREADS_NUM=1).
Then `gflow lab down --remove-store` must leave no container, volume or listener behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from services.common.artifacts import Artifacts
from services.common.runtime import DEFAULT_PORTS
from services.common.store import S3Settings, S3Store
from services.ops.lab import (
    LAB_LABEL,
    LabDownCommand,
    LabLogsCommand,
    LabSettings,
    LabStatusCommand,
    LabUpCommand,
    connect,
    lab_down,
    lab_logs,
    lab_status,
    lab_up,
    volume_name,
)
from services.ops.seaweedfs import free_ports
from services.ops.serve import BUCKET
from services.pipeline.cli import RunCommand, run_command
from services.pipeline.export import load_run
from tests.integration.test_e2e_services import (  # noqa: F401 - fixtures used by name
    Run,
    clip,
    embedded,
    one_thread,
)
from tests.integration.test_e2e_services import (
    test_services_over_grpc_give_the_embedded_artifacts as assert_same_as_embedded,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("GFLOW_TEST_CONTAINERS") != "1",
    reason="needs dockerd and the locally built images: run `make test-containers`",
)

log = logging.getLogger(__name__)
ONE_THREAD_ENV = ["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "OPENCV_FOR_THREADS_NUM=1"]
# This process's OpenBLAS settings go along (e.g. OPENBLAS_CORETYPE=Haswell where the machine
# sets it): with another kernel set (SkylakeX, what OpenBLAS picks in a container on the same
# CPU) SVD and least squares differ in the last bits, which the depth stage's pose polish carries
# to 1e-5 in the depth maps.
SAME_BLAS_ENV = [
    f"{name}={value}" for name, value in os.environ.items() if name.startswith("OPENBLAS_")
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> LabSettings:
    return LabSettings(dir=tmp_path_factory.mktemp("lab"), name=f"gflow-test-{os.getpid()}")


@pytest.fixture(scope="module")
def up(settings: LabSettings):
    """`gflow lab up` on free ports; `down` at the end whatever happened."""
    s3_port, *service_ports = free_ports(len(DEFAULT_PORTS) + 1)
    command = LabUpCommand(
        env=ONE_THREAD_ENV + SAME_BLAS_ENV,
        s3_port=s3_port,
        ports=dict(zip(DEFAULT_PORTS, service_ports, strict=True)),
        lab=settings,
    )
    started = time.monotonic()
    endpoints_file = lab_up(command)
    log.info("gflow lab up took %.1f s", time.monotonic() - started)
    yield command, endpoints_file
    lab_down(LabDownCommand(remove_store=True, lab=settings))


@pytest.fixture(scope="module")
def remote(clip, up, tmp_path_factory) -> Run:  # noqa: F811 - the imported fixture
    """`gflow run CLIP --remote-config <lab>/endpoints.yaml --fit-preset test`."""
    command, endpoints_file = up
    out = tmp_path_factory.mktemp("remote")
    started = time.monotonic()
    run_command(RunCommand(video=clip, out=out, remote_config=endpoints_file, fit_preset="test"))
    log.info("the run through the containers took %.1f s", time.monotonic() - started)
    secrets_dir = command.lab.dir / "secrets"
    settings = S3Settings(
        endpoint=f"127.0.0.1:{command.s3_port}",
        access_key=(secrets_dir / "s3_access_key").read_text(),
        secret_key=(secrets_dir / "s3_secret_key").read_text(),
    )
    return Run(Artifacts(S3Store(BUCKET, settings)), load_run(out)[1])


def test_every_container_is_healthy_and_a_second_up_keeps_them(up, settings: LabSettings):
    command, _ = up
    rows = lab_status(LabStatusCommand(lab=settings))
    assert [r["service"] for r in rows] == ["store", "depth", "flow", "segment", "fit", "pipeline"]
    assert {(r["state"], r["health"], r["gpus"]) for r in rows} == {("running", "healthy", "cpu")}
    ids = {c.name: c.id for c in connect().containers.list(filters={"label": LAB_LABEL})}
    lab_up(command)
    again = {c.name: c.id for c in connect().containers.list(filters={"label": LAB_LABEL})}
    assert again == ids
    assert "S3 store serving on 127.0.0.1" in lab_logs(LabLogsCommand("store", lab=settings))


def test_containers_give_the_embedded_artifacts(embedded: Run, remote: Run):  # noqa: F811
    assert_same_as_embedded(embedded, remote)


def test_down_leaves_nothing_running(up, remote, settings: LabSettings):
    command, endpoints_file = up
    assert lab_down(LabDownCommand(remove_store=True, lab=settings)) == 6
    client = connect()
    assert client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={settings.name}"}) == []
    assert [v.name for v in client.volumes.list()].count(volume_name(settings)) == 0
    assert not endpoints_file.exists()
    for port in [command.s3_port, *command.ports.values()]:
        with socket.socket() as sock:
            # SO_REUSEADDR: connections the servers closed may linger in TIME_WAIT; the bind
            # still fails while anything listens on the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
