"""Metrics against hand-computed values, and their documented values on empty sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.geometry import axis_angle_33
from services.evaluation.metrics import (
    TAPVID_KEYS,
    ate_rpe,
    boundary_map,
    depth_metrics,
    direction_error_deg,
    flow_epe,
    flow_speed_bias,
    mask_f,
    mask_j,
    psnr,
    psnr_per_frame,
    rotation_error_deg,
    sample_queries,
    ssim,
    ssim_per_frame,
    tapvid_metrics,
    umeyama_sim3,
)

# --- PSNR / SSIM -------------------------------------------------------------------------------


def test_psnr_hand_values_and_empty_cases():
    target = np.full((4, 5, 3), 10, np.uint8)
    pred = np.zeros_like(target)
    assert psnr(pred, target) == pytest.approx(20 * math.log10(255 / 10))
    assert psnr(target, target) == math.inf
    assert math.isnan(psnr(pred, target, mask_hw=np.zeros((4, 5), bool)))
    # Only masked pixels count: one pixel off by 1 in one of three channels -> MSE 1/3.
    pred = target.copy()
    pred[0, 0, 0] = 11
    mask = np.zeros((4, 5), bool)
    mask[0, 0] = True
    assert psnr(pred, target, mask_hw=mask) == pytest.approx(10 * math.log10(255**2 * 3))
    assert psnr(pred, target, max_value=1.0) == pytest.approx(10 * math.log10(60))
    np.testing.assert_allclose(
        psnr_per_frame(np.stack([pred, target]), np.stack([target, target])),
        [10 * math.log10(255**2 * 60), math.inf],
    )
    with pytest.raises(InvalidArgumentError):
        psnr(pred[:2], target)


def _ssim_reference(x: np.ndarray, y: np.ndarray, max_value: float) -> float:
    """Direct per-pixel sums over an explicit 11x11 Gaussian window, interior pixels only."""
    ax = np.arange(-5, 6)
    g = np.exp(-(ax**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    values = []
    for i in range(5, x.shape[0] - 5):
        for j in range(5, x.shape[1] - 5):
            px, py = x[i - 5 : i + 6, j - 5 : j + 6], y[i - 5 : i + 6, j - 5 : j + 6]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cov = (w * px * py).sum() - mx * my
            values.append(
                (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(values))


def test_ssim_hand_values():
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 110.0)
    c1 = (0.01 * 255) ** 2
    # Constant images: no variance, so SSIM is the luminance term alone.
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 24)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, y) == pytest.approx(_ssim_reference(x, y, 255.0), rel=1e-9)
    assert ssim(x, y) == pytest.approx(ssim(y, x))
    # Colour: the mean over channels.
    xy3 = np.stack([x, y, x], axis=-1)
    yx3 = np.stack([y, x, x], axis=-1)
    assert ssim(xy3, yx3) == pytest.approx((2 * ssim(x, y) + 1.0) / 3.0)
    np.testing.assert_allclose(
        ssim_per_frame(np.stack([x, y]), np.stack([x, x])), [1.0, ssim(y, x)]
    )
    assert math.isnan(ssim(np.zeros((0, 0)), np.zeros((0, 0))))
    assert ssim(np.full((4, 4), 7.0), np.full((4, 4), 7.0)) == pytest.approx(1.0)  # tiny image


# --- TAP-Vid -----------------------------------------------------------------------------------


def _one_track(errors_px, gt_occ=(False,) * 4, pred_occ=(False,) * 4):
    """One ground-truth track at (100, 100) on a 256x256 video and a prediction offset in x."""
    gt = np.full((1, 4, 2), 100.0, np.float32)
    pred = gt.copy()
    pred[0, :, 0] += np.asarray(errors_px, np.float32)
    return gt, np.array([gt_occ]), pred, np.array([pred_occ])


def test_tapvid_query_first_hand_computed():
    gt, gt_occ, pred, pred_occ = _one_track([0.0, 0.5, 3.0, 10.0])
    m = tapvid_metrics(np.array([0]), gt, gt_occ, pred, pred_occ, (256, 256), "first")
    # Evaluated frames 1..3 at distances 0.5, 3, 10.
    assert m["pts_within_1"] == m["pts_within_2"] == pytest.approx(1 / 3)
    assert m["pts_within_4"] == m["pts_within_8"] == pytest.approx(2 / 3)
    assert m["pts_within_16"] == 1.0
    assert m["average_pts_within_thresh"] == pytest.approx(0.6)
    # Jaccard: a visible point predicted visible but too far is a FN *and* a FP.
    assert m["jaccard_1"] == pytest.approx(1 / 5)
    assert m["jaccard_4"] == pytest.approx(2 / 4)
    assert m["jaccard_16"] == 1.0
    assert m["average_jaccard"] == pytest.approx((0.2 + 0.2 + 0.5 + 0.5 + 1.0) / 5)
    assert m["occlusion_accuracy"] == 1.0
    assert set(m) == set(TAPVID_KEYS)


def test_tapvid_occlusion_terms_and_strided_mode():
    # Truth: occluded at frame 2. Prediction: exact, but says visible at 2 and occluded at 3.
    gt, gt_occ, pred, pred_occ = _one_track(
        [0.0, 0.0, 0.0, 0.0],
        gt_occ=(False, False, True, False),
        pred_occ=(False, False, False, True),
    )
    m = tapvid_metrics(np.array([0]), gt, gt_occ, pred, pred_occ, (256, 256), "first")
    assert m["occlusion_accuracy"] == pytest.approx(1 / 3)  # frames 1, 2, 3: only 1 right
    assert m["pts_within_1"] == 1.0  # frames 1 and 3 are visible and exact (occlusion ignored)
    assert m["jaccard_1"] == pytest.approx(1 / (2 + 1))  # TP frame 1; FN frame 3; FP frame 2
    # Strided with the query at frame 2 (where the truth is visible in this variant).
    gt, gt_occ, pred, pred_occ = _one_track([5.0, 0.0, 9.0, 0.5])
    m = tapvid_metrics(np.array([2]), gt, gt_occ, pred, pred_occ, (256, 256), "strided")
    # Frames 0, 1, 3 (not the query frame 2) at distances 5, 0, 0.5.
    assert m["pts_within_1"] == pytest.approx(2 / 3)
    assert m["pts_within_8"] == 1.0
    first = tapvid_metrics(np.array([2]), gt, gt_occ, pred, pred_occ, (256, 256), "first")
    assert first["pts_within_1"] == 1.0  # only frame 3 is after the query


def test_tapvid_rescales_to_256_and_thresholds_are_strict():
    gt = np.zeros((1, 2, 2), np.float32)
    pred = gt.copy()
    pred[0, 1] = (2.0, 0.3)  # on a 512 (W) x 128 (H) video: (1.0, 0.6) at 256x256
    occ = np.zeros((1, 2), bool)
    m = tapvid_metrics(np.array([0]), gt, occ, pred, occ, (128, 512), "first")
    # sqrt(1 + 0.36) = 1.166: not within 1, within 2.
    assert m["pts_within_1"] == 0.0 and m["pts_within_2"] == 1.0
    pred[0, 1] = (2.0, 0.0)  # exactly 1.0 at 256: the threshold is strict (< 1)
    m = tapvid_metrics(np.array([0]), gt, occ, pred, occ, (128, 512), "first")
    assert m["pts_within_1"] == 0.0


def test_tapvid_empty_sets_give_nan():
    empty2 = np.zeros((0, 4, 2), np.float32)
    empty = np.zeros((0, 4), bool)
    m = tapvid_metrics(np.zeros(0, int), empty2, empty, empty2, empty, (64, 64), "first")
    assert all(math.isnan(m[k]) for k in TAPVID_KEYS)
    # A query on the last frame has nothing after it in "first" mode.
    gt, gt_occ, pred, pred_occ = _one_track([0.0] * 4)
    m = tapvid_metrics(np.array([3]), gt, gt_occ, pred, pred_occ, (256, 256), "first")
    assert all(math.isnan(m[k]) for k in TAPVID_KEYS)
    # Evaluated frames exist but the truth is occluded on all of them.
    gt, gt_occ, pred, pred_occ = _one_track([0.0] * 4, gt_occ=(False, True, True, True))
    m = tapvid_metrics(np.array([0]), gt, gt_occ, pred, pred_occ, (256, 256), "first")
    assert m["occlusion_accuracy"] == 0.0
    assert math.isnan(m["pts_within_1"]) and m["jaccard_1"] == 0.0  # only false positives
    with pytest.raises(InvalidArgumentError):
        tapvid_metrics(np.array([0]), gt, gt_occ, pred, pred_occ, (256, 256), "last")


def test_sample_queries_first_and_strided():
    occluded = np.array(
        [
            [True, True, False, False, False, False, False],  # first visible at 2
            [True] * 7,  # never visible: no query
            [False, True, True, True, True, False, False],  # visible at 0 and 5
        ]
    )
    tracks = np.arange(3 * 7 * 2, dtype=np.float32).reshape(3, 7, 2)
    q = sample_queries(tracks, occluded, "first")
    np.testing.assert_array_equal(q.track_index_q, [0, 2])
    np.testing.assert_array_equal(q.query_t_q, [2, 0])
    np.testing.assert_array_equal(q.query_xy_q2, [tracks[0, 2], tracks[2, 0]])
    q = sample_queries(tracks, occluded, "strided")  # frames 0 and 5
    np.testing.assert_array_equal(q.track_index_q, [2, 0, 2])
    np.testing.assert_array_equal(q.query_t_q, [0, 5, 5])
    assert q.gt_tracks_qt2.shape == (3, 7, 2) and q.gt_occluded_qt.shape == (3, 7)
    q = sample_queries(tracks, np.ones_like(occluded), "strided")
    assert q.query_t_q.shape == (0,) and q.query_xy_q2.shape == (0, 2)


# --- cameras -----------------------------------------------------------------------------------


def _poses(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2w[i, :3, :3] = axis_angle_33(rng.normal(size=3), rng.uniform(0, 0.5))
        c2w[i, :3, 3] = rng.normal(size=3)
    return c2w


def test_umeyama_recovers_a_known_similarity_and_handles_degenerate_input():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    R = axis_angle_33(np.array([1.0, 2.0, 3.0]), 0.7)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    s, R_est, t = umeyama_sim3(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(R_est, R, atol=1e-10)
    np.testing.assert_allclose(t, [1.0, -2.0, 0.5], atol=1e-10)
    s, R_est, t = umeyama_sim3(src, dst, with_scale=False)
    assert s == 1.0 and np.linalg.det(R_est) == pytest.approx(1.0)
    s, R_est, t = umeyama_sim3(np.zeros((0, 3)), np.zeros((0, 3)))
    assert s == 1.0 and np.array_equal(R_est, np.eye(3)) and np.array_equal(t, np.zeros(3))
    s, R_est, t = umeyama_sim3(np.ones((3, 3)), np.full((3, 3), 4.0))
    assert s == 1.0 and np.array_equal(R_est, np.eye(3))
    np.testing.assert_allclose(t, [3.0, 3.0, 3.0])


def test_ate_rpe_zero_after_sim3_alignment_of_a_transformed_trajectory():
    gt = _poses(10, 0)
    T = np.eye(4)
    T[:3, :3] = axis_angle_33(np.array([0.3, -1.0, 0.2]), 1.1)
    T[:3, 3] = (4.0, 1.0, -2.0)
    pred = T @ gt
    pred[:, :3, 3] *= 0.4  # a different global scale
    m = ate_rpe(pred, gt)
    assert m["ate"] < 1e-9 and m["rpe_trans"] < 1e-9 and m["rpe_rot_deg"] < 1e-5
    assert m["scale"] == pytest.approx(2.5)
    assert ate_rpe(pred, gt, align="none")["ate"] > 1.0
    assert ate_rpe(pred, gt, align="se3")["ate"] > 0.1


def test_ate_rpe_hand_computed_without_alignment():
    gt = np.tile(np.eye(4), (3, 1, 1))
    gt[:, 0, 3] = (0.0, 1.0, 2.0)
    pred = gt.copy()
    pred[1, 1, 3] = 0.3
    m = ate_rpe(pred, gt, align="none")
    assert m["ate"] == pytest.approx(math.sqrt(0.09 / 3))
    assert m["rpe_trans"] == pytest.approx(0.3)  # both steps are off by 0.3 in y
    assert m["rpe_rot_deg"] == 0.0
    # A rotation error of 10 degrees on the last frame shows in the last step only.
    pred = gt.copy()
    pred[2, :3, :3] = axis_angle_33(np.array([0.0, 0.0, 1.0]), math.radians(10))
    m = ate_rpe(pred, gt, align="none")
    assert m["rpe_rot_deg"] == pytest.approx(math.sqrt((0 + 100) / 2))
    assert m["ate"] == 0.0


def test_ate_rpe_empty_and_static_trajectories():
    m = ate_rpe(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    assert all(math.isnan(m[k]) for k in ("ate", "rpe_trans", "rpe_rot_deg"))
    one = np.eye(4)[None]
    m = ate_rpe(one, one)
    assert m["ate"] == 0.0 and math.isnan(m["rpe_trans"])
    still = np.tile(np.eye(4), (4, 1, 1))  # static camera: no spread to fit a scale to
    m = ate_rpe(still, still)
    assert m["ate"] == 0.0 and m["rpe_trans"] == 0.0 and m["scale"] == 1.0


def test_rotation_and_direction_errors():
    R = axis_angle_33(np.array([0.0, 1.0, 0.0]), math.radians(30))
    assert rotation_error_deg(np.eye(3), R) == pytest.approx(30.0)
    assert direction_error_deg(np.array([1.0, 0, 0]), np.array([0, 2.0, 0])) == pytest.approx(90)
    assert math.isnan(direction_error_deg(np.zeros(3), np.ones(3)))


# --- depth and flow ----------------------------------------------------------------------------


def test_depth_metrics_hand_values():
    gt = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.0, 2.0, 2.0])
    m = depth_metrics(pred, gt, align="none")
    assert m["abs_rel"] == pytest.approx(0.5 / 3) and m["delta1"] == pytest.approx(2 / 3)
    assert depth_metrics(pred, gt, align="median")["scale"] == pytest.approx(1.0)
    m = depth_metrics(pred, gt, align="lstsq")
    s = 13 / 9
    assert m["scale"] == pytest.approx(s)
    assert m["abs_rel"] == pytest.approx((abs(s - 1) + abs(2 * s - 2) / 2 + abs(2 * s - 4) / 4) / 3)
    m = depth_metrics(2 * gt, gt)  # median alignment removes the scale
    assert m["abs_rel"] == pytest.approx(0.0) and m["delta1"] == 1.0 and m["scale"] == 0.5
    # Invalid pixels are skipped: zero / NaN / negative depths and the valid mask.
    m = depth_metrics(
        np.array([1.0, np.nan, -1.0, 3.0]),
        np.array([1.0, 1.0, 1.0, 0.0]),
        align="none",
    )
    assert m["abs_rel"] == 0.0 and m["delta1"] == 1.0
    m = depth_metrics(np.ones(3), np.zeros(3))
    assert all(math.isnan(v) for v in m.values())
    m = depth_metrics(pred, gt, valid=np.zeros(3, bool))
    assert all(math.isnan(v) for v in m.values())


def test_flow_epe_hand_values():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]]])
    assert flow_epe(pred, gt) == pytest.approx(2.5)
    assert flow_epe(pred, gt, np.array([[True, False]])) == pytest.approx(5.0)
    assert math.isnan(flow_epe(pred, gt, np.zeros((1, 2), bool)))


def test_flow_speed_bias_hand_values():
    # True motion (2, 0), (0, 4) and none; the flow falls 0.5 short of the first, overshoots the
    # second by 1 and adds a sideways error to both, which does not count.
    gt = np.array([[[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    pred = np.array([[[1.5, 3.0], [-2.0, 5.0], [9.0, 9.0]]])
    assert flow_speed_bias(pred, gt) == pytest.approx(0.25)  # a still pixel has no direction
    assert flow_speed_bias(pred, gt, np.array([[True, False, True]])) == pytest.approx(-0.5)
    assert math.isnan(flow_speed_bias(pred, gt, np.array([[False, False, True]])))


# --- masks -------------------------------------------------------------------------------------


def test_mask_j_hand_values_and_empty_masks():
    gt = np.zeros((6, 6), bool)
    gt[1:3, 1:4] = True  # 6 px
    pred = np.zeros((6, 6), bool)
    pred[1:3, 1:3] = True  # 4 px inside gt
    assert mask_j(pred, gt) == pytest.approx(4 / 6)
    void = np.zeros((6, 6), bool)
    void[1:3, 3] = True  # the 2 px pred misses are void
    assert mask_j(pred, gt, void) == 1.0
    empty = np.zeros((6, 6), bool)
    assert mask_j(empty, empty) == 1.0
    assert mask_j(empty, gt) == 0.0 and mask_j(gt, empty) == 0.0


def test_boundary_map_hand_case():
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0],  # (0, 0) differs from its lower-right neighbour
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],  # last row: only east neighbours count; bottom-right never
        ],
        bool,
    )
    np.testing.assert_array_equal(boundary_map(seg), expected)


def test_mask_f_hand_values_and_empty_masks():
    h, w = 48, 64  # diagonal 80 -> tolerance ceil(0.008 * 80) = 1 px
    cols = np.arange(w)[None, :].repeat(h, 0)
    gt = cols < 20  # boundary: column 19
    assert mask_f(gt, gt) == 1.0
    assert mask_f(cols < 21, gt) == 1.0  # boundary 1 px away: within tolerance
    assert mask_f(cols < 22, gt) == 0.0  # 2 px away: none matches
    assert mask_f(cols < 22, gt, bound_th=2) == 1.0  # tolerance given in pixels
    # Lower half displaced by 10 px: 25 of 58 predicted and 25 of 48 true boundary px match.
    pred = gt.copy()
    pred[24:] = cols[24:] < 30
    assert mask_f(pred, gt) == pytest.approx(2 * 25 / (58 + 48))
    empty = np.zeros((h, w), bool)
    assert mask_f(empty, empty) == 1.0
    assert mask_f(empty, gt) == 0.0 and mask_f(gt, empty) == 0.0
