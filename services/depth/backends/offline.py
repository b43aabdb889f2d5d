"""Offline depth from motion parallax: optical flow + two-view geometry, no weights needed.

Per window of frames (docs/depth.md has the figures):
1. The flow stage's flow (services/depth/flows.py) between consecutive frames and frames
   `flow_stride` apart, both directions, checked forward-backward at the working size.
2. One relative pose per frame pair: essential matrix by RANSAC on the flow correspondences of
   consistent static pixels of both directions, with an assumed focal length, then the Sampson
   least-squares polish of services.common.two_view.
3. A partner frame counts when its rays meet at a large enough angle and no pure rotation
   explains its flow (`_has_parallax`). Each frame is triangulated with its widest-baseline
   partners on every consistent static pixel that agrees with the epipolar geometry; narrower
   partners fill what those miss.
4. Holes (occlusions, inconsistent flow, moving objects) are filled edge-aware (push-pull in log
   depth, guided filter on the image), and a guided filter smooths the flow noise.
5. A frame with no partner (the camera barely translates) gets the documented smooth prior:
   inverse depth linear in the image row, like a ground plane below a level camera, from
   `prior_far` at the top row to `prior_near` at the bottom, confidence PRIOR_CONFIDENCE.
6. Scales are chained frame to frame along the flow t -> t+1 (`chain_scale`, robust least
   squares on the 3D points of both frames), bounded by the ratio of the depth levels; the
   camera poses follow from the same chain.
7. Bundle adjustment (services/depth/bundle.py; opt-in, `bundle_adjust`): the chained poses and
   a sample of each frame's still triangulated points are fitted together to the flow of every
   pair, and each frame is triangulated again with the adjusted poses, which share one scale.
   Frame 0's median depth is 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np

from services.common.geometry import (
    camera_rays_p3,
    focal_intrinsics_33,
    pixel_grid_hw2,
    relative_pose_from_c2w,
)
from services.common.two_view import essential_matrix, refine_pose, sampson_px
from services.depth.backends.base import WindowDepth
from services.depth.bundle import bundle_adjust, collect_observations
from services.depth.flows import PairFlows
from services.depth.quality import warp_to_source
from services.depth.repair import fill_bad_depth
from services.depth.stitch import HUBER_K, MAD_TO_SIGMA, fit_scale_shift
from services.depth.upsample import guide_from_rgb, guided_filter
from services.flow.consistency import forward_backward_consistency

log = logging.getLogger(__name__)

TRIANGULATED_CONFIDENCE = 1.0  # upper bound of a well-triangulated pixel's confidence
FILLED_CONFIDENCE = 0.05  # pixels whose depth was filled from their neighbours
PRIOR_CONFIDENCE = 0.02  # frames whose depth is the smooth prior
MIN_VALID_SHARE = 0.05  # a frame with fewer triangulated pixels falls back to the prior
MIN_MATCHES = 12  # fewest correspondences worth an essential matrix
RANSAC_CONFIDENCE = 0.999
IRLS_ITERATIONS = 20  # reweighting rounds of the robust scale chain
MAX_LINK_CHANGE = 0.25  # largest credible depth change of a surface between neighbouring frames
PARTNER_BASELINE_SHARE = 0.5  # narrower partners (share of the widest baseline) only fill holes


@dataclass(frozen=True)
class OfflineSettings:
    """Parameters of the offline backend, at the working resolution."""

    focal_px: float  # assumed focal length (px) at the working resolution
    fb_threshold_px: float = 1.0  # forward-backward round-trip tolerance of a usable flow vector
    epipolar_px: float = 1.0  # Sampson distance (px) above which a pixel is not static geometry
    min_parallax_deg: float = 0.5  # median ray angle a partner needs (else: the prior)
    min_parallax_px: float = 1.0  # median flow no pure rotation explains a partner needs
    max_matches: int = 3000  # flow correspondences sampled for each essential matrix
    prior_near: float = 1.0  # prior depth at the bottom row (relative units)
    prior_far: float = 3.0  # prior depth at the top row (relative units)
    bundle_adjust: bool = False  # DepthConfig.offline_bundle_adjust (services/depth/bundle.py)


@dataclass
class TwoViewGeometry:
    """Pose of frame b relative to frame a from flow: X_b = R_33 @ X_a + t_3, |t_3| = 1."""

    R_33: np.ndarray
    t_3: np.ndarray
    parallax_deg: float  # median angle between the two rays of the inlier correspondences
    rotation_residual_deg: float  # median ray misfit of the best pure rotation (0: no parallax)


def prior_depth(height: int, width: int, near: float, far: float) -> np.ndarray:
    """The smooth fallback: inverse depth linear in the row, `far` at the top, `near` at the
    bottom (a ground plane seen by a level camera whose horizon lies above the image)."""
    rows = np.linspace(0.0, 1.0, height)[:, None]
    inverse = 1.0 / far + (1.0 / near - 1.0 / far) * rows
    return np.broadcast_to(1.0 / inverse, (height, width)).astype(np.float32)


def _angle_deg(a_p3: np.ndarray, b_p3: np.ndarray) -> np.ndarray:
    cos = np.sum(a_p3 * b_p3, 1) / (np.linalg.norm(a_p3, axis=1) * np.linalg.norm(b_p3, axis=1))
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def best_rotation(rays_a_p3: np.ndarray, rays_b_p3: np.ndarray) -> tuple[np.ndarray, float]:
    """(R, misfit): the pure rotation that best turns rays a onto rays b, and the median angle
    (deg) between them after it.

    A camera that only rotates (or stands still) moves every static point along the infinite
    homography, so the misfit stays at the flow noise; translation leaves parallax that no
    rotation removes. Unlike the essential matrix, this does not degenerate without translation.
    Kabsch fit, refitted twice on the best three quarters (moving objects, bad flow).
    """
    a = rays_a_p3 / np.linalg.norm(rays_a_p3, axis=1, keepdims=True)
    b = rays_b_p3 / np.linalg.norm(rays_b_p3, axis=1, keepdims=True)
    keep = np.ones(len(a), bool)
    for _ in range(3):
        U, _, Vt = np.linalg.svd(b[keep].T @ a[keep])
        R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
        misfit = _angle_deg(a @ R.T, b)
        keep = misfit <= np.quantile(misfit, 0.75)
    return R, float(np.median(misfit))


def _sample_matches(
    flow_hw2: np.ndarray, usable_hw: np.ndarray, max_matches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spread flow correspondences (pts_a, pts_b) [M, 2] among the usable pixels."""
    height, width = usable_hw.shape
    index = np.flatnonzero(usable_hw.ravel())
    index = index[:: max(1, len(index) // max_matches)]
    pts_a = pixel_grid_hw2(height, width).reshape(-1, 2)[index]
    return pts_a, pts_a + flow_hw2.reshape(-1, 2)[index].astype(np.float64)


def rotation_from_flow(
    flow_hw2: np.ndarray, usable_hw: np.ndarray, K_33: np.ndarray, settings: OfflineSettings
) -> TwoViewGeometry | None:
    """The pure-rotation model of a pair (t = 0): a stand-in pose for chaining the depth scale
    where the essential matrix fails (too little translation)."""
    pts_a, pts_b = _sample_matches(flow_hw2, usable_hw, settings.max_matches)
    if len(pts_a) < MIN_MATCHES:
        return None
    R, misfit = best_rotation(camera_rays_p3(K_33, pts_a), camera_rays_p3(K_33, pts_b))
    return TwoViewGeometry(R, np.zeros(3), misfit, misfit)


def pose_from_matches(
    pts_a: np.ndarray, pts_b: np.ndarray, K_33: np.ndarray, settings: OfflineSettings
) -> TwoViewGeometry | None:
    """Relative pose from correspondences [M, 2]: RANSAC essential matrix, cheirality, Sampson
    least-squares polish; None when too few agree."""
    if len(pts_a) < MIN_MATCHES:
        return None
    cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's global generator: keep results repeatable
    E, mask = essential_matrix(pts_a, pts_b, K_33, settings.epipolar_px, RANSAC_CONFIDENCE)
    if E is None or E.shape[0] < 3:
        return None
    n_good, R, t, pose_mask = cv2.recoverPose(E[:3], pts_a, pts_b, K_33, mask=mask.copy())
    keep = pose_mask.ravel() > 0
    if n_good < MIN_MATCHES:
        return None
    R, t = refine_pose(R, t.ravel(), pts_a[keep], pts_b[keep], K_33)
    _, no_translation = best_rotation(camera_rays_p3(K_33, pts_a), camera_rays_p3(K_33, pts_b))
    residual = np.abs(sampson_px(R, t, pts_a, pts_b, K_33))
    inliers = residual < settings.epipolar_px
    rays_a = camera_rays_p3(K_33, pts_a[inliers]) @ R.T
    parallax = _angle_deg(rays_a, camera_rays_p3(K_33, pts_b[inliers])) if inliers.any() else [0.0]
    return TwoViewGeometry(R, t, float(np.median(parallax)), no_translation)


def pair_pose(
    flow_ab_hw2: np.ndarray,
    usable_a_hw: np.ndarray,
    flow_ba_hw2: np.ndarray,
    usable_b_hw: np.ndarray,
    K_33: np.ndarray,
    settings: OfflineSettings,
) -> TwoViewGeometry | None:
    """Pose of b relative to a from the flow in both directions, pooled: one estimate for the
    pair (the two directions cannot disagree) from twice the correspondences."""
    half = max(1, settings.max_matches // 2)
    fwd_a, fwd_b = _sample_matches(flow_ab_hw2, usable_a_hw, half)
    bwd_b, bwd_a = _sample_matches(flow_ba_hw2, usable_b_hw, half)
    return pose_from_matches(
        np.concatenate([fwd_a, bwd_a]), np.concatenate([fwd_b, bwd_b]), K_33, settings
    )


def inverse_pose(pose: TwoViewGeometry | None) -> TwoViewGeometry | None:
    """The same geometry seen from frame b: X_a = R^T X_b - R^T t."""
    if pose is None:
        return None
    return replace(pose, R_33=pose.R_33.T, t_3=-pose.R_33.T @ pose.t_3)


def triangulate(
    flow_hw2: np.ndarray, K_33: np.ndarray, pose: TwoViewGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel of frame a: depth in a, depth in b, parallax angle (deg), Sampson distance (px).

    Midpoint triangulation: z and lambda minimise |z R r_a + t - lambda r_b| (rays with z = 1,
    so z and lambda are camera depths, in units of the baseline |t| = 1).
    """
    height, width = flow_hw2.shape[:2]
    pts_a = pixel_grid_hw2(height, width).reshape(-1, 2)
    pts_b = pts_a + flow_hw2.reshape(-1, 2).astype(np.float64)
    a = camera_rays_p3(K_33, pts_a) @ pose.R_33.T
    b = camera_rays_p3(K_33, pts_b)
    aa, bb, ab = np.sum(a * a, 1), np.sum(b * b, 1), np.sum(a * b, 1)
    rhs_z, rhs_l = -(a @ pose.t_3), b @ pose.t_3
    det = aa * bb - ab * ab
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (bb * rhs_z + ab * rhs_l) / det
        lam = (ab * rhs_z + aa * rhs_l) / det
    sampson = np.abs(sampson_px(pose.R_33, pose.t_3, pts_a, pts_b, K_33))
    shape = (height, width)
    return (
        z.reshape(shape),
        lam.reshape(shape),
        _angle_deg(a, b).reshape(shape),
        sampson.reshape(shape),
    )


def _smooth_radius(height: int, width: int) -> int:
    return max(2, int(round(0.01 * max(height, width))))


def densify(depth_hw: np.ndarray, valid_hw: np.ndarray, guide_hw3: np.ndarray) -> np.ndarray:
    """Fills invalid pixels edge-aware and smooths flow noise with a guided filter (log depth)."""
    filled = fill_bad_depth(np.where(valid_hw, depth_hw, np.nan), ~valid_hw, guide_hw3)
    radius = _smooth_radius(*depth_hw.shape)
    return np.exp(guided_filter(guide_hw3, np.log(filled), radius)).astype(np.float32)


def chain_scale(
    depth_t_hw: np.ndarray,
    depth_next_hw: np.ndarray,
    flow_hw2: np.ndarray,
    usable_hw: np.ndarray,
    K_33: np.ndarray,
    pose: TwoViewGeometry,
) -> tuple[float, float, int]:
    """(b, s, n): scale b of the next depth map and baseline s (in frame t's units) such that
    b * d_next(p') r(p') = R D_t(p) r(p) + s t over usable pixels (robust, Huber IRLS on the
    3D residual relative to the point's distance). n = pixels used (0: nothing to fit)."""
    height, width = depth_t_hw.shape
    xy = pixel_grid_hw2(height, width).reshape(-1, 2)
    moved = xy + flow_hw2.reshape(-1, 2)
    next_at = warp_to_source(depth_next_hw, flow_hw2).ravel()
    ok = usable_hw.ravel() & np.isfinite(next_at) & (next_at > 0)
    if ok.sum() < MIN_MATCHES:
        return 1.0, 0.0, 0
    u = next_at[ok, None] * camera_rays_p3(K_33, moved[ok])  # [N, 3]
    v = (depth_t_hw.ravel()[ok, None] * camera_rays_p3(K_33, xy[ok])) @ pose.R_33.T
    norm = np.linalg.norm(v, axis=1)
    t = np.broadcast_to(pose.t_3, u.shape)
    weights = np.ones(len(u))
    for _ in range(IRLS_ITERATIONS):
        w = np.repeat(weights / norm**2, 3)
        A = np.stack([u.ravel(), -t.ravel()], axis=1)
        AtA = A.T @ (A * w[:, None])
        b, s = np.linalg.solve(AtA + 1e-12 * np.eye(2), A.T @ (w * v.ravel()))
        res = np.linalg.norm(b * u - s * pose.t_3 - v, axis=1) / norm
        delta = max(HUBER_K * MAD_TO_SIGMA * float(np.median(res)), 1e-9)
        weights = np.where(res <= delta, 1.0, delta / np.maximum(res, 1e-300))
    return float(b), float(s), int(ok.sum())


def _directed_flows(
    pair_flows: PairFlows, n_frames: int, settings: OfflineSettings
) -> tuple[dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """{(a, b): (flow a->b, consistent_a)} for both directions of every pair, and the consecutive
    forward flows [n-1, h, w, 2] (for the quality figures)."""
    flows = {}
    for (t0, t1), (fwd_hw2, bwd_hw2) in pair_flows.items():
        fwd_ok, _ = forward_backward_consistency(fwd_hw2, bwd_hw2, settings.fb_threshold_px)
        bwd_ok, _ = forward_backward_consistency(bwd_hw2, fwd_hw2, settings.fb_threshold_px)
        flows[(t0, t1)] = (fwd_hw2, fwd_ok)
        flows[(t1, t0)] = (bwd_hw2, bwd_ok)
    consecutive = np.stack([flows[(t, t + 1)][0] for t in range(n_frames - 1)])
    return flows, consecutive


def _has_parallax(pose: TwoViewGeometry, settings: OfflineSettings) -> bool:
    """Enough translation to triangulate: the essential matrix's rays meet at a large enough
    angle, and no pure rotation explains the flow to within `min_parallax_px` (a rotation
    absorbs much of a sideways motion, so this misfit is a fraction of the parallax; it stays at
    the flow noise, well under a pixel, when the camera does not translate, where the essential
    matrix's translation, and so its ray angles, are noise)."""
    misfit_px = np.deg2rad(pose.rotation_residual_deg) * settings.focal_px
    return pose.parallax_deg >= settings.min_parallax_deg and misfit_px >= settings.min_parallax_px


def _partner_depth(
    flow_hw2: np.ndarray,
    usable_hw: np.ndarray,
    K_33: np.ndarray,
    pose: TwoViewGeometry,
    settings: OfflineSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """(depth, confidence) triangulated with one partner frame; confidence 0 where invalid."""
    z, lam, angle, sampson = triangulate(flow_hw2, K_33, pose)
    with np.errstate(invalid="ignore"):
        valid = (
            usable_hw
            & (z > 0)
            & (lam > 0)
            & np.isfinite(z)
            & (sampson < settings.epipolar_px)
            & (angle > 0.25 * settings.min_parallax_deg)
        )
    # Relative depth error grows as flow error / parallax angle: weight by its inverse square.
    quality = (angle / (4.0 * settings.min_parallax_deg)) ** 2 * np.exp(
        -((sampson / settings.epipolar_px) ** 2)
    )
    conf = np.where(valid, quality, 0.0).astype(np.float32)
    return np.where(valid, z, np.nan).astype(np.float32), conf


def _frame_depth(
    t: int,
    flows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    poses: dict[tuple[int, int], TwoViewGeometry | None],
    static_hw: np.ndarray,
    K_33: np.ndarray,
    guide_hw3: np.ndarray,
    settings: OfflineSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(depth, confidence, triangulated, note) of frame t from its widest-baseline flow partners;
    `triangulated` (bool [H, W]) is all False when the frame got the prior (note says why).

    The partner with the widest baseline sets the scale; the others of similar baseline (e.g.
    the frame before, which still sees the points that leave the frame towards the next one)
    are fitted to it on the pixels both triangulated and merged in, weighted by confidence.
    """
    height, width = static_hw.shape
    partners = [
        (pose.rotation_residual_deg, b)
        for (a, b), pose in poses.items()
        if a == t and pose is not None and _has_parallax(pose, settings)
    ]
    # The misfit of a pure rotation measures the baseline even where the essential matrix is
    # weak (a wrong pose can show a large ray angle): the widest partners are averaged, the
    # narrower ones only fill the pixels those could not triangulate.
    widest = max((m for m, _ in partners), default=0.0)
    prior = prior_depth(height, width, settings.prior_near, settings.prior_far)
    prior_conf = np.full((height, width), PRIOR_CONFIDENCE, np.float32)
    if not partners:
        tried = [p for (a, _), p in poses.items() if a == t and p is not None]
        seen = max((p.parallax_deg for p in tried), default=0.0)
        misfit = max((p.rotation_residual_deg for p in tried), default=0.0)
        why = f"median parallax {seen:.2f} deg, pure-rotation misfit {misfit:.2f} deg"
        return prior, prior_conf, np.zeros((height, width), bool), why
    weighted_log = np.zeros((height, width))
    weight = np.zeros((height, width))
    reference = None
    for misfit, b in sorted(partners, reverse=True):
        flow, consistent = flows[(t, b)]
        depth_b, conf_b = _partner_depth(
            flow, consistent & static_hw, K_33, poses[(t, b)], settings
        )
        if reference is None:
            reference = depth_b
        else:
            depth_b = depth_b * fit_scale_shift(reference, depth_b).scale
        ok = conf_b > 0
        if misfit < PARTNER_BASELINE_SHARE * widest:
            ok &= weight == 0
        weighted_log[ok] += conf_b[ok] * np.log(depth_b[ok])
        weight[ok] += conf_b[ok]
    valid = weight > 0
    if valid.mean() < MIN_VALID_SHARE:
        why = f"only {100 * valid.mean():.1f}% of pixels triangulated"
        return prior, prior_conf, np.zeros((height, width), bool), why
    merged = np.exp(weighted_log / np.maximum(weight, 1e-12))
    depth = densify(merged, valid, guide_hw3)
    conf = np.where(valid, np.minimum(weight, TRIANGULATED_CONFIDENCE), FILLED_CONFIDENCE)
    return depth, conf.astype(np.float32), valid, ""


@dataclass
class _Window:
    """What every step of a window reads: its frames at the working size, the directed flows
    {(a, b): (flow a->b, consistent_a)}, the still pixels, the intrinsics and the settings."""

    frames_thw3: np.ndarray
    flows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    static_thw: np.ndarray
    K_33: np.ndarray
    settings: OfflineSettings


def _triangulate_frames(
    window: _Window, poses: dict[tuple[int, int], TwoViewGeometry | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(depth, confidence, triangulated [n, h, w], why each prior frame got the prior) of every
    frame with the given pair poses (`_frame_depth`)."""
    n, height, width = window.static_thw.shape
    depth = np.zeros((n, height, width), np.float32)
    conf = np.zeros((n, height, width), np.float32)
    triangulated_thw = np.zeros((n, height, width), bool)
    whys = []
    for t in range(n):
        depth[t], conf[t], triangulated_thw[t], why = _frame_depth(
            t,
            window.flows,
            poses,
            window.static_thw[t],
            window.K_33,
            guide_from_rgb(window.frames_thw3[t]),
            window.settings,
        )
        whys.append(why)
    return depth, conf, triangulated_thw, whys


def _chain(
    window: _Window,
    depth: np.ndarray,
    poses: dict[tuple[int, int], TwoViewGeometry | None],
    triangulated_thw: np.ndarray,
    notes: list[str],
) -> tuple[np.ndarray, bool]:
    """Scales each frame's depth (in place) to the frame before along the flow, and the camera
    poses [n, 4, 4] that the same chain gives; False where a link had no credible geometry (the
    poses are then only a starting point)."""
    n = len(depth)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    poses_ok = True
    for t in range(n - 1):
        flow, consistent = window.flows[(t, t + 1)]
        usable = consistent & window.static_thw[t]
        if triangulated_thw[t].any():
            usable &= triangulated_thw[t]
        if triangulated_thw[t + 1].any():  # compare with measured depth, not filled depth
            usable &= warp_to_source(triangulated_thw[t + 1].astype(np.float32), flow) > 0.99
        # The same surface barely changes depth between neighbouring frames: the robust ratio
        # of the depth levels along the flow bounds what the geometry may claim.
        levels = fit_scale_shift(
            np.where(usable, depth[t], np.nan), warp_to_source(depth[t + 1], flow)
        )
        if levels.n_used == 0:
            levels = fit_scale_shift(depth[t], depth[t + 1])
        pose = poses[(t, t + 1)]
        if pose is None:
            pose = rotation_from_flow(flow, usable, window.K_33, window.settings)
            poses_ok = False
        b, s, used = (levels.scale, 0.0, 0)
        if pose is not None:
            b, s, used = chain_scale(depth[t], depth[t + 1], flow, usable, window.K_33, pose)
        if used == 0 or b <= 0 or abs(np.log(b / levels.scale)) > np.log1p(MAX_LINK_CHANGE):
            notes.append(
                f"frames {t}-{t + 1}: the geometry gave no credible scale; chained by depth levels"
            )
            b, s, poses_ok = levels.scale, 0.0, False
        depth[t + 1] *= b
        step = np.eye(4)
        if pose is not None:
            step[:3, :3], step[:3, 3] = pose.R_33, s * pose.t_3
        c2w[t + 1] = c2w[t] @ np.linalg.inv(step)
    return c2w, poses_ok


def _bundle_adjusted(
    window: _Window,
    depth: np.ndarray,
    c2w: np.ndarray,
    poses: dict[tuple[int, int], TwoViewGeometry | None],
    triangulated_thw: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(depth, confidence, c2w): every frame triangulated again with the poses of one
    bundle adjustment (which share one scale, so no chain is needed); None where the adjustment
    had too few points or did not lower the median reprojection error."""
    obs = collect_observations(window.flows, triangulated_thw & window.static_thw, depth)
    if len(obs.point_o) < MIN_MATCHES:
        return None
    adjusted = bundle_adjust(c2w, window.K_33, obs, window.settings.epipolar_px)
    if not adjusted.residual_px_after < adjusted.residual_px_before:
        return None
    relative = {}
    for (a, b), pose in poses.items():
        if pose is not None:
            R_33, t_3 = relative_pose_from_c2w(adjusted.c2w_t44[a], adjusted.c2w_t44[b])
            relative[(a, b)] = replace(pose, R_33=R_33, t_3=t_3)
    depth, conf, _, _ = _triangulate_frames(window, relative)
    log.info(
        "bundle adjustment of %d points (%d flow correspondences): median reprojection error "
        "%.2f -> %.2f px",
        adjusted.n_points,
        adjusted.n_observations,
        adjusted.residual_px_before,
        adjusted.residual_px_after,
    )
    return depth, conf, adjusted.c2w_t44


def run_window(
    frames_thw3: np.ndarray,
    pair_flows: PairFlows,
    settings: OfflineSettings,
    moving_thw: np.ndarray | None = None,
) -> WindowDepth:
    """Depth, confidence, intrinsics and poses of one window (uint8 frames at the working size)
    from the flow of its frame pairs (numbered from the window's first frame, at the same size):
    every consecutive pair, plus the pairs `flow_stride` apart that fit in the window."""
    n, height, width = frames_thw3.shape[:3]
    K_33 = focal_intrinsics_33(height, width, settings.focal_px)
    static_thw = np.ones((n, height, width), bool) if moving_thw is None else ~moving_thw
    flows, consecutive = _directed_flows(pair_flows, n, settings)
    window = _Window(frames_thw3, flows, static_thw, K_33, settings)
    poses = {}
    for a, b in flows:
        if a < b:
            (fwd, fwd_ok), (bwd, bwd_ok) = flows[(a, b)], flows[(b, a)]
            pose = pair_pose(
                fwd, fwd_ok & static_thw[a], bwd, bwd_ok & static_thw[b], K_33, settings
            )
            poses[(a, b)], poses[(b, a)] = pose, inverse_pose(pose)
    depth, conf, triangulated_thw, whys = _triangulate_frames(window, poses)
    prior_t = ~triangulated_thw.any(axis=(1, 2))
    notes = [
        f"frame {t}: camera barely translates ({whys[t]}); smooth prior used"
        for t in np.flatnonzero(prior_t)
    ]
    c2w, links_ok = _chain(window, depth, poses, triangulated_thw, notes)
    poses_ok = links_ok and not prior_t.any()
    if settings.bundle_adjust and not prior_t.any() and n >= 3:
        adjusted = _bundle_adjusted(window, depth, c2w, poses, triangulated_thw)
        if adjusted is None:
            notes.append(
                "bundle adjustment found too few points or no lower reprojection error; "
                "chained poses kept"
            )
        else:
            depth, conf, c2w = adjusted
            poses_ok = True
    unit = float(np.median(depth[0]))
    depth /= unit
    c2w[:, :3, 3] /= unit
    log.debug("offline window of %d frames: %d prior frames", n, int(prior_t.sum()))
    return WindowDepth(
        depth_thw=depth,
        confidence_thw=conf,
        K_33=K_33,
        c2w_t44=c2w if poses_ok else None,
        prior_t=prior_t,
        flow_fwd_t1hw2=consecutive,
        notes=notes,
    )
