"""What the deploy tests share: paths, the services the code defines, and the servers' flags.

The deploy files must name services, ports and flags that exist in the code, so every check
here reads them from the code itself (DEFAULT_PORTS, the servers' tyro configurations).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from services.common import runtime

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
CHART = DEPLOY / "helm" / "gflow"
STAGES = ("depth", "flow", "segment", "fit")
SERVICES = (*STAGES, "pipeline")
GPU_STAGES = ("depth", "flow", "fit")  # segment is numpy/OpenCV; pipeline runs no model


def server_module(service: str) -> str:
    return f"services.{service}.server"


def server_module_exists(service: str) -> bool:
    """Whether `python -m services.<service>.server` names a module of the code."""
    return importlib.util.find_spec(server_module(service)) is not None


def parse_server_flags(service: str, args: list[str]) -> Any:
    """The configuration the service's server builds from `args`, through its own tyro CLI.

    Stage servers parse `runtime.ServerConfig`; the pipeline server parses
    `PipelineServerConfig` (listening flags under --server.*, stage addresses under --remote.*).
    An unknown flag makes tyro exit, which fails the calling test.
    """
    if service == "pipeline":
        from services.pipeline.server import PipelineServerConfig

        return tyro.cli(PipelineServerConfig, args=args)
    default = runtime.ServerConfig(port=runtime.DEFAULT_PORTS[service])
    return tyro.cli(runtime.ServerConfig, args=args, default=default)


def listening(service: str, config: Any) -> runtime.ServerConfig:
    """The ServerConfig part of a parsed server configuration."""
    return config.server if service == "pipeline" else config


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `$$` substitution, applied to every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        return environ.get(name) or (default if default is not None else "")

    return _VARIABLE.sub(substitute, value)


@dataclass
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    text: str  # the rest, continuation lines joined


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order; comment lines dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, text = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), text.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued instruction"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def assignments(instructions: list[Instruction], keyword: str) -> dict[str, str]:
    """NAME=value pairs of every ARG or ENV instruction (an ARG without a default maps to '')."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == keyword:
            for word in shlex.split(ins.text):
                name, _, value = word.partition("=")
                values.setdefault(name, value) if keyword == "ARG" else values.update({name: value})
    return values


def exec_form(text: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    start = text.index("[")
    words = shlex.split(text[start:].strip("[]").replace(",", " "))
    return words


def dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"
