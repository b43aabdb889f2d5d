"""deploy/helm/gflow rendered by Helm itself (its Go SDK, through helm-python-sdk), linted, and
checked against the Kubernetes API schemas (kubernetes-validate, offline) and against the code."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from services.common.runtime import DEFAULT_PORTS
from tests.deploy.support import (
    CHART,
    GPU_STAGES,
    SERVICES,
    STAGES,
    listening,
    parse_server_flags,
    server_module,
    server_module_exists,
)

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm's Go SDK in a wheel) is not installed"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (offline Kubernetes schemas) is missing"
)

RELEASE, NAMESPACE = "lab", "vision"
FULLNAME = "lab-gflow"
KUBERNETES_VERSION = "1.30.0"  # the chart needs >= 1.27 (gRPC probes)


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders with `values`, as dicts."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render()


def test_chart_lints_clean():
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    # severity 1 is INFO (e.g. "icon is recommended"); warnings and errors are 2 and up
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "minio": {"enabled": False},
            "store": {"external": {"endpoint": "s3.lab:9000", "existingSecret": "lab-s3"}},
        },
        {"weights": {"volume": {"persistentVolumeClaim": {"claimName": "w", "readOnly": True}}}},
    ],
    ids=["defaults", "external-store", "weights-volume"],
)
def test_rendered_objects_are_valid_kubernetes(values):
    rendered = render(values)
    assert rendered
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_object(objects):
    """The schemas really check (so the clean result above means something)."""
    deployment = dict(by_kind(objects, "Deployment")[f"{FULLNAME}-fit"])
    deployment["spec"] = dict(deployment["spec"], replicaz=2)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_one_deployment_and_two_services_per_server_of_the_code(objects):
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    for name in SERVICES:
        assert server_module_exists(name), f"{server_module(name)} is not a module of the code"
        port = DEFAULT_PORTS[name]
        main = container(deployments[f"{FULLNAME}-{name}"])
        assert main["image"] == f"gflow-{name}:0.1.0"
        assert main["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["grpc"] == {"port": port}  # the standard gRPC health service
        plain, headless = services[f"{FULLNAME}-{name}"], services[f"{FULLNAME}-{name}-headless"]
        for service in (plain, headless):
            assert service["spec"]["ports"][0]["port"] == port
            assert (
                service["spec"]["selector"]
                == deployments[f"{FULLNAME}-{name}"]["spec"]["selector"]["matchLabels"]
            )
        assert headless["spec"]["clusterIP"] == "None"
    assert set(deployments) == {f"{FULLNAME}-{s}" for s in (*SERVICES, "minio")}


@pytest.mark.parametrize("name", SERVICES)
def test_container_args_parse_as_the_servers_flags(objects, name):
    main = container(by_kind(objects, "Deployment")[f"{FULLNAME}-{name}"])
    config = parse_server_flags(name, main["args"])
    server = listening(name, config)
    assert (server.host, server.port) == ("0.0.0.0", DEFAULT_PORTS[name])
    assert server.store.url == "s3://gflow"
    assert server.auth_token_file == Path("/run/secrets/gflow-auth/token")
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts["/run/secrets/gflow-auth"] == "auth"
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["GFLOW_S3_ENDPOINT"] == f"{FULLNAME}-minio.{NAMESPACE}.svc.cluster.local:9000"
    assert env["GFLOW_S3_ACCESS_KEY_FILE"] == "/run/secrets/gflow-s3/access-key"
    assert mounts["/run/secrets/gflow-s3"] == "s3"


def test_pipeline_balances_over_every_replica_of_each_stage(objects):
    services = by_kind(objects, "Service")
    main = container(by_kind(objects, "Deployment")[f"{FULLNAME}-pipeline"])
    remote = parse_server_flags("pipeline", main["args"]).remote
    for stage in STAGES:
        target = getattr(remote, stage)
        assert target.startswith("dns:///"), target  # client-side round_robin over the answer
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        name, namespace, *_ = host.split(".")
        assert services[name]["spec"]["clusterIP"] == "None"  # one DNS record per ready pod
        assert namespace == NAMESPACE and int(port) == DEFAULT_PORTS[stage]
    assert remote.auth_token_file == Path("/run/secrets/gflow-auth/token")


def test_gpus_scheduling_and_drain(objects):
    deployments = by_kind(objects, "Deployment")
    for name in SERVICES:
        spec = deployments[f"{FULLNAME}-{name}"]["spec"]["template"]["spec"]
        limits = container(deployments[f"{FULLNAME}-{name}"])["resources"].get("limits", {})
        drain = parse_server_flags(name, container(deployments[f"{FULLNAME}-{name}"])["args"])
        assert spec["terminationGracePeriodSeconds"] > listening(name, drain).drain_seconds
        if name in GPU_STAGES:
            assert limits["nvidia.com/gpu"] == 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ]
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in spec
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_fit_workers_autoscale(objects):
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-fit",
    }
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
    # The HPA owns the replica count; the other stages keep theirs.
    deployments = by_kind(objects, "Deployment")
    assert "replicas" not in deployments[f"{FULLNAME}-fit"]["spec"]
    assert deployments[f"{FULLNAME}-depth"]["spec"]["replicas"] == 1


def test_generated_secrets_and_bundled_minio(objects):
    secrets = by_kind(objects, "Secret")
    token = base64.b64decode(secrets[f"{FULLNAME}-auth"]["data"]["token"]).decode()
    assert len(token) == 48 and token.isalnum()
    keys = {k: base64.b64decode(v).decode() for k, v in secrets[f"{FULLNAME}-s3"]["data"].items()}
    assert set(keys) == {"access-key", "secret-key"} and len(keys["secret-key"]) == 40
    minio = container(by_kind(objects, "Deployment")[f"{FULLNAME}-minio"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"]}
    assert refs["MINIO_ROOT_USER"] == {"name": f"{FULLNAME}-s3", "key": "access-key"}
    (job,) = by_kind(objects, "Job").values()
    assert "mc mb --ignore-existing gflow/gflow" in container_of_job(job)["args"][0]


def container_of_job(job: dict) -> dict:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def test_external_store_replaces_minio():
    objects = render(
        {
            "minio": {"enabled": False},
            "auth": {"existingSecret": "lab-token"},
            "store": {"external": {"endpoint": "s3.lab:9000", "existingSecret": "lab-s3"}},
        }
    )
    assert not [o for o in objects if "minio" in o["metadata"]["name"]]
    assert by_kind(objects, "Secret") == {}  # both come from the given Secrets
    for deployment in by_kind(objects, "Deployment").values():
        env = {e["name"]: e["value"] for e in container(deployment)["env"]}
        assert (env["GFLOW_S3_ENDPOINT"], env["GFLOW_S3_SECURE"]) == ("s3.lab:9000", "1")
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["s3"]["secret"]["secretName"] == "lab-s3"
        assert volumes["auth"]["secret"]["secretName"] == "lab-token"


def test_external_store_without_an_endpoint_is_refused():
    with pytest.raises(Exception, match="store.external.endpoint"):
        render({"minio": {"enabled": False}, "store": {"external": {"existingSecret": "s"}}})


def test_weights_volume_is_mounted_read_only_where_weights_are_used():
    volume = {"persistentVolumeClaim": {"claimName": "gflow-weights", "readOnly": True}}
    deployments = by_kind(render({"weights": {"volume": volume}}), "Deployment")
    for name in SERVICES:
        deployment = deployments[f"{FULLNAME}-{name}"]
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        if name in ("depth", "flow"):
            assert mounts["/weights"]["readOnly"] is True
            assert volumes["weights"]["persistentVolumeClaim"] == volume["persistentVolumeClaim"]
        else:
            assert "/weights" not in mounts and "weights" not in volumes
