"""Stripe-free dense depth from anchors, guided filtering, hole filling and resizing."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.depth.quality import ARTEFACT_LIMIT, periodic_artefact_score
from services.depth.upsample import (
    anchor_pixels,
    guide_from_rgb,
    guided_filter,
    push_pull_fill,
    resize_depth,
    upsample_anchor_depth,
)

H, W, S = 192, 256, 8  # image size and subsample period of the constructed scene


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ground-plane-like depth ramp with a box in front of it, and an image of it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    depth = 2.0 + 1.5 * ys / H + 0.3 * np.sin(xs / 37.0)
    box = (xs > 80) & (xs < 171) & (ys > 50) & (ys < 141)
    depth[box] = 1.2
    gray = np.clip(100 + 60 * (depth - 2) + rng.normal(0, 2, (H, W)), 0, 255)
    return depth, np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)


def _anchors_with_jitter(depth: np.ndarray, seed: int = 1) -> np.ndarray:
    """Depth at MASt3R's anchors, each off by a random few percent as alignment leaves it."""
    rng = np.random.default_rng(seed)
    grid = depth[np.ix_(anchor_pixels(H, S), anchor_pixels(W, S))]
    return grid * np.exp(rng.normal(0.0, 0.03, grid.shape))


def test_no_peak_at_the_subsample_period_unlike_nearest_blocks():
    depth, image = _scene()
    coarse = _anchors_with_jitter(depth)
    nearest = np.kron(coarse, np.ones((S, S)))[:H, :W]  # one depth per block, like MASt3R's
    ours = upsample_anchor_depth(coarse, H, W, S, guide_from_rgb(image))
    assert periodic_artefact_score(nearest, S) > 5.0
    assert periodic_artefact_score(ours, S) < ARTEFACT_LIMIT
    # ... and it is closer to the truth than the blocks.
    rel = lambda d: float(np.mean(np.abs(d - depth) / depth))  # noqa: E731
    assert rel(ours) < 0.8 * rel(nearest)


def test_finer_subsample_stays_stripe_free():
    depth, image = _scene(seed=5)
    for s in (2, 4):
        grid = depth[np.ix_(anchor_pixels(H, s), anchor_pixels(W, s))]
        grid = grid * np.exp(np.random.default_rng(s).normal(0.0, 0.03, grid.shape))
        dense = upsample_anchor_depth(grid, H, W, s, guide_from_rgb(image))
        assert periodic_artefact_score(dense, s) < ARTEFACT_LIMIT
        assert periodic_artefact_score(np.kron(grid, np.ones((s, s)))[:H, :W], s) > 5.0


def test_exact_at_anchors_with_a_prior_and_scale_equivariant():
    depth, _ = _scene()
    prior = depth * 0.37  # the network's dense depth: right shape, wrong scale
    coarse = depth[np.ix_(anchor_pixels(H, S), anchor_pixels(W, S))]
    dense = upsample_anchor_depth(coarse, H, W, S, prior_hw=prior)
    np.testing.assert_allclose(dense, depth, rtol=1e-5)  # the prior's edges are kept
    doubled = upsample_anchor_depth(2 * coarse, H, W, S)
    np.testing.assert_allclose(doubled, 2 * upsample_anchor_depth(coarse, H, W, S), rtol=1e-5)


def test_constant_anchors_give_a_constant_map():
    coarse = np.full((len(anchor_pixels(48, 8)), len(anchor_pixels(64, 8))), 3.0)
    np.testing.assert_allclose(upsample_anchor_depth(coarse, 48, 64, 8), 3.0, rtol=1e-6)


def test_bad_anchors_are_filled_from_neighbours():
    coarse = np.full((6, 8), 2.0)
    coarse[2, 3], coarse[4, 5] = -1.0, np.nan
    dense = upsample_anchor_depth(coarse, 48, 64, 8)
    np.testing.assert_allclose(dense, 2.0, rtol=1e-5)
    with pytest.raises(InvalidArgumentError, match="no anchor"):
        upsample_anchor_depth(np.full((6, 8), -1.0), 48, 64, 8)


def test_swapped_grid_is_refused():
    coarse = np.ones((6, 8))  # rows x columns of a 64x48 (W x H) image with subsample 8
    upsample_anchor_depth(coarse, 48, 64, 8)
    with pytest.raises(InvalidArgumentError, match="anchors"):
        upsample_anchor_depth(coarse.T, 48, 64, 8)
    with pytest.raises(InvalidArgumentError, match="anchors"):
        upsample_anchor_depth(coarse, 64, 48, 8)


def test_guided_filter_keeps_an_edge_the_guide_has():
    guide = np.zeros((40, 40, 3), np.float32)
    guide[:, 20:] = 1.0
    src = np.where(np.arange(40) < 20, 1.0, 3.0)[None, :].repeat(40, 0).astype(np.float32)
    out = guided_filter(guide, src, radius=4)
    np.testing.assert_allclose(out, src, atol=1e-2)
    blurred = guided_filter(np.full_like(guide, 0.5), src, radius=4)  # flat guide: a box blur
    assert abs(blurred[20, 19] - 1.0) > 0.5
    np.testing.assert_allclose(guided_filter(guide, np.full((40, 40), 2.5), 4), 2.5, atol=1e-5)


def test_push_pull_keeps_known_values_and_stays_in_range():
    rng = np.random.default_rng(0)
    values = rng.uniform(1.0, 2.0, (33, 47)).astype(np.float32)
    known = rng.random((33, 47)) < 0.1
    filled = push_pull_fill(values, known.astype(np.float32))
    np.testing.assert_array_equal(filled[known], values[known])
    assert filled.min() >= 1.0 - 1e-6 and filled.max() <= 2.0 + 1e-6
    assert np.all(push_pull_fill(values, np.zeros_like(values)) == 0.0)


def test_resize_depth_keeps_shape_order_and_scale():
    depth, image = _scene()
    same = resize_depth(depth, H, W)
    np.testing.assert_allclose(same, depth, rtol=1e-6)
    small = resize_depth(depth, 96, 128)
    assert small.shape == (96, 128)
    up = resize_depth(small, H, W, guide_from_rgb(image))
    assert up.shape == (H, W)
    np.testing.assert_allclose(resize_depth(3 * small, H, W), 3 * resize_depth(small, H, W), 1e-5)
    assert float(np.median(np.abs(up - depth) / depth)) < 0.01
