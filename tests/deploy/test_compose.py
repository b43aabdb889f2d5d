"""deploy/compose.yaml: valid Compose, and every service, port and flag it names is the code's."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from services.common.runtime import DEFAULT_PORTS
from tests.deploy.support import (
    DEPLOY,
    GPU_STAGES,
    ROOT,
    SERVICES,
    STAGES,
    interpolate,
    listening,
    parse_server_flags,
    server_module,
    server_module_exists,
)

COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_CPU = DEPLOY / "compose.cpu.yaml"
COMPOSE_FIT_HOST = DEPLOY / "compose.fit-host.yaml"


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!reset` tag (the value is dropped from the merged file)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


@pytest.fixture(scope="module")
def compose() -> dict:
    """compose.yaml as Compose sees it with no variables set (every default applies)."""
    return interpolate(load(COMPOSE), {})


def compose_spec_validator() -> jsonschema.protocols.Validator:
    """The compose-spec JSON schema that check-jsonschema ships (no download)."""
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which ships the compose-spec schema) is not installed")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU, COMPOSE_FIT_HOST], ids=lambda p: p.name)
def test_compose_files_match_the_compose_spec(path):
    validator = compose_spec_validator()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(load(path))]
    assert errors == []
    # The schema is strict: a misspelt key is caught (so a clean result above means something).
    broken = load(path)
    broken["services"]["fit"]["deploy_typo"] = {}
    assert any("deploy_typo" in e.message for e in validator.iter_errors(broken))


def test_services_are_the_codes_servers_built_from_their_dockerfiles(compose):
    gflow = {name: s for name, s in compose["services"].items() if "build" in s}
    assert sorted(gflow) == sorted(SERVICES)
    for name, service in gflow.items():
        assert server_module_exists(name), f"{server_module(name)} is not a module of the code"
        dockerfile = ROOT / service["build"]["dockerfile"]
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        assert dockerfile == ROOT / "deploy" / "docker" / f"{name}.Dockerfile"
        assert dockerfile.is_file()


@pytest.mark.parametrize("name", SERVICES)
def test_commands_parse_as_the_servers_flags_on_the_default_ports(compose, name):
    service = compose["services"][name]
    config = listening(name, parse_server_flags(name, service["command"]))
    port = DEFAULT_PORTS[name]
    assert (config.host, config.port) == ("0.0.0.0", port)
    assert config.store.url == "s3://gflow"
    assert config.auth_token_file == Path("/run/secrets/auth_token")
    assert "auth_token" in service["secrets"]
    # Probed and published on the port the server listens on.
    assert service["healthcheck"]["test"] == [
        "CMD",
        "python",
        "/opt/gflow/healthcheck.py",
        "--port",
        str(port),
    ]
    published = [p.rsplit(":", 1)[1] for p in service.get("ports", [])]
    assert published in ([str(port)], []), published
    assert service["environment"]["GFLOW_S3_ENDPOINT"] == "minio:9000"
    assert service["environment"]["GFLOW_S3_ACCESS_KEY_FILE"] == "/run/secrets/s3_access_key"
    assert service["environment"]["GFLOW_S3_SECRET_KEY_FILE"] == "/run/secrets/s3_secret_key"


def test_pipeline_reaches_each_stage_service_at_its_port(compose):
    remote = parse_server_flags("pipeline", compose["services"]["pipeline"]["command"]).remote
    for stage in STAGES:
        target = getattr(remote, stage)
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        assert host == stage and host in compose["services"]
        assert int(port) == DEFAULT_PORTS[stage]
    # Fit replicas are reached through one name that resolves to all of them, balanced by the
    # client (round_robin over the DNS answer), so `--scale fit=N` needs no other change.
    assert remote.fit == f"dns:///fit:{DEFAULT_PORTS['fit']}"
    assert remote.auth_token_file == Path("/run/secrets/auth_token")


def test_fit_can_be_scaled(compose):
    fit = compose["services"]["fit"]
    # A fixed container name or host port would make a second replica fail to start.
    assert "container_name" not in fit
    assert "ports" not in fit
    assert fit["expose"] == [str(DEFAULT_PORTS["fit"])]
    config = parse_server_flags("fit", fit["command"])
    assert config.max_concurrent_jobs == 1


def test_stage_addresses_and_gpus_follow_the_environment():
    environ = {
        "GFLOW_DEPTH_GPU": "2",
        "GFLOW_FLOW_GPU": "1",
        "GFLOW_FIT_GPU": "3",
        "GFLOW_DEPTH_ADDR": "big-gpu-box:50051",
        "GFLOW_BUCKET": "lab-runs",
    }
    services = interpolate(load(COMPOSE), environ)["services"]
    for stage, gpu in (("depth", "2"), ("flow", "1"), ("fit", "3")):
        (device,) = services[stage]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}
    for name in ("segment", "pipeline"):
        assert "deploy" not in services[name]
    pipeline = parse_server_flags("pipeline", services["pipeline"]["command"])
    assert pipeline.remote.depth == "big-gpu-box:50051"
    assert pipeline.server.store.url == "s3://lab-runs"


def test_secrets_are_declared_and_start_order_is_health_gated(compose):
    declared = compose["secrets"]
    assert {s["file"] for s in declared.values()} == {
        "./secrets/auth_token",
        "./secrets/s3_access_key",
        "./secrets/s3_secret_key",
    }
    services = compose["services"]
    for name, service in services.items():
        assert set(service.get("secrets", [])) <= set(declared), name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for stage in STAGES:
        gate = services[stage]["depends_on"]["minio-init"]
        assert gate == {"condition": "service_completed_successfully"}
    pipeline_gates = services["pipeline"]["depends_on"]
    assert {s: pipeline_gates[s]["condition"] for s in STAGES} == dict.fromkeys(
        STAGES, "service_healthy"
    )
    # The bucket the services use is the one the init step makes.
    assert "gflow/gflow" in services["minio-init"]["command"][0]


def test_gpu_services_mount_weights_read_only_and_cpu_override_drops_gpus(compose):
    for stage in GPU_STAGES:
        assert "./weights:/weights:ro" in compose["services"][stage]["volumes"]
        assert compose["services"][stage]["build"]["args"] == {"VARIANT": "cuda"}
    cpu = load(COMPOSE_CPU)["services"]
    assert sorted(cpu) == sorted(GPU_STAGES)
    for stage in GPU_STAGES:
        assert cpu[stage]["deploy"] is None  # `!reset`
        assert cpu[stage]["build"]["args"] == {"VARIANT": "cpu"}


def test_fit_host_override_publishes_the_fit_port():
    (port,) = interpolate(load(COMPOSE_FIT_HOST), {})["services"]["fit"]["ports"]
    assert port == f"0.0.0.0:{DEFAULT_PORTS['fit']}:{DEFAULT_PORTS['fit']}"
