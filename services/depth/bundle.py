"""Bundle adjustment of the offline backend's window: every camera and a sample of still points,
fitted together to the flow correspondences of all frame pairs.

Each pair's essential matrix alone leaves its pose a little off (a small baseline trades
translation against rotation), and a triangulated depth map inherits that as a smooth
distortion that changes from frame to frame (on the accuracy suite's orbiting clips most of the
still pixels' depth error at 256x192: docs/depth.md, "Bundle adjustment"). Fitting all poses at
once to the correspondences of the consecutive and the wide-baseline pairs closes the loops
between them (t -> t+1 -> ... -> t+3 against t -> t+3), so one scale and one geometry hold for
the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial.transform import Rotation

from services.common.geometry import camera_rays_p3, pixel_grid_hw2, skew_33

POINTS_PER_FRAME = 400  # still points anchored in each frame (spread over its usable pixels)
MAX_ITERATIONS = 200  # Levenberg-Marquardt steps at most (it stops earlier once the cost stalls)
STALL_SHARE = 1e-6  # a step lowering the cost by less than this share ends the iterations
MAX_DAMPING = 1e8  # no step at this damping lowers the cost: a minimum
OUTLIER_ROUNDS = 2  # fits again without the points left far off (below)
OUTLIER_MEDIANS = 4.0  # a point is dropped beyond this many median residuals (at most scale_px)
OUTLIER_FLOOR_PX = 0.25  # but never for less than a good flow's own error
MIN_POINTS = 50  # fewest points worth another round


@dataclass
class Observations:
    """Flow correspondences of the window's anchored points: point i (pixel `anchor_xy_p2[i]` of
    frame `anchor_t_p[i]`) is seen at `seen_xy_o2[o]` in frame `seen_t_o[o]` for o with
    `point_o[o] == i`."""

    anchor_t_p: np.ndarray  # int [P]
    anchor_xy_p2: np.ndarray  # float64 [P, 2]
    inverse_depth_p: np.ndarray  # float64 [P]: starting value (anchor frame's camera z)
    point_o: np.ndarray  # int [O]
    seen_t_o: np.ndarray  # int [O]
    seen_xy_o2: np.ndarray  # float64 [O, 2]


@dataclass
class BundleResult:
    c2w_t44: np.ndarray  # float64 [n, 4, 4], frame 0 kept where it started
    residual_px_before: float  # median reprojection error of the observations at the start
    residual_px_after: float  # and after the fit
    n_points: int
    n_observations: int


def collect_observations(
    flows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    usable_thw: np.ndarray,
    depth_thw: np.ndarray,
    points_per_frame: int = POINTS_PER_FRAME,
) -> Observations:
    """Up to `points_per_frame` pixels of each frame, evenly spread over its usable (still,
    triangulated) ones, each seen in every partner frame whose flow to it is consistent there.
    `flows` maps (a, b) to (flow a->b [h, w, 2], consistent_a [h, w])."""
    n, height, width = usable_thw.shape
    grid_p2 = pixel_grid_hw2(height, width).reshape(-1, 2)
    anchor_t, anchor_xy, inverse, point, seen_t, seen_xy = [], [], [], [], [], []
    n_points = 0
    for t in range(n):
        index = np.flatnonzero(usable_thw[t].ravel())
        index = index[:: max(1, len(index) // points_per_frame)]
        seen = []
        for (a, b), (flow_hw2, consistent_hw) in flows.items():
            if a != t:
                continue
            target = grid_p2[index] + flow_hw2.reshape(-1, 2)[index].astype(np.float64)
            ok = consistent_hw.ravel()[index]
            ok &= (target[:, 0] >= 0) & (target[:, 0] <= width - 1)
            ok &= (target[:, 1] >= 0) & (target[:, 1] <= height - 1)
            seen.append((b, ok, target))
        seen_once = np.zeros(len(index), bool)
        for _, ok, _ in seen:
            seen_once |= ok
        number = n_points + np.cumsum(seen_once) - 1  # points seen nowhere are left out
        for b, ok, target in seen:
            point.append(number[ok])
            seen_t.append(np.full(int(ok.sum()), b))
            seen_xy.append(target[ok])
        anchor_t.append(np.full(int(seen_once.sum()), t))
        anchor_xy.append(grid_p2[index[seen_once]])
        inverse.append(1.0 / depth_thw[t].ravel()[index[seen_once]].astype(np.float64))
        n_points += int(seen_once.sum())
    cat = np.concatenate
    return Observations(
        anchor_t_p=cat(anchor_t),
        anchor_xy_p2=cat(anchor_xy),
        inverse_depth_p=cat(inverse),
        point_o=cat(point) if point else np.zeros(0, int),
        seen_t_o=cat(seen_t) if seen_t else np.zeros(0, int),
        seen_xy_o2=cat(seen_xy) if seen_xy else np.zeros((0, 2)),
    )


@dataclass
class _Linearised:
    residual_o2: np.ndarray  # projected minus observed pixel
    pose_jacobian: csr_matrix  # [2 O, 6 n]: d residual / d (rotation, centre) of each frame
    depth_jacobian: csr_matrix  # [2 O, P]: d residual / d inverse depth of each point


def _linearise(
    R_t33: np.ndarray,
    centre_t3: np.ndarray,
    inverse_depth_p: np.ndarray,
    K_33: np.ndarray,
    obs: Observations,
) -> _Linearised:
    """Residuals and their derivatives for the perturbations R <- R exp([w]x), C <- C + c."""
    n_frames, n_obs = len(R_t33), len(obs.point_o)
    a, b = obs.anchor_t_p[obs.point_o], obs.seen_t_o
    rho = inverse_depth_p[obs.point_o]
    camera_a_o3 = camera_rays_p3(K_33, obs.anchor_xy_p2[obs.point_o]) / rho[:, None]
    world_o3 = np.einsum("oij,oj->oi", R_t33[a], camera_a_o3) + centre_t3[a]
    Rb_T = np.transpose(R_t33[b], (0, 2, 1))
    camera_b_o3 = np.einsum("oij,oj->oi", Rb_T, world_o3 - centre_t3[b])
    x, y, z = camera_b_o3.T
    z = np.maximum(z, 1e-9)
    fx, fy = K_33[0, 0], K_33[1, 1]
    projected_o2 = np.stack([fx * x / z + K_33[0, 2], fy * y / z + K_33[1, 2]], 1)
    d_proj = np.zeros((n_obs, 2, 3))  # d pixel / d camera_b point
    d_proj[:, 0, 0], d_proj[:, 0, 2] = fx / z, -fx * x / z**2
    d_proj[:, 1, 1], d_proj[:, 1, 2] = fy / z, -fy * y / z**2
    Rba = Rb_T @ R_t33[a]
    blocks = {
        "anchor_rotation": -Rba @ skew_33(camera_a_o3),
        "anchor_centre": Rb_T,
        "seen_rotation": skew_33(camera_b_o3),
        "seen_centre": -Rb_T,
    }
    rows = np.repeat(np.arange(2 * n_obs).reshape(n_obs, 2, 1), 3, axis=2)
    data, row_index, col_index = [], [], []
    for name, block_o33 in blocks.items():
        frame = a if name.startswith("anchor") else b
        offset = 0 if name.endswith("rotation") else 3
        data.append((d_proj @ block_o33).ravel())
        row_index.append(rows.ravel())
        cols = 6 * frame[:, None, None] + offset + np.arange(3)[None, None, :]
        col_index.append(np.broadcast_to(cols, (n_obs, 2, 3)).ravel())
    pose_jacobian = csr_matrix(
        (np.concatenate(data), (np.concatenate(row_index), np.concatenate(col_index))),
        shape=(2 * n_obs, 6 * n_frames),
    )
    d_depth = np.einsum("oij,oj->oi", d_proj @ Rba, -camera_a_o3 / rho[:, None])
    depth_jacobian = csr_matrix(
        (d_depth.ravel(), (np.arange(2 * n_obs), np.repeat(obs.point_o, 2))),
        shape=(2 * n_obs, len(inverse_depth_p)),
    )
    return _Linearised(projected_o2 - obs.seen_xy_o2, pose_jacobian, depth_jacobian)


def _robust_cost(residual_o2: np.ndarray, scale_px: float) -> tuple[float, np.ndarray]:
    """Huber cost of the observations and each one's IRLS weight."""
    norm = np.linalg.norm(residual_o2, axis=1)
    inside = norm <= scale_px
    cost = np.where(inside, 0.5 * norm**2, scale_px * (norm - 0.5 * scale_px))
    weight = np.where(inside, 1.0, scale_px / np.maximum(norm, 1e-12))
    return float(cost.sum()), weight


def _apply(
    R_t33: np.ndarray, centre_t3: np.ndarray, inverse_depth_p: np.ndarray, step: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(R_t33)
    pose = np.concatenate([np.zeros((1, 6)), step[: 6 * (n - 1)].reshape(n - 1, 6)])
    R = R_t33 @ Rotation.from_rotvec(pose[:, :3]).as_matrix()
    inverse = np.maximum(inverse_depth_p + step[6 * (n - 1) :], 1e-6 * inverse_depth_p)
    return R, centre_t3 + pose[:, 3:], inverse


def _levenberg_marquardt(
    R_t33: np.ndarray,
    centre_t3: np.ndarray,
    inverse_depth_p: np.ndarray,
    K_33: np.ndarray,
    obs: Observations,
    scale_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(R, centre, inverse depth, residual [O, 2]) at the minimum of the Huber cost reached from
    the start: Levenberg-Marquardt on the reduced camera system (each point's inverse depth
    eliminated by its Schur complement), frame 0 held where it starts."""
    lin = _linearise(R_t33, centre_t3, inverse_depth_p, K_33, obs)
    cost, weight = _robust_cost(lin.residual_o2, scale_px)
    state = (R_t33, centre_t3, inverse_depth_p)
    damping = 1e-3
    for _ in range(MAX_ITERATIONS):
        w = np.repeat(weight, 2)
        Jp = lin.pose_jacobian[:, 6:]
        Jd = lin.depth_jacobian
        r = lin.residual_o2.ravel()
        H_pp = (Jp.T @ Jp.multiply(w[:, None])).toarray()
        V = (Jd.T @ Jp.multiply(w[:, None])).toarray()  # [P, 6 (n - 1)]
        h_dd = np.asarray(Jd.multiply(Jd).T @ w).ravel()
        g_p = Jp.T @ (w * r)
        g_d = Jd.T @ (w * r)
        improved = False
        while damping < MAX_DAMPING:
            h_damped = h_dd * (1.0 + damping) + 1e-12
            S = H_pp + damping * np.diag(np.diag(H_pp)) - V.T @ (V / h_damped[:, None])
            rhs = -(g_p - V.T @ (g_d / h_damped))
            step_p = np.linalg.lstsq(S, rhs, rcond=None)[0]
            step_d = -(g_d + V @ step_p) / h_damped
            trial = _apply(*state, np.concatenate([step_p, step_d]))
            trial_lin = _linearise(*trial, K_33, obs)
            trial_cost, trial_weight = _robust_cost(trial_lin.residual_o2, scale_px)
            if trial_cost < cost:
                state, lin, weight = trial, trial_lin, trial_weight
                improved = cost - trial_cost > STALL_SHARE * cost
                cost = trial_cost
                damping = max(damping / 3.0, 1e-7)
                break
            damping *= 4.0
        if not improved:
            break
    return (*state, lin.residual_o2)


def _subset(obs: Observations, keep_p: np.ndarray) -> Observations:
    """The observations of the kept points, renumbered."""
    number = np.cumsum(keep_p) - 1
    keep_o = keep_p[obs.point_o]
    return Observations(
        anchor_t_p=obs.anchor_t_p[keep_p],
        anchor_xy_p2=obs.anchor_xy_p2[keep_p],
        inverse_depth_p=obs.inverse_depth_p[keep_p],
        point_o=number[obs.point_o[keep_o]],
        seen_t_o=obs.seen_t_o[keep_o],
        seen_xy_o2=obs.seen_xy_o2[keep_o],
    )


def bundle_adjust(
    start_c2w_t44: np.ndarray, K_33: np.ndarray, obs: Observations, scale_px: float
) -> BundleResult:
    """Poses and point depths that best reproject onto the observations (Huber at `scale_px`),
    frame 0 held where it starts. A point with an observation more than `OUTLIER_MEDIANS` median
    residuals off at the minimum (at most `scale_px`, at least `OUTLIER_FLOOR_PX`: a moving
    object's point, whose motion no camera explains, or a bad flow vector) is dropped and the
    rest fitted again, `OUTLIER_ROUNDS` times: Huber's pull does not fade with distance,
    so such points would bend the geometry. The scale stays free: the caller fixes it (e.g.
    frame 0's median depth); the damping keeps that direction from moving much."""
    n = len(start_c2w_t44)
    R, centre = start_c2w_t44[:, :3, :3].copy(), start_c2w_t44[:, :3, 3].copy()
    inverse = obs.inverse_depth_p.copy()
    residual = _linearise(R, centre, inverse, K_33, obs).residual_o2
    before = float(np.median(np.linalg.norm(residual, axis=1)))
    for round_ in range(OUTLIER_ROUNDS + 1):
        R, centre, inverse, residual = _levenberg_marquardt(R, centre, inverse, K_33, obs, scale_px)
        if round_ == OUTLIER_ROUNDS:
            break
        worst_p = np.zeros(len(inverse))
        np.maximum.at(worst_p, obs.point_o, np.linalg.norm(residual, axis=1))
        typical = OUTLIER_MEDIANS * float(np.median(np.linalg.norm(residual, axis=1)))
        limit = min(scale_px, max(typical, OUTLIER_FLOOR_PX))
        keep = worst_p <= limit
        if keep.all() or keep.sum() < MIN_POINTS:
            break
        obs, inverse = _subset(obs, keep), inverse[keep]
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = R, centre
    after = float(np.median(np.linalg.norm(residual, axis=1)))
    return BundleResult(c2w, before, after, len(obs.anchor_t_p), len(obs.point_o))
