"""Optical flow engine: forward and backward flow per frame pair, with consistency figures.

Pure computation (numpy in, dataclasses out): the gRPC server and the embedded pipeline both call
`compute_flow`. Backends are chosen by name (`describe_backends` lists them); each lives in its own
module under `services.flow.backends`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.config import resolve_torch_device
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ProgressFn,
    ResourceExhaustedError,
    no_progress,
)
from services.flow.backends import dis, raft, unimatch
from services.flow.backends.base import FlowBackend
from services.flow.config import FlowConfig, FlowRuntime
from services.flow.consistency import flow_in_frame, forward_backward_consistency, warp_image
from services.flow.memory import PeakMemory

__all__ = [
    "BackendInfo",
    "FlowConfig",
    "FlowResult",
    "FlowRuntime",
    "PairFlow",
    "compute_flow",
    "describe_backends",
    "flow_in_frame",
    "forward_backward_consistency",
    "frame_pairs",
    "warp_image",
]

log = logging.getLogger(__name__)

_MODULES = {"dis": dis, "raft": raft, "unimatch": unimatch}
MIN_SIDE_PX = 8
MAX_BATCH = 16  # directed pairs per model call at most: progress is reported once per batch


@dataclass
class PairFlow:
    """Flow between frames t0 and t1 (t1 > t0), at the frames' resolution, in pixels (dx, dy)."""

    t0: int
    t1: int
    flow_fwd_hw2: np.ndarray  # float32 [H, W, 2]: frame t0 -> t1
    flow_bwd_hw2: np.ndarray  # float32 [H, W, 2]: frame t1 -> t0
    consistent_fwd_hw: np.ndarray  # bool [H, W]: forward flow passes the round trip (not occluded)
    fb_error_mean: float  # mean round-trip error (px) over pixels whose flow stays in the frame
    consistent_share: float  # share of all pixels of t0 that are consistent


@dataclass
class FlowResult:
    """Every pair's flow plus how the run went (for the stage report and the benchmark)."""

    pairs: list[PairFlow]  # consecutive pairs in order, then the extra-stride pairs
    backend: str
    device: str
    peak_memory_bytes: int
    memory_kind: str  # how peak_memory_bytes was measured (see services.flow.memory)
    seconds: float

    def stacked(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward flows [P, H, W, 2] of the pairs (t, t + stride), t ascending: the
        layout the segment and fit stages read (stride 1: [T-1, H, W, 2])."""
        pairs = [p for p in self.pairs if p.t1 - p.t0 == stride]
        return np.stack([p.flow_fwd_hw2 for p in pairs]), np.stack([p.flow_bwd_hw2 for p in pairs])


@dataclass
class BackendInfo:
    """One line of `describe_backends` (the service's Describe call)."""

    name: str
    available: bool
    detail: str  # version and device when available, else what to install
    needs_weights: bool


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_device(cfg: FlowConfig, runtime: FlowRuntime) -> str:
    return "cpu" if cfg.backend == "dis" else resolve_torch_device(runtime.device)


def describe_backends() -> list[BackendInfo]:
    """Each backend: can it load here (package present), on which device, and what it needs."""
    device = "cuda" if _cuda_available() else "cpu"
    infos = []
    for name, module in _MODULES.items():
        available, detail = module.availability()
        if available:
            detail = f"{detail}; device {'cpu' if name == 'dis' else device}"
        infos.append(BackendInfo(name, available, detail, needs_weights=name != "dis"))
    return infos


def _validate_frames(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    field = "frames_thw3"
    if not isinstance(frames, np.ndarray):
        frames = list(frames)
        for t, frame in enumerate(frames):
            if not isinstance(frame, np.ndarray) or frame.shape != np.shape(frames[0]):
                raise InvalidArgumentError(
                    f"{field}[{t}]",
                    f"frame {t} has shape {np.shape(frame)} but frame 0 has "
                    f"{np.shape(frames[0])}; resize all frames to one size",
                )
        frames = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidArgumentError(field, f"expected [T, H, W, 3] RGB frames, got {frames.shape}")
    if frames.shape[0] < 2:
        raise InvalidArgumentError(
            field, f"{frames.shape[0]} frame(s): flow needs at least 2 frames"
        )
    if min(frames.shape[1:3]) < MIN_SIDE_PX:
        raise InvalidArgumentError(
            field, f"frames are {frames.shape[2]}x{frames.shape[1]}; need at least {MIN_SIDE_PX} px"
        )
    if frames.dtype != np.uint8:
        if np.issubdtype(frames.dtype, np.floating) and not np.isfinite(frames).all():
            raise InvalidArgumentError(field, "frames contain NaN or infinite values")
        raise InvalidArgumentError(
            field, f"dtype is {frames.dtype}; pass uint8 RGB in 0..255 (frames.astype(np.uint8))"
        )
    return frames


def _check_stride(cfg: FlowConfig, n_frames: int) -> None:
    """The one check of the config against the clip (FlowConfig checks the rest itself)."""
    if cfg.extra_stride >= n_frames:
        raise InvalidArgumentError(
            "extra_stride",
            f"{cfg.extra_stride}: use 0 (none) or a stride from 2 to {n_frames - 1} "
            f"for {n_frames} frames",
        )


def frame_pairs(n_frames: int, extra_stride: int = 0) -> list[tuple[int, int]]:
    """(t0, t1) pairs to compute: every consecutive pair, then (t, t + stride) when asked."""
    pairs = [(t, t + 1) for t in range(n_frames - 1)]
    if extra_stride:
        pairs += [(t, t + extra_stride) for t in range(n_frames - extra_stride)]
    return pairs


def _load_backend(cfg: FlowConfig, device: str) -> FlowBackend:
    if cfg.backend == "dis":
        polish_rounds = cfg.dis_polish_rounds if cfg.dis_polish else 0
        return dis.DisBackend(
            cfg.dis_preset,
            cfg.variational_refinement,
            polish_rounds,
            cfg.dis_polish_window_px,
            cfg.dis_neighbour_px,
        )
    if cfg.backend == "raft":
        return raft.RaftBackend(cfg.raft_model, cfg.raft_weights, cfg.raft_iterations, device)
    return unimatch.UniMatchBackend(cfg.unimatch_checkpoint, device)


def _batch_size(backend: FlowBackend, height: int, width: int, budget_gb: float) -> int:
    """Directed pairs per batch that fit the budget beside the model; refuse if none does."""
    budget = budget_gb * 2**30 - backend.model_bytes
    item = backend.item_bytes(height, width)
    if item > budget:
        raise ResourceExhaustedError(
            f"one {width}x{height} frame pair needs about {item / 2**30:.1f} GiB with backend "
            f"{backend.name} beside a {backend.model_bytes / 2**30:.2f} GiB model, over the "
            f"memory_budget_gb of {budget_gb}; use smaller frames, a larger budget or backend dis",
            reason="FLOW_MEMORY_BUDGET",
        )
    return int(min(MAX_BATCH, budget // item))


def _directed_flows(
    backend: FlowBackend,
    frames_thw3: np.ndarray,
    pairs: list[tuple[int, int]],
    batch: int,
    progress: ProgressFn,
) -> np.ndarray:
    """float32 [2P, H, W, 2]: forward flow of every pair, then backward flow of every pair."""
    directed = pairs + [(t1, t0) for t0, t1 in pairs]
    height, width = frames_thw3.shape[1:3]
    flows_n_hw2 = np.empty((len(directed), height, width, 2), np.float32)
    for start in range(0, len(directed), batch):
        chunk = directed[start : start + batch]
        src = frames_thw3[[s for s, _ in chunk]]
        dst = frames_thw3[[d for _, d in chunk]]
        flows_n_hw2[start : start + len(chunk)] = backend.flow(src, dst)
        done = start + len(chunk)
        progress(done, len(directed), f"flow {backend.name}: {done}/{len(directed)} directions")
    return flows_n_hw2


def compute_flow(
    frames_thw3: np.ndarray | Sequence[np.ndarray],
    cfg: FlowConfig,
    runtime: FlowRuntime = FlowRuntime(),
    progress: ProgressFn = no_progress,
) -> FlowResult:
    """Forward/backward flow, consistency mask and quality figures for every frame pair.

    `frames_thw3` is uint8 RGB [T, H, W, 3] (or a sequence of [H, W, 3] frames), T >= 2;
    `runtime` says on which device and within which memory budget. Raises
    InvalidArgumentError for bad frames or a stride too long for them, FailedPreconditionError
    when the backend's package or weights are missing, ResourceExhaustedError when one pair
    exceeds the budget.
    """
    frames_thw3 = _validate_frames(frames_thw3)
    _check_stride(cfg, frames_thw3.shape[0])
    available, detail = _MODULES[cfg.backend].availability()
    if not available:
        raise FailedPreconditionError(detail, reason="PACKAGE_MISSING")
    started = time.perf_counter()
    device = _resolve_device(cfg, runtime)
    meter = PeakMemory(device)
    meter.start()
    backend = _load_backend(cfg, device)
    height, width = frames_thw3.shape[1:3]
    batch = _batch_size(backend, height, width, runtime.memory_budget_gb)
    pairs = frame_pairs(frames_thw3.shape[0], cfg.extra_stride)
    log.info(
        "flow %s on %s: %d pairs, %d directions per batch", cfg.backend, device, len(pairs), batch
    )
    flows = _directed_flows(backend, frames_thw3, pairs, batch, progress)
    results = []
    for i, (t0, t1) in enumerate(pairs):
        fwd_hw2, bwd_hw2 = flows[i], flows[len(pairs) + i]
        consistent_hw, error_hw = forward_backward_consistency(
            fwd_hw2, bwd_hw2, cfg.fb_threshold_px
        )
        finite = error_hw[np.isfinite(error_hw)]
        results.append(
            PairFlow(
                t0=t0,
                t1=t1,
                flow_fwd_hw2=fwd_hw2,
                flow_bwd_hw2=bwd_hw2,
                consistent_fwd_hw=consistent_hw,
                fb_error_mean=float(finite.mean()) if finite.size else float("nan"),
                consistent_share=float(consistent_hw.mean()),
            )
        )
    peak = meter.stop()
    return FlowResult(
        pairs=results,
        backend=cfg.backend,
        device=device,
        peak_memory_bytes=peak,
        memory_kind=meter.kind,
        seconds=time.perf_counter() - started,
    )
