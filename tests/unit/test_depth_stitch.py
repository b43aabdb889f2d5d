"""Window stitching: robust scale (and shift) fits and the assembly of overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from services.depth.stitch import WindowPart, average_rigid, fit_scale_shift, stitch_windows


def _depth_thw(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(1.0, 5.0, (n, 12, 16)).astype(np.float32)


def test_scale_is_exact_despite_outliers():
    rng = np.random.default_rng(1)
    new = rng.uniform(1.0, 4.0, 4000)
    ref = 2.5 * new
    outliers = rng.random(4000) < 0.3  # e.g. a moving object in the overlap
    ref[outliers] *= rng.uniform(0.3, 3.0, outliers.sum())
    fit = fit_scale_shift(ref, new)
    assert fit.scale == pytest.approx(2.5, rel=1e-6)
    assert fit.shift == 0.0 and fit.n_used == 4000
    assert 0.6 < fit.inlier_share <= 0.75  # the outliers are seen as such


def test_scale_and_shift_are_exact():
    rng = np.random.default_rng(2)
    new = rng.uniform(1.0, 4.0, 3000)
    ref = 1.7 * new + 0.4
    ref[:300] = 50.0  # 10% gross outliers
    fit = fit_scale_shift(ref, new, with_shift=True)
    assert fit.scale == pytest.approx(1.7, rel=1e-6)
    assert fit.shift == pytest.approx(0.4, abs=1e-6)


def test_fit_ignores_bad_depths_and_zero_weights():
    new = np.array([1.0, 2.0, -1.0, np.nan, 3.0, 4.0])
    ref = np.array([3.0, 6.0, 5.0, 2.0, 100.0, 12.0])
    weight = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    fit = fit_scale_shift(ref, new, weight)
    assert fit.scale == pytest.approx(3.0) and fit.n_used == 3
    empty = fit_scale_shift(np.full(3, np.nan), np.ones(3))
    assert (empty.scale, empty.shift, empty.n_used) == (1.0, 0.0, 0)


def _random_c2w(rng: np.random.Generator) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    c2w[:3, 3] = rng.normal(size=3)
    return c2w


def test_stitched_windows_recover_one_scale_and_one_world():
    rng = np.random.default_rng(3)
    n_frames = 14
    truth = _depth_thw(n_frames)
    truth_c2w = np.stack([_random_c2w(rng) for _ in range(n_frames)])
    spans = [(0, 6), (4, 10), (8, 14)]
    scales = [1.0, 3.7, 0.45]  # each window has its own scale ...
    parts = []
    for (start, stop), scale in zip(spans, scales, strict=True):
        world = _random_c2w(rng)  # ... and its own world frame
        c2w = world @ truth_c2w[start:stop]
        c2w[:, :3, 3] *= scale
        conf = np.ones((stop - start, 12, 16), np.float32)
        parts.append(WindowPart(start, scale * truth[start:stop], conf, c2w))
    out = stitch_windows(parts, n_frames)
    np.testing.assert_allclose(out.depth_thw, truth, rtol=1e-5)
    assert [f.scale for f in out.fits] == pytest.approx([1.0, 1 / 3.7, 1 / 0.45], rel=1e-5)
    # Poses: the first window's world frame and scale throughout.
    first_world = parts[0].c2w_t44[0] @ np.linalg.inv(truth_c2w[0])
    np.testing.assert_allclose(out.c2w_t44, first_world @ truth_c2w, atol=1e-9)
    assert out.notes == []


def test_overlap_is_blended_not_switched():
    ones = np.ones((4, 2, 2), np.float32)
    a = WindowPart(0, 1.0 * ones, ones)
    # The second window disagrees in shape (not only in scale) on the overlap frames 2 and 3.
    b_depth = np.stack([ones[0], ones[0] * 1.0, ones[0] * 2.0, ones[0] * 2.0])
    b_depth[:2, 0, 0] = 3.0
    b = WindowPart(2, b_depth, ones)
    out = stitch_windows([a, b], 6)
    scale = out.fits[1].scale
    assert scale == pytest.approx(1.0)
    # Frame 2 (first overlap frame) leans to the first window, frame 3 to the second.
    assert out.depth_thw[2, 0, 0] == pytest.approx((2 / 3) * 1.0 + (1 / 3) * 3.0)
    assert out.depth_thw[3, 0, 0] == pytest.approx((1 / 3) * 1.0 + (2 / 3) * 3.0)
    assert out.depth_thw[4, 0, 0] == pytest.approx(2.0)
    assert out.c2w_t44 is None  # the windows had no poses


def test_windows_must_overlap_and_cover():
    ones = np.ones((3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="shares no frame"):
        stitch_windows([WindowPart(0, ones, ones), WindowPart(3, ones, ones)], 6)
    with pytest.raises(ValueError, match="cover"):
        stitch_windows([WindowPart(0, ones, ones)], 5)


def test_no_usable_overlap_is_reported():
    ones = np.ones((3, 2, 2), np.float32)
    zero_conf = np.zeros_like(ones)
    out = stitch_windows([WindowPart(0, ones, zero_conf), WindowPart(2, 2 * ones, ones)], 5)
    assert out.fits[1].n_used == 0 and "scale was kept at 1" in out.notes[0]


def test_average_rigid_of_equal_transforms_is_that_transform():
    rng = np.random.default_rng(4)
    c2w = _random_c2w(rng)
    np.testing.assert_allclose(average_rigid(np.stack([c2w, c2w, c2w])), c2w, atol=1e-12)
