"""Evaluation metrics: image quality, point tracking, camera, depth, flow and masks.

Every metric takes plain numpy arrays and returns Python floats (or a dict of them). Empty
evaluation sets never raise: each function documents the value it returns then (NaN where the
quantity is undefined, DAVIS's conventions for empty masks). docs/evaluation.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.geometry import rotation_angle_deg
from services.common.image_metrics import (
    check_same_shape,
    mask_j,  # noqa: F401  (re-exported with the others)
    psnr,
)

# ---------------------------------------------------------------------------------------------
# Images


def psnr_per_frame(
    pred_t: np.ndarray, target_t: np.ndarray, max_value: float = 255.0
) -> np.ndarray:
    """PSNR of each frame of [T, H, W(, C)] sequences: float64 [T]."""
    check_same_shape("pred", pred_t, target_t)
    return np.array([psnr(p, g, max_value) for p, g in zip(pred_t, target_t, strict=True)])


SSIM_SIGMA = 1.5  # Gaussian window of Wang et al. (2004): sigma 1.5, 11 taps
SSIM_RADIUS = 5


def ssim(pred: np.ndarray, target: np.ndarray, max_value: float = 255.0) -> float:
    """Structural similarity of one image [H, W] or [H, W, C] (Wang et al. 2004).

    Gaussian-weighted local means, variances and covariance (population statistics, sigma 1.5,
    11x11 window, K1 = 0.01, K2 = 0.03), averaged over channels and over pixels at least 5 px from
    the border (the pixels whose window lies inside the image). Images under 11 px on a side are
    averaged over all pixels, with mirrored borders. A 0-pixel image gives NaN.
    """
    check_same_shape("pred", pred, target)
    if pred.size == 0:
        return float("nan")
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        size = 2 * SSIM_RADIUS + 1
        out = cv2.GaussianBlur(img, (size, size), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT_101)
        return out.reshape(img.shape)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    h, w = ssim_map.shape[:2]
    r = SSIM_RADIUS
    if h > 2 * r and w > 2 * r:
        ssim_map = ssim_map[r : h - r, r : w - r]
    return float(ssim_map.mean())


def ssim_per_frame(
    pred_t: np.ndarray, target_t: np.ndarray, max_value: float = 255.0
) -> np.ndarray:
    """SSIM of each frame of [T, H, W(, C)] sequences: float64 [T]."""
    check_same_shape("pred", pred_t, target_t)
    return np.array([ssim(p, g, max_value) for p, g in zip(pred_t, target_t, strict=True)])


# ---------------------------------------------------------------------------------------------
# Point tracking (TAP-Vid)

TAPVID_THRESHOLDS_PX = (1, 2, 4, 8, 16)
TAPVID_SIZE = 256  # metrics are taken with coordinates rescaled to a 256x256 frame
TAPVID_QUERY_STRIDE = 5
TAPVID_KEYS = (
    "average_jaccard",
    "average_pts_within_thresh",
    "occlusion_accuracy",
    *(f"jaccard_{d}" for d in TAPVID_THRESHOLDS_PX),
    *(f"pts_within_{d}" for d in TAPVID_THRESHOLDS_PX),
)
QueryMode = Literal["first", "strided"]


@dataclass
class TapvidQueries:
    """Queries sampled from ground-truth tracks as TAP-Vid does, one row per query."""

    query_t_q: np.ndarray  # int64 [Q] query frame
    query_xy_q2: np.ndarray  # float32 [Q, 2] (x, y) pixels at the query frame
    gt_tracks_qt2: np.ndarray  # float32 [Q, T, 2] the ground-truth track the query came from
    gt_occluded_qt: np.ndarray  # bool [Q, T]
    track_index_q: np.ndarray  # int64 [Q] row of that track in the input


def sample_queries(
    tracks_nt2: np.ndarray,
    occluded_nt: np.ndarray,
    query_mode: QueryMode,
    stride: int = TAPVID_QUERY_STRIDE,
) -> TapvidQueries:
    """TAP-Vid query sampling.

    first: one query per track, at its first visible frame (tracks never visible are dropped).
    strided: at frames 0, stride, 2*stride, ... one query for every track visible there.
    """
    if query_mode not in ("first", "strided"):
        raise InvalidArgumentError("query_mode", f"{query_mode!r}: use 'first' or 'strided'")
    if stride < 1:
        raise InvalidArgumentError("stride", f"{stride} must be >= 1")
    visible_nt = ~occluded_nt.astype(bool)
    if query_mode == "first":
        index_q = np.flatnonzero(visible_nt.any(axis=1))
        query_t_q = np.argmax(visible_nt[index_q], axis=1)
    else:
        frames = np.arange(0, visible_nt.shape[1], stride)
        pairs = [(n, t) for t in frames for n in np.flatnonzero(visible_nt[:, t])]
        index_q = np.array([n for n, _ in pairs], np.int64)
        query_t_q = np.array([t for _, t in pairs], np.int64)
    return TapvidQueries(
        query_t_q=query_t_q.astype(np.int64),
        query_xy_q2=tracks_nt2[index_q, query_t_q].astype(np.float32).reshape(-1, 2),
        gt_tracks_qt2=tracks_nt2[index_q].astype(np.float32),
        gt_occluded_qt=occluded_nt[index_q].astype(bool),
        track_index_q=index_q.astype(np.int64),
    )


def tapvid_metrics(
    query_t_q: np.ndarray,
    gt_tracks_qt2: np.ndarray,
    gt_occluded_qt: np.ndarray,
    pred_tracks_qt2: np.ndarray,
    pred_occluded_qt: np.ndarray,
    image_hw: tuple[int, int],
    query_mode: QueryMode,
) -> dict[str, float]:
    """TAP-Vid metrics of one video, as defined in the TAP-Vid paper and its reference code.

    Coordinates are pixels of an `image_hw` frame; both tracks are rescaled to 256x256 first.
    Evaluated frames: after the query frame ("first") or every frame but it ("strided").
    A prediction is within threshold d when its distance to the ground truth is < d (strict).
    - occlusion_accuracy: predicted occlusion equals ground truth, over evaluated frames.
    - pts_within_d: within d, among ground-truth-visible evaluated frames (occlusion prediction
      ignored); average_pts_within_thresh (delta-avg) is their mean over d = 1, 2, 4, 8, 16.
    - jaccard_d: TP / (TP + FN + FP): TP = visible in both and within d; FP = predicted visible
      but occluded in truth or not within d; FN = visible in truth but not TP (a visible point
      predicted visible but too far is both FN and FP); average_jaccard is their mean.
    A video with no evaluated frame (no query, or queries on the last frame in "first" mode)
    gives NaN for every metric; no ground-truth-visible evaluated frame gives NaN for
    pts_within_* and jaccard_* (with an empty predicted set).
    """
    if query_mode not in ("first", "strided"):
        raise InvalidArgumentError("query_mode", f"{query_mode!r}: use 'first' or 'strided'")
    check_same_shape("pred_tracks_qt2", pred_tracks_qt2, gt_tracks_qt2)
    check_same_shape("pred_occluded_qt", pred_occluded_qt, gt_occluded_qt)
    h, w = image_hw
    scale_2 = np.array([TAPVID_SIZE / w, TAPVID_SIZE / h])
    n_frames = gt_occluded_qt.shape[1]
    frame_t = np.arange(n_frames)
    query = np.asarray(query_t_q, np.int64)[:, None]
    evaluated = frame_t[None] > query if query_mode == "first" else frame_t[None] != query
    visible = ~gt_occluded_qt.astype(bool)
    pred_visible = ~pred_occluded_qt.astype(bool)
    dist2 = np.sum(((pred_tracks_qt2 - gt_tracks_qt2) * scale_2) ** 2, axis=-1)

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    n_visible = int(np.sum(visible & evaluated))
    out = {
        "occlusion_accuracy": ratio(
            int(np.sum((visible == pred_visible) & evaluated)), int(evaluated.sum())
        )
    }
    for d in TAPVID_THRESHOLDS_PX:
        within = dist2 < d * d
        correct = int(np.sum(within & visible & evaluated))
        out[f"pts_within_{d}"] = ratio(correct, n_visible)
        true_pos = int(np.sum(within & visible & pred_visible & evaluated))
        # TP + FN is every visible evaluated point; a visible point predicted visible but too far
        # is both a false negative and a false positive, so it counts twice (as in TAP-Vid).
        false_pos = int(np.sum(pred_visible & (~visible | ~within) & evaluated))
        out[f"jaccard_{d}"] = ratio(true_pos, n_visible + false_pos)
    out["average_jaccard"] = float(np.mean([out[f"jaccard_{d}"] for d in TAPVID_THRESHOLDS_PX]))
    out["average_pts_within_thresh"] = float(
        np.mean([out[f"pts_within_{d}"] for d in TAPVID_THRESHOLDS_PX])
    )
    return out


# ---------------------------------------------------------------------------------------------
# Cameras


def umeyama_sim3(
    src_n3: np.ndarray, dst_n3: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares (scale, R, t) with dst ~ scale * R @ src + t (Umeyama 1991).

    Degenerate inputs keep scale 1 and R = I: no points give the identity, and points without
    spread (one point, or all equal) give the pure translation between the means.
    """
    src = np.asarray(src_n3, np.float64).reshape(-1, 3)
    dst = np.asarray(dst_n3, np.float64).reshape(-1, 3)
    check_same_shape("src_n3", src, dst)
    if len(src) == 0:
        return 1.0, np.eye(3), np.zeros(3)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = float(np.mean(np.sum(src_c**2, axis=1)))
    if var_s < 1e-18:
        return 1.0, np.eye(3), mu_d - mu_s
    cov_33 = dst_c.T @ src_c / len(src)
    U, D, Vt = np.linalg.svd(cov_33)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    return scale, R, mu_d - scale * R @ mu_s


def rotation_error_deg(R_a_33: np.ndarray, R_b_33: np.ndarray) -> float:
    """Angle of the rotation between two orientations, in degrees."""
    return rotation_angle_deg(R_a_33.T @ R_b_33)


def direction_error_deg(a_3: np.ndarray, b_3: np.ndarray) -> float:
    """Angle between two vectors in degrees; NaN when either has zero length."""
    na, nb = np.linalg.norm(a_3), np.linalg.norm(b_3)
    if na < 1e-12 or nb < 1e-12:
        return float("nan")
    return float(np.rad2deg(np.arccos(np.clip(np.dot(a_3, b_3) / (na * nb), -1.0, 1.0))))


def ate_rpe(
    pred_c2w_t44: np.ndarray,
    gt_c2w_t44: np.ndarray,
    align: Literal["sim3", "se3", "none"] = "sim3",
    delta: int = 1,
) -> dict[str, float]:
    """Absolute and relative camera errors after aligning predicted to ground-truth centres.

    The alignment (Umeyama on camera centres: Sim(3), SE(3) or none) is applied to the whole
    predicted poses. ate: RMSE of camera-centre errors (ground-truth units). rpe_trans and
    rpe_rot_deg: RMSE over frame pairs (i, i + delta) of the translation and rotation angle of
    inv(gt_i^-1 gt_j) @ (pred_i^-1 pred_j). Also returns the alignment scale.
    No frames give NaN everywhere; fewer than delta + 1 frames give NaN RPE.
    """
    check_same_shape("pred_c2w_t44", pred_c2w_t44, gt_c2w_t44)
    if align not in ("sim3", "se3", "none"):
        raise InvalidArgumentError("align", f"{align!r}: use sim3, se3 or none")
    if delta < 1:
        raise InvalidArgumentError("delta", f"{delta} must be >= 1")
    n = len(gt_c2w_t44)
    if align == "none":
        scale, R, t = 1.0, np.eye(3), np.zeros(3)
    else:
        scale, R, t = umeyama_sim3(
            pred_c2w_t44[:, :3, 3], gt_c2w_t44[:, :3, 3], with_scale=align == "sim3"
        )
    aligned = np.array(pred_c2w_t44, np.float64, copy=True)
    aligned[:, :3, :3] = R @ aligned[:, :3, :3]
    aligned[:, :3, 3] = scale * aligned[:, :3, 3] @ R.T + t
    nan = float("nan")
    ate = (
        float(np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - gt_c2w_t44[:, :3, 3]) ** 2, axis=1))))
        if n
        else nan
    )
    trans, rots = [], []
    for i in range(n - delta):
        rel_gt = np.linalg.inv(gt_c2w_t44[i]) @ gt_c2w_t44[i + delta]
        rel_pred = np.linalg.inv(aligned[i]) @ aligned[i + delta]
        err = np.linalg.inv(rel_gt) @ rel_pred
        trans.append(np.linalg.norm(err[:3, 3]))
        rots.append(rotation_angle_deg(err[:3, :3]))
    rms = lambda v: float(np.sqrt(np.mean(np.square(v)))) if v else nan  # noqa: E731
    return {"ate": ate, "rpe_trans": rms(trans), "rpe_rot_deg": rms(rots), "scale": scale}


# ---------------------------------------------------------------------------------------------
# Depth and flow


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    align: Literal["median", "lstsq", "none"] = "median",
) -> dict[str, float]:
    """abs_rel = mean(|s*pred - gt| / gt) and delta1 = fraction with max(s*pred/gt, gt/(s*pred))
    < 1.25, over pixels with finite positive gt and pred (and `valid`, if given).

    One scale s for all the given pixels: median(gt) / median(pred) ("median"), the least-squares
    argmin ||s*pred - gt||^2 = sum(pred*gt) / sum(pred^2) ("lstsq"), or 1 ("none"). Call it per
    frame for per-frame alignment. No valid pixel gives NaN for all three values.
    """
    check_same_shape("pred", pred, gt)
    if align not in ("median", "lstsq", "none"):
        raise InvalidArgumentError("align", f"{align!r}: use median, lstsq or none")
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(p) & np.isfinite(g) & (p > 0) & (g > 0)
    if valid is not None:
        check_same_shape("valid", valid, gt)
        ok &= valid.astype(bool)
    p, g = p[ok], g[ok]
    if p.size == 0:
        return {"abs_rel": float("nan"), "delta1": float("nan"), "scale": float("nan")}
    if align == "median":
        scale = float(np.median(g) / np.median(p))
    elif align == "lstsq":
        scale = float(np.sum(p * g) / np.sum(p * p))
    else:
        scale = 1.0
    p = p * scale
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(ratio < 1.25)),
        "scale": scale,
    }


def flow_epe(pred_hw2: np.ndarray, gt_hw2: np.ndarray, valid_hw: np.ndarray | None = None) -> float:
    """Mean end-point error (Euclidean distance in pixels) over valid pixels; NaN when none."""
    check_same_shape("pred_hw2", pred_hw2, gt_hw2)
    err = np.linalg.norm(pred_hw2.astype(np.float64) - gt_hw2.astype(np.float64), axis=-1)
    if valid_hw is not None:
        check_same_shape("valid_hw", valid_hw, err)
        err = err[valid_hw.astype(bool)]
    err = err[np.isfinite(err)]
    return float(err.mean()) if err.size else float("nan")


def flow_speed_bias(
    pred_hw2: np.ndarray, gt_hw2: np.ndarray, valid_hw: np.ndarray | None = None
) -> float:
    """Mean signed error along the true motion (px) over valid moving pixels: negative where the
    flow falls short of the motion, as chained tracks then lag behind. NaN when no valid pixel
    moves."""
    check_same_shape("pred_hw2", pred_hw2, gt_hw2)
    gt_hw2 = gt_hw2.astype(np.float64)
    speed_hw = np.linalg.norm(gt_hw2, axis=-1)
    along_hw = ((pred_hw2.astype(np.float64) - gt_hw2) * gt_hw2).sum(-1) / np.maximum(
        speed_hw, 1e-12
    )
    usable_hw = (speed_hw > 0) & np.isfinite(along_hw)
    if valid_hw is not None:
        check_same_shape("valid_hw", valid_hw, speed_hw)
        usable_hw &= valid_hw.astype(bool)
    return float(along_hw[usable_hw].mean()) if usable_hw.any() else float("nan")


# ---------------------------------------------------------------------------------------------
# Masks (DAVIS J and F)

DAVIS_BOUND_TH = 0.008  # boundary tolerance: fraction of the image diagonal (or pixels if >= 1)


def boundary_map(mask_hw: np.ndarray) -> np.ndarray:
    """1-px boundary of a binary mask, as DAVIS's seg2bmap: a pixel is on the boundary when it
    differs from its right, lower or lower-right neighbour (last row/column: from the one
    neighbour inside the image; the bottom-right pixel never)."""
    seg = mask_hw.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def _disk(radius: int) -> np.ndarray:
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xs * xs + ys * ys <= radius * radius).astype(np.uint8)


def mask_f(
    pred_hw: np.ndarray,
    gt_hw: np.ndarray,
    void_hw: np.ndarray | None = None,
    bound_th: float = DAVIS_BOUND_TH,
) -> float:
    """Boundary F-measure (DAVIS): boundaries match within ceil(bound_th * diagonal) pixels.

    precision = predicted boundary pixels near a true boundary / predicted boundary pixels,
    recall = true boundary pixels near a predicted boundary / true boundary pixels,
    F = 2PR / (P + R). Empty boundaries (DAVIS conventions): both empty -> 1.0; only the
    prediction empty -> P = 1, R = 0 -> 0.0; only the truth empty -> 0.0.
    """
    check_same_shape("pred_hw", pred_hw, gt_hw)
    keep = np.ones(gt_hw.shape, bool) if void_hw is None else ~void_hw.astype(bool)
    radius = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.hypot(*gt_hw.shape)))
    pred_b = boundary_map(pred_hw.astype(bool) & keep)
    gt_b = boundary_map(gt_hw.astype(bool) & keep)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    disk = _disk(radius)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), disk).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), disk).astype(bool)
    precision = float(np.sum(pred_b & gt_dil)) / n_pred
    recall = float(np.sum(gt_b & pred_dil)) / n_gt
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)
