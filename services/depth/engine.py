"""Depth engine: per-frame depth, confidence, shared intrinsics and (when known) camera poses.

Pure computation (numpy in, dataclasses out); the gRPC server and the embedded pipeline both call
`estimate_depth`. The video is cut into overlapping windows (planned against the memory budget
for MASt3R), each window is estimated by the backend at its working resolution, checked and
repaired (never an abort: failure case 1), re-run with safer settings when repair is not enough,
stitched into one scale, and brought to the frames' resolution with an edge-aware upsampler that
cannot make block patterns (failure case 4). Every decision is reported in `repairs`, and the
result carries quality figures (failure case 7). docs/depth.md describes the method.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from services.common.config import resolve_torch_device
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ProgressFn,
    ResourceExhaustedError,
    no_progress,
)
from services.depth import planner
from services.depth.backends import mast3r, offline
from services.depth.backends.base import AlignmentFailedError, WindowBackend, WindowDepth
from services.depth.config import MIN_SIDE_PX, DepthConfig, DepthRuntime, needed_stride
from services.depth.flows import (
    PairFlows,
    check_pair_flows,
    resize_pair_flows,
    window_pair_flows,
)
from services.depth.quality import (
    DepthQuality,
    bad_depth_mask,
    periodic_artefact_score,
    scale_drift,
    scale_ratios,
)
from services.depth.repair import repair_window
from services.depth.stitch import WindowPart, stitch_windows
from services.depth.upsample import guide_from_rgb, resize_confidence, resize_depth
from services.flow.engine import frame_pairs

__all__ = [
    "DepthConfig",
    "DepthQuality",
    "DepthResult",
    "DepthRuntime",
    "MemoryPlan",
    "WindowRunner",
    "describe_backends",
    "estimate_depth",
]

log = logging.getLogger(__name__)

MemoryPlan = planner.MemoryPlan
ARTEFACT_FRAMES = 8  # frames (evenly spread) the periodic artefact score is computed on
PARALLAX_REFERENCE_SIDE = 512  # long side (px) at which min_parallax_px is given
PARALLAX_FLOOR_PX = 0.5  # twice DIS flow's own error (0.25-0.3 px): below it parallax is noise
PRIOR_WARNING = (
    "depth of {count} of {total} frames ({share:.0%}) is the smooth prior, not measured: the "
    "camera barely translates there, so parallax cannot give depth; use the mast3r backend"
)


@dataclass
class DepthResult:
    depth_thw: np.ndarray  # float32 [T, H, W] positive, one relative scale for the whole video
    confidence_thw: np.ndarray  # float32 [T, H, W] in [0, 1]
    intrinsics: tuple[float, float, float, float]  # (fx, fy, cx, cy) at [H, W], shared
    c2w_t44: np.ndarray | None  # float64 [T, 4, 4] camera-to-world (OpenCV axes) when known
    quality: DepthQuality
    repairs: list[str]  # every repair, re-run and fallback, in words
    plan: MemoryPlan | None  # mast3r: the memory plan; offline: None (no GPU, window as asked)
    backend: str
    work_hw: tuple[int, int] = (0, 0)  # resolution the backend worked at (depth is at [H, W])
    prior_t: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # frames on the prior
    warnings: list[str] = field(default_factory=list)  # what makes the depth less than measured


def describe_backends() -> list[tuple[str, bool, str]]:
    """(name, available, detail) per backend: detail says the device, or what to install."""
    infos = [("offline", True, "motion parallax from the flow stage's flow, CPU; no weights")]
    available, detail = mast3r.availability()
    if available:
        free = planner.free_gpu_bytes()
        where = "no CUDA device" if free is None else f"CUDA, {free / 2**30:.1f} GiB free"
        detail = f"{detail}; {where}"
    infos.append(("mast3r", available, detail))
    return infos


def _validate_frames(frames_thw3: np.ndarray) -> np.ndarray:
    field_name = "frames_thw3"
    if not isinstance(frames_thw3, np.ndarray):
        raise InvalidArgumentError(field_name, f"expected a numpy array, got {type(frames_thw3)}")
    if frames_thw3.ndim != 4 or frames_thw3.shape[-1] != 3:
        raise InvalidArgumentError(
            field_name, f"expected [T, H, W, 3] RGB frames, got shape {frames_thw3.shape}"
        )
    if frames_thw3.dtype != np.uint8:
        raise InvalidArgumentError(
            field_name, f"dtype is {frames_thw3.dtype}; pass uint8 RGB in 0..255"
        )
    if frames_thw3.shape[0] < 2:
        raise InvalidArgumentError(
            field_name, f"{frames_thw3.shape[0]} frame(s): depth from video needs at least 2"
        )
    if min(frames_thw3.shape[1:3]) < MIN_SIDE_PX:
        raise InvalidArgumentError(
            field_name,
            f"frames are {frames_thw3.shape[2]}x{frames_thw3.shape[1]}; "
            f"need at least {MIN_SIDE_PX} px a side",
        )
    return frames_thw3


def _validate_moving(moving_thw: np.ndarray | None, frames_shape: tuple[int, ...]) -> None:
    if moving_thw is None:
        return
    if np.shape(moving_thw) != frames_shape[:3]:
        raise InvalidArgumentError(
            "moving_thw",
            f"shape {np.shape(moving_thw)} must be the frames' [T, H, W] = {frames_shape[:3]}",
        )
    if np.asarray(moving_thw).dtype != bool:
        raise InvalidArgumentError("moving_thw", "must be a bool mask (True on moving objects)")


def _system_available_bytes() -> int:
    """Memory the system can give without swapping: MemAvailable (free plus reclaimable cache).
    Free pages alone are near zero on a machine whose page cache is full."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _memory_plan(
    cfg: DepthConfig, runtime: DepthRuntime, height: int, width: int, n_frames: int
) -> MemoryPlan:
    if runtime.memory_budget_gb is not None:
        budget, source = int(runtime.memory_budget_gb * 2**30), "config"
    else:
        free = planner.free_gpu_bytes()
        budget, source = (
            (free, "free GPU memory")
            if free is not None
            else (_system_available_bytes(), "system memory")
        )
    return planner.plan_memory(
        height,
        width,
        n_frames,
        budget,
        budget_source=source,
        max_long_side=cfg.mast3r_long_side,
        max_window=cfg.window,
        overlap=cfg.overlap,
        subsample=cfg.subsample,
        scene_graph=cfg.mast3r_scene_graph,
        winsize=cfg.mast3r_winsize,
    )


def offline_work_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Working (h, w) of the offline backend: the frames' size, shrunk to `long_side` at most."""
    scale = min(1.0, long_side / max(height, width))
    return max(MIN_SIDE_PX, round(height * scale)), max(MIN_SIDE_PX, round(width * scale))


def _resize_frames(frames_thw3: np.ndarray, work_hw: tuple[int, int]) -> np.ndarray:
    if frames_thw3.shape[1:3] == work_hw:
        return frames_thw3
    h, w = work_hw
    mode = cv2.INTER_AREA if h < frames_thw3.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=mode) for f in frames_thw3])


def _resize_mask(mask_thw: np.ndarray | None, work_hw: tuple[int, int]) -> np.ndarray | None:
    if mask_thw is None or mask_thw.shape[1:3] == work_hw:
        return mask_thw
    h, w = work_hw
    resized = [
        cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in mask_thw
    ]
    return np.stack(resized).astype(bool)


@dataclass
class WindowRunner:
    """Runs windows through the backend with the repair and re-run policy (module docstring).

    `model` is a loaded MASt3R backend (anything with its `run_window(frames, settings)`), or
    None for the offline backend, which also stands in where every MASt3R attempt failed; it
    triangulates from `pair_flows` (None: the offline backend cannot run).
    """

    cfg: DepthConfig
    frames_thw3: np.ndarray  # at the working size
    moving_thw: np.ndarray | None  # at the working size
    offline_settings: offline.OfflineSettings
    pair_flows: PairFlows | None  # at the working size
    model: WindowBackend | None = None
    repairs: list[str] = field(default_factory=list)
    bad_values: int = 0  # non-positive or non-finite depths in all raw backend outputs
    all_values: int = 0

    def _attempts(self) -> list[mast3r.Mast3rSettings]:
        first = mast3r.Mast3rSettings(
            scene_graph=self.cfg.mast3r_scene_graph,
            winsize=self.cfg.mast3r_winsize,
            subsample=self.cfg.subsample,
            niter1=self.cfg.mast3r_niter,
            niter2=self.cfg.mast3r_niter,
        )
        return mast3r.settings_ladder(first)

    def _offline(self, start: int, stop: int) -> WindowDepth:
        if self.pair_flows is None:
            raise AlignmentFailedError(
                f"window {start}-{stop - 1}: the offline backend needs the flow stage's result; "
                "pass flow (the ComputeFlow result for this video)"
            )
        n_frames = len(self.frames_thw3)
        pairs = frame_pairs(n_frames, needed_stride(self.cfg.flow_stride, n_frames))
        moving = None if self.moving_thw is None else self.moving_thw[start:stop]
        return offline.run_window(
            self.frames_thw3[start:stop],
            window_pair_flows(self.pair_flows, pairs, start, stop),
            self.offline_settings,
            moving,
        )

    def _accept(self, window: WindowDepth, start: int, last: bool) -> WindowDepth | None:
        """Counts the raw bad depths and repairs them; None when the window must be re-run."""
        label = f"window {start}-{start + len(window.depth_thw) - 1}"
        self.bad_values += int(bad_depth_mask(window.depth_thw).sum())
        self.all_values += window.depth_thw.size
        frames = self.frames_thw3[start : start + len(window.depth_thw)]
        fixed = repair_window(
            window.depth_thw,
            window.confidence_thw,
            np.stack([guide_from_rgb(f) for f in frames]),
            self.cfg.max_fill_share,
            label,
            borrow=last,
        )
        self.repairs.extend(fixed.notes)
        if fixed.failed_t:
            return None
        self.repairs.extend(f"{label} {note}" for note in window.notes)
        return replace(window, depth_thw=fixed.depth_thw, confidence_thw=fixed.confidence_thw)

    def run(self, start: int, stop: int) -> WindowDepth:
        """Depth of frames start..stop-1, repaired; re-runs and falls back rather than fail."""
        if self.model is None:
            window = self._accept(self._offline(start, stop), start, last=True)
            if window is None:  # every frame broken: nothing left to borrow from
                raise AlignmentFailedError(f"window {start}-{stop - 1}: no frame was usable")
            return window
        label = f"window {start}-{stop - 1}"
        attempts = self._attempts()
        for i, settings in enumerate(attempts):
            try:
                raw = self.model.run_window(self.frames_thw3[start:stop], settings)
                window = self._accept(raw, start, last=False)
            except AlignmentFailedError as exc:
                self.repairs.append(f"{label}: {exc}")
                window = None
            except ResourceExhaustedError as exc:
                return self._split(start, stop, exc)
            if window is not None:
                return window
            if i + 1 < len(attempts):
                self.repairs.append(
                    f"{label}: re-running with safer settings ({attempts[i + 1].describe()})"
                )
        # MASt3R could not align this window at all: the offline backend's depth stands in, its
        # scale fitted on the overlap by the stitcher; it has no poses in MASt3R's world frame.
        self.repairs.append(f"{label}: every MASt3R attempt failed; used the offline backend")
        window = self._accept(self._offline(start, stop), start, last=True)
        if window is None:
            raise AlignmentFailedError(f"{label}: no frame was usable")
        return replace(window, c2w_t44=None, flow_fwd_t1hw2=None)

    def _split(self, start: int, stop: int, exc: ResourceExhaustedError) -> WindowDepth:
        """Out of memory inside a window: run two shorter overlapping windows instead."""
        n = stop - start
        if n < 2 * planner.MIN_WINDOW:
            raise ResourceExhaustedError(
                f"window {start}-{stop - 1}: {exc}; even {n} frames do not fit: set a smaller "
                "memory_budget_gb so the plan uses a lower resolution, or use backend='offline'",
                reason="DEPTH_MEMORY_BUDGET",
            ) from exc
        overlap = max(1, min(self.cfg.overlap, n // 3))
        spans = planner.window_spans(n, (n + overlap + 1) // 2, overlap)
        self.repairs.append(
            f"window {start}-{stop - 1}: out of memory ({exc}); split into "
            + ", ".join(f"{start + a}-{start + b - 1}" for a, b in spans)
        )
        windows = [self.run(start + a, start + b) for a, b in spans]
        stitched = stitch_windows(
            [
                WindowPart(a, w.depth_thw, w.confidence_thw, w.c2w_t44)
                for (a, _), w in zip(spans, windows, strict=True)
            ],
            n,
            self.cfg.stitch_shift,
        )
        self.repairs.extend(stitched.notes)
        return WindowDepth(
            depth_thw=stitched.depth_thw,
            confidence_thw=stitched.confidence_thw,
            K_33=np.mean([w.K_33 for w in windows], axis=0),
            c2w_t44=stitched.c2w_t44,
        )


def _shared_intrinsics(
    windows: list[WindowDepth], work_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Frame-weighted mean of the windows' intrinsics, scaled from the working to the output
    size (pixel centres at integer coordinates)."""
    weights = np.array([len(w.depth_thw) for w in windows], np.float64)
    K = np.tensordot(weights / weights.sum(), np.stack([w.K_33 for w in windows]), axes=1)
    sy, sx = out_hw[0] / work_hw[0], out_hw[1] / work_hw[1]
    return (
        float(K[0, 0] * sx),
        float(K[1, 1] * sy),
        float((K[0, 2] + 0.5) * sx - 0.5),
        float((K[1, 2] + 0.5) * sy - 0.5),
    )


def _consecutive_flows(
    spans: list[tuple[int, int]], windows: list[WindowDepth], n_frames: int
) -> np.ndarray | None:
    """[T-1, h, w, 2] forward flow t -> t+1 gathered from the windows, if all of them have it."""
    if any(w.flow_fwd_t1hw2 is None for w in windows):
        return None
    flows: list[np.ndarray | None] = [None] * (n_frames - 1)
    for (start, _), window in zip(spans, windows, strict=True):
        for i, flow in enumerate(window.flow_fwd_t1hw2):
            if flows[start + i] is None:
                flows[start + i] = flow
    return np.stack(flows)


def estimate_depth(
    frames_thw3: np.ndarray,
    cfg: DepthConfig | None = None,
    runtime: DepthRuntime = DepthRuntime(),
    progress: ProgressFn = no_progress,
    moving_thw: np.ndarray | None = None,
    flow: PairFlows | None = None,
) -> DepthResult:
    """Depth, confidence, intrinsics and poses for every frame of a video.

    `frames_thw3` is uint8 RGB [T, H, W, 3] with T >= 2; `moving_thw` (bool [T, H, W], optional)
    marks moving objects, which are kept out of the geometry and filled. `flow` is the flow
    stage's result at the frames' size (services/depth/flows.py), with the pairs
    `cfg.flow_stride` apart (`needed_stride`): the offline backend needs it, MASt3R only for its
    offline fallback. `runtime` says on which device and within which memory MASt3R runs.
    Raises InvalidArgumentError for bad input, FailedPreconditionError when MASt3R's package or
    checkpoint is missing, ResourceExhaustedError when no plan fits the memory budget.
    """
    cfg = cfg or DepthConfig()
    frames_thw3 = _validate_frames(frames_thw3)
    _validate_moving(moving_thw, frames_thw3.shape)
    n_frames, height, width = frames_thw3.shape[:3]
    if flow is None and cfg.backend == "offline":
        raise InvalidArgumentError(
            "flow", "the offline backend triangulates from the flow stage's result: pass it"
        )
    if flow is not None:
        check_pair_flows(flow, n_frames, (height, width), needed_stride(cfg.flow_stride, n_frames))
    plan = None
    backend = None
    if cfg.backend == "mast3r":
        available, detail = mast3r.availability()
        if not available:
            raise FailedPreconditionError(detail, reason="PACKAGE_MISSING")
        if cfg.mast3r_checkpoint is None or not Path(cfg.mast3r_checkpoint).is_file():
            mast3r.load_checkpoint(cfg.mast3r_checkpoint)  # raises the precise precondition
        device = resolve_torch_device(runtime.device)
        plan = _memory_plan(cfg, runtime, height, width, n_frames)
        backend = mast3r.Mast3rBackend(cfg.mast3r_checkpoint, device, cfg.mast3r_trust_checkpoint)
        work_hw, window, overlap = plan.work_hw, plan.window, max(plan.overlap, 1)
        log.info("depth mast3r plan: %s", plan)
    else:
        work_hw = offline_work_size(height, width, cfg.offline_long_side)
        window, overlap = cfg.window, cfg.overlap
    focal_px = cfg.focal_px or 0.5 * width / math.tan(math.radians(cfg.fov_deg) / 2.0)
    frames_work = _resize_frames(frames_thw3, work_hw)
    runner = WindowRunner(
        cfg=cfg,
        frames_thw3=frames_work,
        moving_thw=_resize_mask(moving_thw, work_hw),
        offline_settings=offline.OfflineSettings(
            focal_px=focal_px * work_hw[1] / width,
            min_parallax_deg=cfg.min_parallax_deg,
            min_parallax_px=max(
                cfg.min_parallax_px * max(work_hw) / PARALLAX_REFERENCE_SIDE, PARALLAX_FLOOR_PX
            ),
            bundle_adjust=cfg.offline_bundle_adjust,
        ),
        pair_flows=None if flow is None else resize_pair_flows(flow, work_hw),
        model=backend,
    )
    spans = planner.window_spans(n_frames, window, overlap)
    windows = []
    for k, (start, stop) in enumerate(spans):
        windows.append(runner.run(start, stop))
        progress(k + 1, len(spans) + 1, f"depth {cfg.backend}: window {k + 1}/{len(spans)}")
    parts = [
        WindowPart(start, w.depth_thw, w.confidence_thw, w.c2w_t44)
        for (start, _), w in zip(spans, windows, strict=True)
    ]
    stitched = stitch_windows(parts, n_frames, cfg.stitch_shift)
    runner.repairs.extend(stitched.notes)
    prior_t = np.zeros(n_frames, bool)
    for (start, stop), w in zip(spans, windows, strict=True):
        if w.prior_t is not None:
            prior_t[start:stop] |= w.prior_t
    static_work = None if runner.moving_thw is None else ~runner.moving_thw
    ratios = scale_ratios(
        stitched.depth_thw, static_work, _consecutive_flows(spans, windows, n_frames)
    )
    depth = np.stack(
        [
            resize_depth(d, height, width, guide_from_rgb(f))
            for d, f in zip(stitched.depth_thw, frames_thw3, strict=True)
        ]
    )
    conf = np.stack([resize_confidence(c, height, width) for c in stitched.confidence_thw])
    period = cfg.subsample * width / work_hw[1] if cfg.backend == "mast3r" else None
    sample = np.unique(np.linspace(0, n_frames - 1, min(ARTEFACT_FRAMES, n_frames)).astype(int))
    quality = DepthQuality(
        nonpositive_share=runner.bad_values / max(runner.all_values, 1),
        scale_ratio_t=ratios,
        scale_drift=scale_drift(ratios),
        periodic_artefact=None
        if period is None
        else max(periodic_artefact_score(depth[t], period) for t in sample),
        artefact_period_px=period,
        prior_share=float(prior_t.mean()),
    )
    warnings = []
    if prior_t.any():
        warnings.append(
            PRIOR_WARNING.format(count=int(prior_t.sum()), total=n_frames, share=prior_t.mean())
        )
        log.warning(warnings[-1])
    progress(len(spans) + 1, len(spans) + 1, f"depth {cfg.backend}: done")
    return DepthResult(
        depth_thw=depth,
        confidence_thw=conf,
        intrinsics=_shared_intrinsics(windows, work_hw, (height, width)),
        c2w_t44=stitched.c2w_t44,
        quality=quality,
        repairs=runner.repairs,
        plan=plan,
        backend=cfg.backend,
        work_hw=work_hw,
        prior_t=prior_t,
        warnings=warnings,
    )
