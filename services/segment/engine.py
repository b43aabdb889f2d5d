"""Motion segmentation: which pixels move on their own, from optical flow and camera geometry.

Per frame, the camera-induced motion is fitted robustly (LMedS) to forward-backward consistent
flow: a fundamental matrix F, or a homography H when the motion is a pure rotation or the scene is
near-planar (chosen by Torr's GRIC), or no model at all when the camera stands still. A pixel's
residual is how far its flow end point lies from where camera motion alone could put it; the soft
score rises from 0 to 1 with the residual and crosses 0.5 at the threshold. Masks are cleaned by
morphology and made temporally consistent with the neighbour frames' masks warped by flow.
When the frames are given, the masks are then tightened to the object by the image
(services/segment/refine.py: colour-guided relabelling of the flow's halo, and removal of
components the neighbour frames do not confirm).

Motion along the epipolar line is invisible to F. When depth is given, a projective camera
x' ~ P (x, y, 1, 1/Z) is fitted as well (it needs no intrinsics and absorbs the depth scale): it
pins where along its epipolar line a still pixel must land, and its transfer error is added as a
second score. See docs/segment.md for the defaults, the measured figures and the limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

from services.common.errors import InvalidArgumentError, ProgressFn, no_progress
from services.common.masks import widened_scores_thw
from services.depth.config import MEASURED_DEPTH_CONFIDENCE
from services.flow.consistency import forward_backward_consistency, warp_image
from services.segment.config import SegmentConfig
from services.segment.refine import check_refine_config, refine_masks

logger = logging.getLogger(__name__)

_MIN_FIT_POINTS = 16  # fewer usable pixels than this cannot support an F / H / P fit
_MSAC_HYPOTHESES = 400  # minimal samples drawn for the depth-aware projective fit
_MSAC_EVAL_POINTS = 1000  # pixels the projective hypotheses are drawn from and scored on
_GRIC_LAMBDA3 = 2.0  # Torr's outlier cap factor (data dimension r = 4: two 2D points)


@dataclass
class FrameSegmentStats:
    """What happened on one frame."""

    t: int
    moving_share: float
    """Share of the frame's pixels in the final mask."""
    temporal_iou: float | None
    """IoU of the mask with the previous mask warped into this frame by flow, over pixels whose
    flow to the previous frame is forward-backward consistent (None at t=0)."""
    motion_model: str
    """Camera-motion model used: fundamental, homography, static or none."""
    degenerate: str | None
    """None, 'no_consistent_pixels', 'model_fit_failed' or 'mostly_moving'."""
    threshold_px: float = 0.0
    """Effective residual threshold after the noise adaptation."""
    consistent_share: float = 0.0
    """Share of pixels whose flow passed the forward-backward check and stays in the image."""
    depth_checked: bool = False
    """Whether the depth-aware parallax score was added."""


@dataclass
class SegmentResult:
    masks_thw: np.ndarray  # bool [T, H, W], True = moving
    scores_thw: np.ndarray  # float32 [T, H, W] in [0, 1], 0.5 at the threshold
    stats: list[FrameSegmentStats]


@dataclass
class _FrameEvidence:
    """One frame's own estimate, before temporal smoothing."""

    score_hw: np.ndarray
    mask_hw: np.ndarray
    motion_model: str
    degenerate: str | None
    threshold_px: float
    consistent_share: float
    depth_checked: bool


def segment_motion(
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    cfg: SegmentConfig,
    depth_thw: np.ndarray | None = None,
    progress: ProgressFn = no_progress,
    frames_thw3: np.ndarray | None = None,
    depth_confidence_thw: np.ndarray | None = None,
) -> SegmentResult:
    """Masks and scores for T frames from T-1 forward/backward flow pairs.

    Frame t < T-1 is scored by its forward flow (t -> t+1), the last frame by the backward flow
    of the last pair. `depth_thw` (optional, any scale, non-positive / non-finite = unknown) adds
    the parallax check. `depth_confidence_thw` (optional, the depth stage's confidence) lets
    `cfg.measured_depth_only` skip the check on frames without measured depth
    (`MEASURED_DEPTH_CONFIDENCE`): a smooth prior, assumed where the camera barely translates,
    is made-up parallax, and a camera fitted to it marks still pixels moving. Depth filled in
    from measured surroundings (every moving object, in the offline backend) is kept: such an
    object then stands out. `frames_thw3` (optional, uint8 RGB [T, H, W, 3]) lets `cfg.refine`
    tighten the masks to the object; where it changes a pixel's decision, the score becomes 0
    or 1 accordingly.
    """
    _check_config(cfg)
    flow_fwd_t1hw2 = _check_flow("flow_fwd", flow_fwd_t1hw2)
    flow_bwd_t1hw2 = _check_flow("flow_bwd", flow_bwd_t1hw2)
    if flow_bwd_t1hw2.shape != flow_fwd_t1hw2.shape:
        raise InvalidArgumentError(
            "flow_bwd",
            f"shape {flow_bwd_t1hw2.shape} differs from flow_fwd "
            f"{flow_fwd_t1hw2.shape}: pass the backward flow of the same frame pairs",
        )
    n_pairs, height, width, _ = flow_fwd_t1hw2.shape
    n_frames = n_pairs + 1
    if depth_thw is not None:
        depth_thw = _check_per_pixel("depth", depth_thw, n_frames, height, width)
    measured_thw = None
    if depth_confidence_thw is not None:
        if depth_thw is None:
            raise InvalidArgumentError(
                "depth_confidence", "given without depth: pass the depth it belongs to, or neither"
            )
        confidence_thw = _check_per_pixel(
            "depth_confidence", depth_confidence_thw, n_frames, height, width
        )
        if cfg.measured_depth_only:
            measured_thw = (confidence_thw >= MEASURED_DEPTH_CONFIDENCE) & _known_depth(depth_thw)

    flows = _directed_flows(flow_fwd_t1hw2, flow_bwd_t1hw2, cfg.fb_threshold_px)
    evidence = []
    for t in range(n_frames):
        flow_hw2, consistent_hw = flows[(t, t + 1) if t < n_pairs else (t, t - 1)]
        depth_hw = None if depth_thw is None else depth_thw[t]
        if measured_thw is not None and (
            np.count_nonzero(consistent_hw & measured_thw[t]) < _MIN_FIT_POINTS
        ):
            depth_hw = None  # too little measured depth to fit the parallax check to
        evidence.append(_segment_frame(flow_hw2, consistent_hw, depth_hw, cfg, t))
        progress(t + 1, n_frames, f"segmented frame {t + 1}/{n_frames}")

    masks_thw, scores_thw = _temporal(evidence, flows, cfg)
    if frames_thw3 is not None and cfg.refine.enabled:
        refined_thw = refine_masks(
            frames_thw3, masks_thw, flow_fwd_t1hw2, flow_bwd_t1hw2, cfg.refine, cfg.fb_threshold_px
        )
        changed_thw = refined_thw != masks_thw
        scores_thw[changed_thw] = refined_thw[changed_thw]
        masks_thw = refined_thw
    stats = []
    for t, ev in enumerate(evidence):
        iou = None
        if t > 0:
            back_hw2, visible_hw = flows[(t, t - 1)]
            prev_hw = warp_image(masks_thw[t - 1].astype(np.float32), back_hw2) >= 0.5
            iou = _iou(masks_thw[t] & visible_hw, prev_hw & visible_hw)
        stats.append(
            FrameSegmentStats(
                t=t,
                moving_share=float(masks_thw[t].mean()),
                temporal_iou=iou,
                motion_model=ev.motion_model,
                degenerate=ev.degenerate,
                threshold_px=ev.threshold_px,
                consistent_share=ev.consistent_share,
                depth_checked=ev.depth_checked,
            )
        )
        if ev.degenerate is not None:
            logger.info("frame %d degenerate: %s", t, ev.degenerate)
    scores_thw = widened_scores_thw(scores_thw, cfg.score_margin_px)
    return SegmentResult(masks_thw=masks_thw, scores_thw=scores_thw, stats=stats)


def validate_user_masks(masks: ArrayLike, height: int, width: int, n_frames: int) -> np.ndarray:
    """User-given masks (e.g. DAVIS annotations) as bool [T, H, W], True = moving.

    Accepts bool; integers >= 0 (object ids or 0/255: non-zero is moving); floats in [0, 1]
    (>= 0.5 is moving). Raises InvalidArgumentError('user_masks', ...) otherwise.
    """
    try:
        masks = np.asarray(masks)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError("user_masks", f"not an array ({exc})") from exc
    expected = (n_frames, height, width)
    if masks.shape != expected:
        raise InvalidArgumentError(
            "user_masks",
            f"shape {masks.shape}, expected (T, H, W) = {expected}: one mask per "
            "video frame at the video's working resolution",
        )
    if masks.dtype == bool:
        return masks.copy()
    if np.issubdtype(masks.dtype, np.integer):
        if masks.size and masks.min() < 0:
            raise InvalidArgumentError(
                "user_masks",
                f"negative value {masks.min()}: use 0 for background and "
                "non-zero (object id or 255) for moving pixels",
            )
        return masks != 0
    if np.issubdtype(masks.dtype, np.floating):
        if not np.isfinite(masks).all() or (masks.size and (masks.min() < 0 or masks.max() > 1)):
            raise InvalidArgumentError(
                "user_masks", "float masks must be finite and in [0, 1] (>= 0.5 is moving)"
            )
        return masks >= 0.5
    raise InvalidArgumentError("user_masks", f"dtype {masks.dtype} is not bool, integer or float")


# ---------------------------------------------------------------------------------------------
# Input checks.


def _check_config(cfg: SegmentConfig) -> None:
    positive = {
        "threshold": cfg.threshold,
        "noise_sigmas": cfg.noise_sigmas,
        "fb_threshold_px": cfg.fb_threshold_px,
    }
    for name, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            raise InvalidArgumentError(name, f"{value} must be a finite number > 0")
    if not 0.0 <= cfg.min_consistent_share < 1.0:
        raise InvalidArgumentError(
            "min_consistent_share", f"{cfg.min_consistent_share} is outside [0, 1)"
        )
    if not 0.0 < cfg.max_moving_share <= 1.0:
        raise InvalidArgumentError("max_moving_share", f"{cfg.max_moving_share} is outside (0, 1]")
    if not (np.isfinite(cfg.static_camera_flow_px) and cfg.static_camera_flow_px >= 0):
        raise InvalidArgumentError(
            "static_camera_flow_px",
            f"{cfg.static_camera_flow_px} must be >= 0 (0 never treats the camera as still)",
        )
    if cfg.max_fit_points < _MIN_FIT_POINTS:
        raise InvalidArgumentError("max_fit_points", f"{cfg.max_fit_points} < {_MIN_FIT_POINTS}")
    for name in ("morph_open_px", "morph_close_px", "score_margin_px"):
        if getattr(cfg, name) < 0:
            raise InvalidArgumentError(name, f"{getattr(cfg, name)} must be >= 0 (0: off)")
    check_refine_config(cfg.refine)


def _check_flow(field: str, flow: ArrayLike) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[-1] != 2 or flow.shape[0] < 1 or min(flow.shape[1:3]) < 2:
        raise InvalidArgumentError(
            field, f"shape {flow.shape}, expected [T-1, H, W, 2] with T >= 2 frames, H, W >= 2"
        )
    if not (np.issubdtype(flow.dtype, np.floating) or np.issubdtype(flow.dtype, np.integer)):
        raise InvalidArgumentError(field, f"dtype {flow.dtype} is not numeric")
    flow = flow.astype(np.float32, copy=False)
    if not np.isfinite(flow).all():
        raise InvalidArgumentError(field, "contains NaN or infinite values")
    return flow


def _check_per_pixel(
    field: str, values_thw: ArrayLike, n_frames: int, height: int, width: int
) -> np.ndarray:
    values_thw = np.asarray(values_thw)
    if values_thw.shape != (n_frames, height, width):
        raise InvalidArgumentError(
            field, f"shape {values_thw.shape}, expected (T, H, W) = {(n_frames, height, width)}"
        )
    if not (
        np.issubdtype(values_thw.dtype, np.floating) or np.issubdtype(values_thw.dtype, np.integer)
    ):
        raise InvalidArgumentError(field, f"dtype {values_thw.dtype} is not numeric")
    return values_thw.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# One frame.


_Flows = dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
_ResidualFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (grid_p2, flow_p2) -> px [P]


def _directed_flows(flow_fwd_t1hw2: np.ndarray, flow_bwd_t1hw2: np.ndarray, fb_px: float) -> _Flows:
    """{(t, s): (flow t -> s, its forward-backward consistency)} for neighbouring frames t, s.

    Consistent implies that the flow stays in the frame (the check is undefined elsewhere).
    """
    flows = {}
    for i, (fwd_hw2, bwd_hw2) in enumerate(zip(flow_fwd_t1hw2, flow_bwd_t1hw2, strict=True)):
        flows[(i, i + 1)] = (fwd_hw2, forward_backward_consistency(fwd_hw2, bwd_hw2, fb_px)[0])
        flows[(i + 1, i)] = (bwd_hw2, forward_backward_consistency(bwd_hw2, fwd_hw2, fb_px)[0])
    return flows


def _segment_frame(
    flow_hw2: np.ndarray,
    usable_hw: np.ndarray,
    depth_hw: np.ndarray | None,
    cfg: SegmentConfig,
    t: int,
) -> _FrameEvidence:
    """Scores and cleaned mask of frame t from its flow and the flow's consistency mask."""
    height, width, _ = flow_hw2.shape
    consistent_share = float(usable_hw.mean())
    n_usable = int(usable_hw.sum())
    zeros_hw = np.zeros((height, width), np.float32)

    def give_up(reason: str) -> _FrameEvidence:
        return _FrameEvidence(
            zeros_hw, zeros_hw.astype(bool), "none", reason, cfg.threshold, consistent_share, False
        )

    if consistent_share < cfg.min_consistent_share or n_usable < _MIN_FIT_POINTS:
        return give_up("no_consistent_pixels")

    rng = np.random.default_rng([cfg.seed, t])
    idx_flat = np.flatnonzero(usable_hw)
    if len(idx_flat) > cfg.max_fit_points:
        idx_flat = np.sort(rng.choice(idx_flat, cfg.max_fit_points, replace=False))
    x0_n2 = np.stack([idx_flat % width, idx_flat // width], axis=1).astype(np.float64)
    x1_n2 = x0_n2 + flow_hw2.reshape(-1, 2)[idx_flat]
    sigma_floor = cfg.threshold / cfg.noise_sigmas

    if np.median(np.linalg.norm(x1_n2 - x0_n2, axis=1)) < cfg.static_camera_flow_px:
        model = "static"
        residual_hw = np.linalg.norm(flow_hw2.astype(np.float64), axis=2)
        sigma = _robust_sigma(residual_hw.reshape(-1)[idx_flat], dof=2)
    else:
        cv2.setRNGSeed(cfg.seed + t)
        fitted = _fit_camera_model(x0_n2, x1_n2, sigma_floor)
        if fitted is None:
            return give_up("model_fit_failed")
        model, residual_fn, sigma = fitted
        residual_hw = residual_fn(
            _grid_hw2(height, width).reshape(-1, 2), flow_hw2.reshape(-1, 2)
        ).reshape(height, width)
    degenerate = None
    if np.mean(residual_hw[usable_hw] > cfg.threshold) > cfg.max_moving_share:
        # The model misses most trusted pixels: their spread is motion, not noise to adapt to.
        degenerate = "mostly_moving"
        tau = cfg.threshold
    else:
        tau = cfg.noise_sigmas * max(sigma, sigma_floor)
    score_hw = _score(residual_hw, tau)

    depth_checked = False
    if depth_hw is not None:
        depth_score_hw = _depth_parallax_score(flow_hw2, depth_hw, usable_hw, cfg, rng)
        if depth_score_hw is not None:
            score_hw = np.maximum(score_hw, depth_score_hw)
            depth_checked = True

    raw_hw = score_hw >= 0.5
    return _FrameEvidence(
        score_hw.astype(np.float32),
        _clean(raw_hw, cfg),
        model,
        degenerate,
        float(tau),
        consistent_share,
        depth_checked,
    )


def _fit_camera_model(
    x0_n2: np.ndarray, x1_n2: np.ndarray, sigma_floor: float
) -> tuple[str, _ResidualFn, float] | None:
    """LMedS F and H on the sample; GRIC picks one. Returns (name, residual_fn, sigma) or None.

    residual_fn(grid_p2, flow_p2) gives the flow residual in px per pixel; sigma is the robust
    standard deviation of the chosen model's residuals on the sample.
    """
    n = len(x0_n2)
    p0, p1 = x0_n2.astype(np.float32), x1_n2.astype(np.float32)
    flow_n2 = x1_n2 - x0_n2
    candidates = []
    # No least-squares refit on the inliers: it bends F toward objects that move almost along
    # their epipolar lines (their residuals pass as inliers), which costs more than it gains.
    F_33, _ = cv2.findFundamentalMat(p0, p1, cv2.FM_LMEDS, 1.0, 0.999, 2000)
    if _is_finite_33(F_33):
        candidates.append(
            ("fundamental", F_33, _fundamental_residual(F_33, x0_n2, flow_n2), 1, 3, 7)
        )
    H_33, _ = cv2.findHomography(p0, p1, cv2.LMEDS)
    if _is_finite_33(H_33):
        candidates.append(("homography", H_33, _homography_residual(H_33, x0_n2, flow_n2), 2, 2, 8))
    if not candidates:
        return None
    # GRIC's noise level: the 1-dof epipolar residual where F exists (F fits rotation too).
    sigma_gric = max(_robust_sigma(candidates[0][2], candidates[0][3]), sigma_floor)
    best = None
    for name, M_33, r_n, dof, dim, n_params in candidates:
        gric = (
            np.minimum((r_n / sigma_gric) ** 2, _GRIC_LAMBDA3 * (4 - dim)).sum()
            + np.log(4.0) * dim * n
            + np.log(4.0 * n) * n_params
        )
        logger.debug("%s: GRIC %.1f, median residual %.3f px", name, gric, np.median(r_n))
        if best is None or gric < best[0]:
            best = (gric, name, M_33, r_n, dof)
    _, name, M_33, r_n, dof = best
    residual = _fundamental_residual if name == "fundamental" else _homography_residual
    return name, lambda grid_p2, flow_p2: residual(M_33, grid_p2, flow_p2), _robust_sigma(r_n, dof)


def _is_finite_33(M_33: np.ndarray | None) -> bool:
    """OpenCV returns None, an empty array or stacked 3x3 solutions when a fit fails."""
    return M_33 is not None and M_33.shape == (3, 3) and bool(np.isfinite(M_33).all())


def _fundamental_residual(F_33: np.ndarray, x0_p2: np.ndarray, flow_p2: np.ndarray) -> np.ndarray:
    """sqrt(2) x Sampson distance: about the distance of x1 from its epipolar line, in px."""
    x, y = x0_p2[:, 0], x0_p2[:, 1]
    u, v = x + flow_p2[:, 0], y + flow_p2[:, 1]
    line1 = [F_33[i, 0] * x + F_33[i, 1] * y + F_33[i, 2] for i in range(3)]  # F x0
    line0 = [F_33[0, i] * u + F_33[1, i] * v + F_33[2, i] for i in range(2)]  # F^T x1 (a, b)
    algebraic = u * line1[0] + v * line1[1] + line1[2]
    norm2 = line1[0] ** 2 + line1[1] ** 2 + line0[0] ** 2 + line0[1] ** 2
    return np.sqrt(2.0) * np.abs(algebraic) / np.sqrt(np.maximum(norm2, 1e-300))


def _homography_residual(H_33: np.ndarray, x0_p2: np.ndarray, flow_p2: np.ndarray) -> np.ndarray:
    """Transfer error |x1 - H x0| in px (infinite where H sends x0 to infinity)."""
    x, y = x0_p2[:, 0], x0_p2[:, 1]
    projected = [H_33[i, 0] * x + H_33[i, 1] * y + H_33[i, 2] for i in range(3)]
    return _transfer_error(projected, x0_p2 + flow_p2)


def _transfer_error(projected_3p: list[np.ndarray] | np.ndarray, x1_p2: np.ndarray) -> np.ndarray:
    """Distance from x1 to the homogeneous points (rows: x, y, w), infinite where w = 0."""
    px, py, w = projected_3p
    ok = np.abs(w) > 1e-12
    safe_w = np.where(ok, w, 1.0)
    error = np.hypot(px / safe_w - x1_p2[:, 0], py / safe_w - x1_p2[:, 1])
    return np.where(ok, error, np.inf)


# ---------------------------------------------------------------------------------------------
# Depth-aware parallax check.


def _depth_parallax_score(
    flow_hw2: np.ndarray,
    depth_hw: np.ndarray,
    usable_hw: np.ndarray,
    cfg: SegmentConfig,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Score from the transfer error of x1 ~ P (x, y, 1, 1/Z), fitted robustly to the flow.

    A still point at depth Z maps as x1 ~ K R K^-1 x + K t / Z: linear in (x, y, 1, 1/Z), with no
    intrinsics needed and the depth scale absorbed into the last column. None when too few pixels
    have a known depth.
    """
    height, width, _ = flow_hw2.shape
    known_hw = _known_depth(depth_hw)
    idx_flat = np.flatnonzero(usable_hw & known_hw)
    if len(idx_flat) < _MIN_FIT_POINTS:
        return None
    if len(idx_flat) > cfg.max_fit_points:
        idx_flat = np.sort(rng.choice(idx_flat, cfg.max_fit_points, replace=False))
    grid_p2 = _grid_hw2(height, width).reshape(-1, 2)
    inv_depth_p = np.where(known_hw, 1.0 / np.where(known_hw, depth_hw, 1.0), np.nan).reshape(-1)
    X_n4 = _homogeneous_points(grid_p2[idx_flat], inv_depth_p[idx_flat])
    x1_n2 = grid_p2[idx_flat] + flow_hw2.reshape(-1, 2)[idx_flat]
    P_34 = _fit_projective_msac(X_n4, x1_n2, cfg.threshold, rng)
    r_n = _transfer_error((X_n4 @ P_34.T).T, x1_n2)
    sigma = _robust_sigma(r_n, dof=2)
    tau = cfg.noise_sigmas * max(sigma, cfg.threshold / cfg.noise_sigmas)
    X_p4 = _homogeneous_points(grid_p2, inv_depth_p)
    residual_p = _transfer_error((X_p4 @ P_34.T).T, grid_p2 + flow_hw2.reshape(-1, 2))
    score_p = np.where(known_hw.reshape(-1), _score(np.nan_to_num(residual_p, nan=0.0), tau), 0.0)
    return score_p.reshape(height, width)


def _known_depth(depth: np.ndarray) -> np.ndarray:
    """Bool, same shape: pixels whose depth is known (finite and positive)."""
    return np.isfinite(depth) & (depth > 0)


def _homogeneous_points(xy_p2: np.ndarray, inv_depth_p: np.ndarray) -> np.ndarray:
    return np.concatenate([xy_p2, np.ones((len(xy_p2), 1)), inv_depth_p[:, None]], axis=1)


def _fit_projective_msac(
    X_n4: np.ndarray, x1_n2: np.ndarray, inlier_px: float, rng: np.random.Generator
) -> np.ndarray:
    """3x4 P with x1 ~ P X: MSAC over 6-point DLT samples, then refitted on the inliers.

    MSAC (truncated quadratic cost at `inlier_px`) rather than LMedS: with exact flow, a plane
    covering half the frame fits a rank-deficient P perfectly and would win a median contest.
    """
    T0_44, T1_33 = _normaliser_44(X_n4), _normaliser_33(x1_n2)
    Xn_n4 = X_n4 @ T0_44.T
    x1n_n2 = x1_n2 @ T1_33[:2, :2].T + T1_33[:2, 2]
    px_per_unit = 1.0 / T1_33[0, 0]
    n = len(X_n4)
    eval_m = rng.choice(n, min(n, _MSAC_EVAL_POINTS), replace=False)
    picks_k6 = np.argpartition(rng.random((_MSAC_HYPOTHESES, len(eval_m))), 6, axis=1)[:, :6]
    samples_k6 = eval_m[picks_k6]
    P_k34 = _dlt_k34(Xn_n4[samples_k6], x1n_n2[samples_k6])
    projected_km3 = np.einsum("kij,mj->kmi", P_k34, Xn_n4[eval_m])
    w_km = projected_km3[..., 2]
    w_km = np.where(np.abs(w_km) > 1e-12, w_km, 1e-12)
    r_km = np.linalg.norm(projected_km3[..., :2] / w_km[..., None] - x1n_n2[eval_m], axis=2)
    cost_k = np.square(np.minimum(r_km * px_per_unit, inlier_px)).sum(axis=1)
    P_34 = P_k34[int(np.argmin(cost_k))]
    for _ in range(2):  # refit on the inliers of the current estimate
        r_n = _transfer_error((Xn_n4 @ P_34.T).T, x1n_n2) * px_per_unit
        inliers = r_n <= max(inlier_px, 3.0 * _robust_sigma(r_n, dof=2))
        if inliers.sum() < 6:
            break
        P_34 = _dlt_k34(Xn_n4[inliers][None], x1n_n2[inliers][None])[0]
    return np.linalg.inv(T1_33) @ P_34 @ T0_44


def _dlt_k34(X_kn4: np.ndarray, x1_kn2: np.ndarray) -> np.ndarray:
    """Least-squares P (unit norm) for each of k point sets: the null vector of the DLT system."""
    k, n, _ = X_kn4.shape
    zeros = np.zeros_like(X_kn4)
    u, v = x1_kn2[..., 0:1], x1_kn2[..., 1:2]
    rows_u = np.concatenate([X_kn4, zeros, -u * X_kn4], axis=2)
    rows_v = np.concatenate([zeros, X_kn4, -v * X_kn4], axis=2)
    A_k = np.concatenate([rows_u, rows_v], axis=1)  # [k, 2n, 12]
    _, vectors_k = np.linalg.eigh(np.einsum("kni,knj->kij", A_k, A_k))
    return vectors_k[:, :, 0].reshape(k, 3, 4)  # eigenvector of the smallest eigenvalue


def _normaliser_33(x_n2: np.ndarray) -> np.ndarray:
    """Hartley normalisation: centroid to the origin, mean distance sqrt(2)."""
    centre = x_n2.mean(axis=0)
    scale = np.sqrt(2.0) / max(np.linalg.norm(x_n2 - centre, axis=1).mean(), 1e-12)
    return np.array([[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]])


def _normaliser_44(X_n4: np.ndarray) -> np.ndarray:
    T_44 = np.eye(4)
    T_44[:3, :3] = _normaliser_33(X_n4[:, :2])
    T_44[3, 3] = 1.0 / max(float(np.median(X_n4[:, 3])), 1e-12)
    return T_44


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def _grid_hw2(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


def _robust_sigma(residual_n: np.ndarray, dof: int) -> float:
    """Noise standard deviation per coordinate from the median residual magnitude: the median of
    |N(0, s^2)| is 0.6745 s (1 dof), of a 2D Rayleigh 1.1774 s (2 dof)."""
    finite_n = residual_n[np.isfinite(residual_n)]
    if len(finite_n) == 0:
        return float("inf")
    return float(np.median(finite_n)) / (0.6745 if dof == 1 else 1.1774)


def _score(residual: np.ndarray, tau: float) -> np.ndarray:
    """r^2 / (r^2 + tau^2): 0 on the model, 0.5 at the threshold, -> 1 far from it."""
    r2 = np.square(np.minimum(residual, 1e6))
    return r2 / (r2 + tau * tau)


def _clean(mask_hw: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """Opening removes specks, closing fills small holes."""
    out = mask_hw.astype(np.uint8)
    if cfg.morph_open_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(cfg.morph_open_px))
    if cfg.morph_close_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(cfg.morph_close_px))
    return out.astype(bool)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _iou(a_hw: np.ndarray, b_hw: np.ndarray) -> float:
    union = int(np.sum(a_hw | b_hw))
    return 1.0 if union == 0 else float(np.sum(a_hw & b_hw)) / union


# ---------------------------------------------------------------------------------------------
# Temporal consistency.


def _temporal(
    evidence: list[_FrameEvidence], flows: _Flows, cfg: SegmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Final masks and scores [T, H, W].

    A neighbour votes at a pixel only where the flow to it is forward-backward consistent (the
    pixel is visible there and the flow is right), and only if the neighbour is not degenerate.
    A reliable frame takes the majority of its own mask and two such votes (scores: the median
    of three); with fewer votes it keeps its own. A degenerate frame takes the mean of the votes
    (mask: mean >= 0.5) where it has any, and its own estimate elsewhere.
    """
    masks_thw = np.stack([ev.mask_hw for ev in evidence])
    scores_thw = np.stack([ev.score_hw for ev in evidence])
    if not cfg.temporal_smoothing:
        return masks_thw, scores_thw
    out_masks, out_scores = masks_thw.copy(), scores_thw.copy()
    for t, ev in enumerate(evidence):
        votes = []  # (mask, score, valid) of each reliable neighbour, warped into frame t
        for s in (t - 1, t + 1):
            if (t, s) not in flows or evidence[s].degenerate is not None:
                continue
            flow_hw2, valid_hw = flows[(t, s)]
            both_hw2 = np.stack([masks_thw[s].astype(np.float32), scores_thw[s]], axis=2)
            warped_hw2 = warp_image(both_hw2, flow_hw2)
            votes.append((warped_hw2[..., 0] >= 0.5, warped_hw2[..., 1], valid_hw))
        if ev.degenerate is None and len(votes) == 2:
            (mask_a, score_a, valid_a), (mask_b, score_b, valid_b) = votes
            both_hw = valid_a & valid_b
            count_hw = masks_thw[t].astype(np.int8) + mask_a + mask_b
            out_masks[t] = np.where(both_hw, count_hw >= 2, masks_thw[t])
            own_hw = scores_thw[t]
            median_hw = np.maximum(
                np.minimum(own_hw, score_a), np.minimum(np.maximum(own_hw, score_a), score_b)
            )
            out_scores[t] = np.where(both_hw, median_hw, own_hw)
        elif ev.degenerate is not None and votes:
            n_hw = sum(valid.astype(np.float32) for _, _, valid in votes)
            mask_mean_hw = sum(np.where(valid, mask, 0.0) for mask, _, valid in votes)
            score_mean_hw = sum(np.where(valid, score, 0.0) for _, score, valid in votes)
            mask_mean_hw, score_mean_hw = (
                x / np.maximum(n_hw, 1.0) for x in (mask_mean_hw, score_mean_hw)
            )
            out_masks[t] = np.where(n_hw > 0, mask_mean_hw >= 0.5, masks_thw[t])
            out_scores[t] = np.where(n_hw > 0, score_mean_hw, scores_thw[t])
    return out_masks, out_scores.astype(np.float32)
