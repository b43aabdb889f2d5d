"""Flow backends on CUDA: same flow as on the CPU, and batches that stay inside the memory budget
the engine plans them for (the per-pair estimates were calibrated on the CPU only).

Run: .venv/bin/python -m pytest tests/gpu/test_flow_gpu.py -q -s   (-s prints measured peaks)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.flow.backends import raft, unimatch
from services.flow.engine import FlowConfig, FlowRuntime, compute_flow
from services.flow.memory import CUDA_KIND
from services.synthetic.scene import SceneConfig, make_scene

RAFT_READY, RAFT_DETAIL = raft.availability()
UNIMATCH_READY, UNIMATCH_DETAIL = unimatch.availability()
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (an NVIDIA GPU)")
needs_raft = pytest.mark.skipif(not RAFT_READY, reason=f"raft unavailable: {RAFT_DETAIL}")
needs_unimatch = pytest.mark.skipif(not UNIMATCH_READY, reason=f"needs unimatch: {UNIMATCH_DETAIL}")


@pytest.fixture(scope="module")
def frames_480p_thw3():
    """Seven 854 x 480 frames: 12 directed pairs, more than one budgeted batch holds."""
    return make_scene(SceneConfig(height=480, width=854, n_frames=7)).frames_thw3


@pytest.fixture
def no_tf32():
    """Full float32 convolutions, so that CPU and GPU differ only by summation order."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def _random_raft_weights(model: str, path):
    torch.manual_seed(0)
    torch.save(
        getattr(raft.import_optical_flow(), f"raft_{model}")(weights=None).state_dict(), path
    )
    return path


@needs_raft
def test_raft_on_cuda_gives_the_cpu_flow(tmp_path, no_tf32):
    frames_thw3 = make_scene(SceneConfig(height=60, width=90, n_frames=2)).frames_thw3
    weights = _random_raft_weights("small", tmp_path / "raft_small.pth")
    cfg = dict(backend="raft", raft_weights=weights, raft_iterations=4)
    on_gpu = compute_flow(frames_thw3, FlowConfig(**cfg), FlowRuntime(device="cuda"))
    on_cpu = compute_flow(frames_thw3, FlowConfig(**cfg), FlowRuntime(device="cpu"))
    assert on_gpu.device == "cuda" and on_gpu.memory_kind == CUDA_KIND
    diff = np.abs(on_gpu.pairs[0].flow_fwd_hw2 - on_cpu.pairs[0].flow_fwd_hw2)
    assert diff.mean() < 1e-2 and diff.max() < 0.5


@needs_raft
@pytest.mark.parametrize("model", ["small", "large"])
def test_raft_batches_fit_the_default_6_gb_budget(tmp_path, frames_480p_thw3, model):
    weights = _random_raft_weights(model, tmp_path / f"raft_{model}.pth")
    cfg = FlowConfig(backend="raft", raft_model=model, raft_weights=weights)
    runtime = FlowRuntime(device="cuda")
    result = compute_flow(frames_480p_thw3, cfg, runtime)
    backend = raft.RaftBackend(model, weights, 12, "cuda")
    item = backend.item_bytes(480, 854)
    batch = int(min(12, (runtime.memory_budget_gb * 2**30 - backend.model_bytes) // item))
    estimate = backend.model_bytes + batch * item
    print(
        f"\nraft_{model} 854x480: batch {batch}, peak {result.peak_memory_bytes / 2**20:.0f} MiB, "
        f"estimate {estimate / 2**20:.0f} MiB, {12 / result.seconds:.1f} directions/s"
    )
    assert result.peak_memory_bytes <= runtime.memory_budget_gb * 2**30
    assert result.peak_memory_bytes <= estimate
    assert all(np.isfinite(p.flow_fwd_hw2).all() for p in result.pairs)


@needs_unimatch
def test_unimatch_batches_fit_the_default_6_gb_budget(tmp_path, frames_480p_thw3):
    from unimatch.unimatch import UniMatch

    torch.manual_seed(0)
    path = tmp_path / "gmflow-random.pth"
    torch.save({"model": UniMatch(**unimatch.model_kwargs()).state_dict()}, path)
    runtime = FlowRuntime(device="cuda")
    cfg = FlowConfig(backend="unimatch", unimatch_checkpoint=path)
    result = compute_flow(frames_480p_thw3, cfg, runtime)
    print(f"\nunimatch 854x480: peak {result.peak_memory_bytes / 2**20:.0f} MiB")
    assert result.peak_memory_bytes <= runtime.memory_budget_gb * 2**30
    assert all(np.isfinite(p.flow_fwd_hw2).all() for p in result.pairs)
