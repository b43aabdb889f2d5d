"""What a service tells about itself: backends, device, free GPU memory, versions."""

from __future__ import annotations

import importlib.metadata
import platform

from gflow.v1 import common_pb2

_VERSIONED = (
    "gflow-services",
    "torch",
    "grpcio",
    "numpy",
    "scipy",
    "opencv-python-headless",
    "gsplat",
)


def device_summary() -> tuple[str, int, int]:
    """("cpu" or "cuda:0 (name)", free GPU bytes, total GPU bytes)."""
    try:
        import torch
    except ImportError:
        return "cpu", 0, 0
    if not torch.cuda.is_available():
        return "cpu", 0, 0
    free, total = torch.cuda.mem_get_info()
    return f"cuda:0 ({torch.cuda.get_device_name(0)})", int(free), int(total)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def describe_response(
    service: str, backends: list[common_pb2.BackendInfo], max_concurrent_jobs: int
) -> common_pb2.DescribeResponse:
    device, free, total = device_summary()
    return common_pb2.DescribeResponse(
        service=service,
        backends=backends,
        device=device,
        gpu_free_bytes=free,
        gpu_total_bytes=total,
        versions=package_versions(),
        max_concurrent_jobs=max_concurrent_jobs,
    )


def backend_info(name: str, available: bool, detail: str = "", needs_weights: bool = False):
    """A BackendInfo message from an engine's own description of a backend."""
    return common_pb2.BackendInfo(
        name=name, available=available, detail=detail, needs_weights=needs_weights
    )
