"""Non-positive depth repair and the quality figures, on constructed windows."""

from __future__ import annotations

import numpy as np
import pytest

from services.depth.quality import (
    bad_depth_mask,
    nonpositive_share,
    periodic_artefact_score,
    scale_drift,
    scale_ratios,
)
from services.depth.repair import BORROWED_CONFIDENCE, fill_bad_depth, repair_window


def _window(n: int = 4, height: int = 40, width: int = 56) -> np.ndarray:
    """A smooth positive depth ramp per frame (a slanted floor), float32 [n, H, W]."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = 2.0 + ys / height + 0.5 * xs / width
    return np.stack([base * (1 + 0.05 * t) for t in range(n)]).astype(np.float32)


def test_window_with_negative_depths_is_repaired_and_reported():
    truth = _window()
    depth = truth.copy()
    rng = np.random.default_rng(0)
    holes = rng.random(depth.shape) < 0.05
    depth[holes] = -rng.uniform(0.1, 2.0, holes.sum())  # what MASt3R's alignment can return
    depth[1, 5:9, 5:9] = np.nan
    conf = np.ones_like(depth)
    out = repair_window(depth, conf, label="window 0-3")
    bad = bad_depth_mask(depth)
    assert not bad_depth_mask(out.depth_thw).any()
    np.testing.assert_array_equal(out.depth_thw[~bad], truth[~bad])  # good pixels untouched
    assert float(np.max(np.abs(out.depth_thw[bad] - truth[bad]) / truth[bad])) < 0.05
    assert np.all(out.confidence_thw[bad] == 0.0) and np.all(out.confidence_thw[~bad] == 1.0)
    np.testing.assert_allclose(out.bad_share_t, bad.reshape(4, -1).mean(axis=1))
    assert out.failed_t == [] and len(out.notes) == 4
    assert all(note.startswith("window 0-3 frame") and "filled" in note for note in out.notes)
    assert f"filled {int(bad[1].sum())} " in out.notes[1]


def test_guided_fill_does_not_leak_across_an_image_edge():
    depth = np.full((30, 40), 2.0, np.float32)
    depth[:, 20:] = 6.0  # a wall behind an object, and the image shows the edge
    guide = np.zeros((30, 40, 3), np.float32)
    guide[:, 20:] = 1.0
    bad = np.zeros((30, 40), bool)
    bad[10:20, 14:26] = True  # a hole straddling the edge
    filled = fill_bad_depth(np.where(bad, -1.0, depth), bad, guide)
    assert float(np.max(np.abs(filled - depth) / depth)) < 0.15
    blind = fill_bad_depth(np.where(bad, -1.0, depth), bad)  # without the image
    assert float(np.max(np.abs(blind - depth) / depth)) > 0.3


def test_mirrored_window_is_flipped():
    truth = _window()
    out = repair_window(-truth, np.ones_like(truth), label="w")
    np.testing.assert_array_equal(out.depth_thw, truth)
    assert "mirrored" in out.notes[0] and out.failed_t == []


def test_too_broken_frame_is_reported_then_borrowed_as_last_resort():
    truth = _window()
    depth = truth.copy()
    depth[2, :30] = 0.0  # 75% of frame 2 is unusable
    conf = np.full_like(depth, 0.8)
    out = repair_window(depth, conf, max_fill_share=0.3, label="w")
    assert out.failed_t == [2] and "frames too broken" in out.notes[-1]
    assert out.bad_share_t[2] == pytest.approx(0.75)
    last = repair_window(depth, conf, max_fill_share=0.3, label="w", borrow=True)
    assert last.failed_t == []
    np.testing.assert_array_equal(last.depth_thw[2], truth[1])  # nearest good frame (ties: earlier)
    np.testing.assert_allclose(last.confidence_thw[2], 0.8 * BORROWED_CONFIDENCE)
    assert "took the depth of frame 1" in last.notes[-1]


def test_nonpositive_share_counts_zero_negative_and_nonfinite():
    depth = np.array([1.0, 0.0, -2.0, np.nan, np.inf, 3.0, 4.0, 5.0])
    assert nonpositive_share(depth) == pytest.approx(4 / 8)
    assert nonpositive_share(np.zeros(0)) == 0.0


def test_scale_ratios_same_pixel_and_along_the_flow():
    base = _window(1)[0]
    depth = np.stack([base, 1.1 * base, 1.1 * base])
    np.testing.assert_allclose(scale_ratios(depth), [1.1, 1.0], rtol=1e-6)
    assert scale_drift(scale_ratios(depth)) == pytest.approx(0.1, rel=1e-5)
    # The camera pans 3 px: the next frame shows the same surface shifted; with the flow the
    # ratio is exactly 1 (no drift), without it the slanted surface looks like drift.
    moved = np.roll(base, -3, axis=1)
    pan = np.stack([base, moved])
    flow = np.zeros((1, *base.shape, 2), np.float32)
    flow[..., 0] = -3.0
    static = np.ones((2, *base.shape), bool)
    static[:, :, -4:] = False  # pixels whose surface leaves the frame
    np.testing.assert_allclose(scale_ratios(pan, static, flow), [1.0], rtol=1e-6)
    assert abs(scale_ratios(pan, static)[0] - 1.0) > 1e-3
    assert np.isnan(scale_ratios(np.stack([base, -base]))[0])
    assert np.isnan(scale_drift(np.array([np.nan])))


def test_artefact_score_sees_blocks_not_noise_or_edges():
    rng = np.random.default_rng(0)
    noise = np.exp(rng.normal(0, 0.05, (96, 128))) + 1.0
    assert periodic_artefact_score(noise, 8) < 2.0
    blocks = np.kron(rng.uniform(1, 3, (12, 16)), np.ones((8, 8)))
    assert periodic_artefact_score(blocks, 8) > 10.0
    stripes = 2.0 + 0.05 * (np.arange(128) % 4 == 0)[None, :].repeat(96, 0)
    assert periodic_artefact_score(stripes, 4) > 10.0
    assert periodic_artefact_score(np.full((96, 128), -1.0), 8) == 1.0  # nothing to see
