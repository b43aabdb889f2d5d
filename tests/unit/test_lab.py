"""`gflow lab` planning, without a Docker engine: GPU assignment, container specs (their flags
parsed by the servers' own CLIs), device requests, the endpoints file as `gflow run` reads it,
and the error when no engine answers. The containers themselves run in
tests/containers/test_lab_containers.py (`make test-containers`)."""

from __future__ import annotations

import dataclasses
import stat

import pytest
import tyro
import yaml
from docker.types import DeviceRequest

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.runtime import DEFAULT_PORTS
from services.ops.lab import (
    LabDownCommand,
    LabSettings,
    LabStatusCommand,
    LabUpCommand,
    connect,
    endpoints,
    lab_down,
    lab_status,
    plan_lab,
    run_kwargs,
    write_secrets,
)
from services.ops.lab_store import StoreServeCommand
from services.ops.serve import parse_gpu_assignment
from services.pipeline.cli import RunCommand, _store_and_remote
from tests.deploy.support import listening, parse_server_flags


def _by_name(command: LabUpCommand) -> dict[str, object]:
    return {spec.name: spec for spec in plan_lab(command)}


def test_gpu_assignment_is_parsed_per_stage():
    assert parse_gpu_assignment(["depth=0", "flow=1", "segment=1", "fit=2,3"]) == {
        "depth": ("0",),
        "flow": ("1",),
        "segment": ("1",),
        "fit": ("2", "3"),
    }
    assert parse_gpu_assignment([]) == {}


@pytest.mark.parametrize(
    ("items", "names"),
    [
        (["depth"], "STAGE=ID"),
        (["pipeline=0"], "'pipeline' is not a stage"),
        (["fit=0", "fit=1"], "names fit twice"),
        (["flow=a"], "nvidia-smi -L"),
        (["flow="], "nvidia-smi -L"),
    ],
)
def test_bad_gpu_assignment_is_refused_naming_the_fix(items, names):
    with pytest.raises(InvalidArgumentError, match=names):
        parse_gpu_assignment(items)


def test_without_gpus_every_stage_runs_one_container_on_its_cpu_image():
    specs = plan_lab(LabUpCommand(lab=LabSettings(tag="t")))
    assert [(s.name, s.service, s.image, s.port, s.gpu_ids) for s in specs] == [
        ("gflow-lab-store", "store", "gflow-store:t", 8333, ()),
        ("gflow-lab-depth", "depth", "gflow-depth:t-cpu", 50051, ()),
        ("gflow-lab-flow", "flow", "gflow-flow:t-cpu", 50052, ()),
        ("gflow-lab-segment", "segment", "gflow-segment:t", 50053, ()),
        ("gflow-lab-fit", "fit", "gflow-fit:t-cpu", 50054, ()),
        ("gflow-lab-pipeline", "pipeline", "gflow-pipeline:t", 50050, ()),
    ]


def test_gpus_pick_the_gpu_image_and_give_one_fit_container_per_gpu():
    command = LabUpCommand(
        gpus=["depth=0", "flow=1", "segment=1", "fit=2,3"], lab=LabSettings(registry="reg:5000/")
    )
    specs = _by_name(command)
    placed = {name: (s.image, s.port, s.gpu_ids) for name, s in specs.items()}
    assert placed == {
        "gflow-lab-store": ("reg:5000/gflow-store:latest", 8333, ()),
        "gflow-lab-depth": ("reg:5000/gflow-depth:latest", 50051, ("0",)),
        "gflow-lab-flow": ("reg:5000/gflow-flow:latest", 50052, ("1",)),
        "gflow-lab-segment": ("reg:5000/gflow-segment:latest", 50053, ("1",)),
        "gflow-lab-fit-0": ("reg:5000/gflow-fit:latest", 50054, ("2",)),
        "gflow-lab-fit-1": ("reg:5000/gflow-fit:latest", 50055, ("3",)),
        "gflow-lab-pipeline": ("reg:5000/gflow-pipeline:latest", 50050, ()),
    }
    settings = command.lab
    fit = run_kwargs(specs["gflow-lab-fit-1"], settings, digest="d")
    assert fit["device_requests"] == [
        DeviceRequest(driver="nvidia", device_ids=["3"], capabilities=[["gpu"]])
    ]
    assert run_kwargs(specs["gflow-lab-pipeline"], settings, "d")["device_requests"] == []


def test_containers_are_servers_of_the_code_on_loopback_with_the_store_and_secrets(tmp_path):
    command = LabUpCommand(gpus=["fit=0,1"], env=["OMP_NUM_THREADS=1"])
    command.lab.dir = tmp_path / "lab"
    specs = _by_name(command)
    for spec in specs.values():
        kwargs = run_kwargs(spec, command.lab, digest="abc")
        assert kwargs["network_mode"] == "host" and kwargs["name"] == spec.name
        assert kwargs["labels"] == {
            "gflow.lab": "gflow-lab",
            "gflow.lab.service": spec.service,
            "gflow.lab.gpus": ",".join(spec.gpu_ids),
            "gflow.lab.spec": "abc",
        }
        secrets_dir = (tmp_path / "lab" / "secrets").resolve()
        mounts = {m["Target"]: m for m in kwargs["mounts"]}
        for name in ("auth_token", "s3_access_key", "s3_secret_key"):
            mount = mounts[f"/run/gflow/{name}"]
            assert (mount["Source"], mount["Type"], mount["ReadOnly"]) == (
                str(secrets_dir / name),
                "bind",
                True,
            )
        if spec.service == "store":
            assert mounts["/data"]["Source"] == "gflow-lab-store"
            store = tyro.cli(StoreServeCommand, args=list(spec.command))
            assert (store.port, str(store.data)) == (8333, "/data")
            assert str(store.secret_key_file) == "/run/gflow/s3_secret_key"
            # weed's other listeners leave every service's port alone (they bind after it)
            others = sorted(s.port for s in specs.values() if s.service != "store")
            assert sorted(store.keep_free) == others and len(others) == 6
            continue
        assert "/data" not in mounts
        config = parse_server_flags(spec.service, list(spec.command))
        server = listening(spec.service, config)
        assert (server.host, server.port) == ("127.0.0.1", spec.port)
        assert server.store.url == "s3://gflow"
        assert str(server.auth_token_file) == "/run/gflow/auth_token"
        env = kwargs["environment"]
        assert env["GFLOW_PORT"] == str(spec.port)  # the images' health check reads it
        assert env["GFLOW_S3_ENDPOINT"] == "127.0.0.1:8333"
        assert env["GFLOW_S3_SECRET_KEY_FILE"] == "/run/gflow/s3_secret_key"
        assert env["OMP_NUM_THREADS"] == "1"
    pipeline = parse_server_flags("pipeline", list(specs["gflow-lab-pipeline"].command))
    assert (pipeline.remote.depth, pipeline.remote.segment) == (
        "127.0.0.1:50051",
        "127.0.0.1:50053",
    )
    assert pipeline.remote.fit == "ipv4:127.0.0.1:50054,127.0.0.1:50055"
    fit = parse_server_flags("fit", list(specs["gflow-lab-fit-0"].command))
    assert fit.max_concurrent_jobs == 1


def test_weights_folder_is_mounted_read_only_in_depth_and_flow_only(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    command = LabUpCommand(weights=weights)
    command.lab.dir = tmp_path / "lab"
    for spec in plan_lab(command):
        mounts = {m["Target"]: m for m in run_kwargs(spec, command.lab, digest="abc")["mounts"]}
        if spec.service in ("depth", "flow"):
            mount = mounts["/weights"]
            assert (mount["Source"], mount["Type"], mount["ReadOnly"]) == (
                str(weights.resolve()),
                "bind",
                True,
            )
        else:
            assert "/weights" not in mounts
    no_weights = {s.name: s for s in plan_lab(LabUpCommand())}
    assert all(spec.weights_dir == "" for spec in no_weights.values())
    with pytest.raises(InvalidArgumentError, match="--weights.*not a folder"):
        plan_lab(LabUpCommand(weights=tmp_path / "missing"))


def test_endpoints_file_is_what_gflow_run_reads(tmp_path):
    command = LabUpCommand(gpus=["fit=0,1"], s3_port=9100)
    command.lab.dir = tmp_path / "lab"
    write_secrets(command.lab)
    path = tmp_path / "endpoints.yaml"
    path.write_text(yaml.safe_dump(endpoints(plan_lab(command), command.lab)))
    store, remote = _store_and_remote(RunCommand(video=tmp_path / "v.mp4", remote_config=path))
    secrets_dir = (tmp_path / "lab" / "secrets").resolve()
    assert (store.url, store.s3.endpoint) == ("s3://gflow", "127.0.0.1:9100")
    assert store.s3.secret_key == (secrets_dir / "s3_secret_key").read_text()
    assert store.s3.access_key == (secrets_dir / "s3_access_key").read_text()
    assert dataclasses.asdict(remote) | {"auth_token_file": None} == dataclasses.asdict(
        RunCommand(video=path).pipeline.remote
    ) | {
        "depth": "127.0.0.1:50051",
        "flow": "127.0.0.1:50052",
        "segment": "127.0.0.1:50053",
        "fit": "ipv4:127.0.0.1:50054,127.0.0.1:50055",
    }
    assert remote.auth_token_file == secrets_dir / "auth_token"
    assert yaml.safe_load(path.read_text())["pipeline"] == "127.0.0.1:50050"


def test_secrets_are_made_once_private_folder_files_readable_by_the_containers(tmp_path):
    settings = LabSettings(dir=tmp_path / "lab")
    write_secrets(settings)
    folder = tmp_path / "lab" / "secrets"
    first = {p.name: p.read_text() for p in folder.iterdir()}
    assert sorted(first) == ["auth_token", "s3_access_key", "s3_secret_key"]
    assert len(set(first.values())) == 3 and all(len(v) >= 32 for v in first.values())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((folder / n).stat().st_mode) == 0o644 for n in first)
    write_secrets(settings)  # a second `up` keeps them: running containers hold the old ones
    assert {p.name: p.read_text() for p in folder.iterdir()} == first


def test_port_planned_twice_is_refused():
    ports = dict(DEFAULT_PORTS) | {"fit": 50060, "pipeline": 50061}
    with pytest.raises(InvalidArgumentError, match="port 50061 is planned twice"):
        plan_lab(LabUpCommand(gpus=["fit=0,1"], ports=ports))
    with pytest.raises(InvalidArgumentError, match="KEY=VALUE"):
        plan_lab(LabUpCommand(env=["OMP_NUM_THREADS"]))


def test_no_docker_engine_is_a_clear_error(tmp_path, monkeypatch):
    socket = tmp_path / "absent" / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    with pytest.raises(FailedPreconditionError, match="cannot reach the Docker engine") as caught:
        connect()
    assert str(socket) in str(caught.value) and "dockerd" in str(caught.value)
    with pytest.raises(FailedPreconditionError, match="DOCKER_HOST"):
        lab_status(LabStatusCommand())
    with pytest.raises(FailedPreconditionError, match="DOCKER_HOST"):
        lab_down(LabDownCommand())
