"""Motion segmentation on synthetic scenes with exact ground truth, degenerate inputs, bad inputs.

Figures (J = mean IoU, F = mean DAVIS boundary F over 8 frames, 192x256, scene seed 0, default
config, exact GT flow / GT flow + N(0, 0.5 px) per component) are stated in docs/segment.md and
beside each case; the bounds sit a little under them.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.geometry import rigid_flow_hw2
from services.depth.config import MEASURED_DEPTH_CONFIDENCE
from services.evaluation.fit_suite import pipeline_flow_and_depth, suite_clip
from services.evaluation.metrics import mask_f, mask_j
from services.flow.engine import FlowConfig, compute_flow
from services.pipeline.config import PipelineConfig
from services.segment.engine import SegmentConfig, segment_motion, validate_user_masks
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene

H, W, T = 192, 256, 8
NOISE_PX = 0.5


@pytest.fixture(scope="module")
def scenes() -> dict[str, SyntheticScene]:
    return {
        camera: make_scene(SceneConfig(height=H, width=W, n_frames=T, camera=camera, seed=0))
        for camera in ("moving", "rotation", "static")
    }


def noisy(scene: SyntheticScene, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    fwd = scene.flow_fwd_t1hw2 + rng.normal(0, sigma, scene.flow_fwd_t1hw2.shape)
    bwd = scene.flow_bwd_t1hw2 + rng.normal(0, sigma, scene.flow_bwd_t1hw2.shape)
    return fwd.astype(np.float32), bwd.astype(np.float32)


def j_and_f(masks_thw: np.ndarray, gt_thw: np.ndarray) -> tuple[float, float]:
    j = np.mean([mask_j(p, g) for p, g in zip(masks_thw, gt_thw, strict=True)])
    f = np.mean([mask_f(p, g) for p, g in zip(masks_thw, gt_thw, strict=True)])
    return float(j), float(f)


# camera, flow noise (px), depth given, expected model (exact flow only), min J, min F
CASES = [
    ("moving", 0.0, False, "fundamental", 0.84, 0.85),  # measured 0.870, 0.879
    ("moving", NOISE_PX, False, None, 0.50, 0.68),  # 0.543, 0.716
    ("moving", 0.0, True, "fundamental", 0.97, 0.97),  # 1.000, 1.000
    ("moving", NOISE_PX, True, None, 0.97, 0.97),  # 0.998, 1.000
    ("rotation", 0.0, False, "homography", 0.97, 0.97),  # 1.000, 1.000
    ("rotation", NOISE_PX, False, None, 0.97, 0.97),  # 0.998, 1.000
    ("static", 0.0, False, "static", 0.97, 0.97),  # 1.000, 1.000
    ("static", NOISE_PX, False, None, 0.97, 0.97),  # 0.998, 1.000
]


@pytest.mark.parametrize(("camera", "noise", "with_depth", "model", "min_j", "min_f"), CASES)
def test_synthetic_j_and_f(scenes, camera, noise, with_depth, model, min_j, min_f):
    scene = scenes[camera]
    fwd, bwd = noisy(scene, noise)
    depth = scene.depth_thw if with_depth else None
    result = segment_motion(fwd, bwd, SegmentConfig(), depth_thw=depth)
    assert result.masks_thw.shape == (T, H, W) and result.masks_thw.dtype == bool
    assert result.scores_thw.dtype == np.float32
    assert result.scores_thw.min() >= 0.0 and result.scores_thw.max() <= 1.0
    j, f = j_and_f(result.masks_thw, scene.moving_thw)
    assert j >= min_j and f >= min_f, (j, f)
    assert all(s.degenerate is None for s in result.stats)
    assert all(s.depth_checked == with_depth for s in result.stats)
    if model is not None:
        assert {s.motion_model for s in result.stats} == {model}


def test_depth_resolves_motion_along_epipolar_lines(scenes):
    """The object's forward flow is replaced by the flow a still point at 0.6x its depth would
    have: that motion runs exactly along the epipolar lines, so the Sampson error cannot see
    it. Depth (5% noise, unknown scale) pins where a still point must land."""
    scene = scenes["moving"]
    fwd = scene.flow_fwd_t1hw2.copy()
    for t in range(T - 1):
        fake_hw2 = rigid_flow_hw2(
            0.6 * scene.depth_thw[t], scene.K_33, scene.c2w_t44[t], scene.c2w_t44[t + 1]
        )
        fwd[t][scene.moving_thw[t]] = fake_hw2[scene.moving_thw[t]]
    depth_thw = (
        scene.depth_thw
        * 3.7
        * np.exp(np.random.default_rng(2).normal(0.0, 0.05, scene.depth_thw.shape))
    )
    flat = segment_motion(fwd, scene.flow_bwd_t1hw2, SegmentConfig())
    deep = segment_motion(fwd, scene.flow_bwd_t1hw2, SegmentConfig(), depth_thw)
    flat_j, _ = j_and_f(flat.masks_thw[:-1], scene.moving_thw[:-1])
    deep_j, _ = j_and_f(deep.masks_thw[:-1], scene.moving_thw[:-1])
    assert flat_j < 0.05 and deep_j > 0.9, (flat_j, deep_j)


def test_depth_the_depth_stage_assumed_is_not_checked():
    """The accuracy suite's pan clip (rotation only) through DIS flow and the offline depth
    stage, 96x72x12: the camera does not translate, so every frame's depth is the stage's smooth
    prior, not measured. Checked for parallax, that made-up depth scores still background
    moving (J of the scores the fit takes, at 0.5: 0.526 on the polished flow, 0.437 on DIS's);
    with `measured_depth_only` the check is skipped and the scores are those without depth (J
    0.799, 0.690 on DIS's; docs/segment.md)."""
    scene = make_scene(suite_clip("pan").scene_config(96, 72, 12, 16))
    fwd, bwd, depth = pipeline_flow_and_depth(scene.frames_thw3, PipelineConfig())
    assert not (depth.confidence_thw >= MEASURED_DEPTH_CONFIDENCE).any()
    # The scores as the masks are (no margin), where the J figures above were measured.
    cfg, frames_thw3 = SegmentConfig(score_margin_px=0), scene.frames_thw3
    assert cfg.measured_depth_only
    guarded = segment_motion(
        fwd,
        bwd,
        cfg,
        depth_thw=depth.depth_thw,
        frames_thw3=frames_thw3,
        depth_confidence_thw=depth.confidence_thw,
    )
    without_depth = segment_motion(fwd, bwd, cfg, frames_thw3=frames_thw3)
    unguarded = segment_motion(  # the confidence given, but not asked to be used
        fwd,
        bwd,
        dataclasses.replace(cfg, measured_depth_only=False),
        depth_thw=depth.depth_thw,
        frames_thw3=frames_thw3,
        depth_confidence_thw=depth.confidence_thw,
    )
    assert np.array_equal(guarded.scores_thw, without_depth.scores_thw)
    assert not any(s.depth_checked for s in guarded.stats)
    guarded_j, _ = j_and_f(guarded.scores_thw >= 0.5, scene.moving_thw)
    unguarded_j, _ = j_and_f(unguarded.scores_thw >= 0.5, scene.moving_thw)
    assert guarded_j > 0.75 and unguarded_j < 0.6, (guarded_j, unguarded_j)


def test_measured_depth_keeps_the_parallax_check(scenes):
    """With `measured_depth_only`, depth the confidence calls measured is checked as depth
    without a confidence is, and only the frames without measured depth lose the check."""
    scene = scenes["moving"]
    fwd, bwd = scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2
    cfg = SegmentConfig(measured_depth_only=True)
    confidence_thw = np.full(scene.depth_thw.shape, MEASURED_DEPTH_CONFIDENCE, np.float32)
    plain = segment_motion(fwd, bwd, SegmentConfig(), depth_thw=scene.depth_thw)
    measured = segment_motion(
        fwd, bwd, cfg, depth_thw=scene.depth_thw, depth_confidence_thw=confidence_thw
    )
    assert np.array_equal(plain.scores_thw, measured.scores_thw)
    assert all(s.depth_checked for s in measured.stats)
    confidence_thw[2] = 0.5 * MEASURED_DEPTH_CONFIDENCE  # frame 2's depth assumed
    partly = segment_motion(
        fwd, bwd, cfg, depth_thw=scene.depth_thw, depth_confidence_thw=confidence_thw
    )
    assert [s.depth_checked for s in partly.stats] == [t != 2 for t in range(T)]


def test_scores_cross_half_at_the_threshold(scenes):
    """Static camera, exact flow: the raw score is |flow|^2 / (|flow|^2 + threshold^2) (the
    scores as they are, not widened beyond the masks)."""
    scene = scenes["static"]
    cfg = SegmentConfig(threshold=2.0, temporal_smoothing=False, score_margin_px=0)
    result = segment_motion(scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, cfg)
    r2 = np.sum(scene.flow_fwd_t1hw2[0].astype(np.float64) ** 2, axis=2)
    np.testing.assert_allclose(result.scores_thw[0], r2 / (r2 + 4.0), atol=1e-6)
    assert result.stats[0].threshold_px == pytest.approx(2.0)


def test_score_margin_widens_the_scores_handed_on_and_leaves_the_masks(scenes):
    """Each score becomes the highest within the margin (a square window clipped at the image),
    here against a brute-force maximum; the masks stay as they were."""
    scene = scenes["moving"]
    plain = segment_motion(
        scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, SegmentConfig(score_margin_px=0)
    )
    wide = segment_motion(
        scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, SegmentConfig(score_margin_px=2)
    )
    np.testing.assert_array_equal(wide.masks_thw, plain.masks_thw)
    padded = np.pad(plain.scores_thw, ((0, 0), (2, 2), (2, 2)), constant_values=-np.inf)
    highest_thw = np.max(
        [padded[:, dy : dy + H, dx : dx + W] for dy in range(5) for dx in range(5)], axis=0
    )
    np.testing.assert_array_equal(wide.scores_thw, highest_thw)
    assert (wide.scores_thw >= 0.5).sum() > (plain.scores_thw >= 0.5).sum()


def test_temporal_smoothing_restores_a_dropped_frame(scenes):
    """The object's flow is zeroed in pair 3, so frame 3 alone sees it as still; the neighbour
    masks warped by flow vote it back. A fake blob in frame 5 alone is voted away."""
    scene = scenes["static"]
    fwd, bwd = scene.flow_fwd_t1hw2.copy(), scene.flow_bwd_t1hw2.copy()
    fwd[3][scene.moving_thw[3]] = 0.0
    bwd[3][scene.moving_thw[4]] = 0.0
    blob = np.zeros((H, W), bool)
    blob[70:85, 10:30] = True
    assert not (blob & scene.moving_thw[5]).any() and not (blob & scene.moving_thw[6]).any()
    fwd[5][blob] = (3.0, 0.0)  # consistent both ways: the blob lands 3 px to the right
    bwd[5][np.roll(blob, 3, axis=1)] = (-3.0, 0.0)
    raw = segment_motion(fwd, bwd, SegmentConfig(temporal_smoothing=False))
    smooth = segment_motion(fwd, bwd, SegmentConfig())
    assert mask_j(raw.masks_thw[3], scene.moving_thw[3]) < 0.2
    assert mask_j(smooth.masks_thw[3], scene.moving_thw[3]) > 0.6
    assert raw.masks_thw[5][blob].mean() > 0.9
    assert smooth.masks_thw[5][blob].mean() < 0.05
    assert smooth.stats[3].temporal_iou > raw.stats[3].temporal_iou


def test_stats_report_share_iou_and_model(scenes):
    scene = scenes["rotation"]
    result = segment_motion(scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, SegmentConfig())
    assert [s.t for s in result.stats] == list(range(T))
    assert result.stats[0].temporal_iou is None
    assert all(0.9 < s.temporal_iou <= 1.0 for s in result.stats[1:])
    for s, mask_hw in zip(result.stats, result.masks_thw, strict=True):
        assert s.moving_share == pytest.approx(mask_hw.mean())
        assert s.motion_model == "homography"


def test_deterministic(scenes):
    fwd, bwd = noisy(scenes["moving"], NOISE_PX)
    a = segment_motion(fwd, bwd, SegmentConfig())
    b = segment_motion(fwd, bwd, SegmentConfig())
    np.testing.assert_array_equal(a.masks_thw, b.masks_thw)
    np.testing.assert_array_equal(a.scores_thw, b.scores_thw)


# ---------------------------------------------------------------------------------------------
# Degenerate cases: flagged, never a crash.


def test_no_texture_gives_an_empty_mask():
    """A textureless video: flow is zero everywhere -> still camera, nothing moves."""
    zeros = np.zeros((3, H, W, 2), np.float32)
    result = segment_motion(zeros, zeros, SegmentConfig())
    assert not result.masks_thw.any() and not result.scores_thw.any()
    assert {s.motion_model for s in result.stats} == {"static"}
    assert all(s.temporal_iou == 1.0 for s in result.stats[1:])


def test_no_consistent_pixels_is_flagged():
    rng = np.random.default_rng(0)
    fwd = rng.uniform(-8, 8, (3, H, W, 2)).astype(np.float32)
    bwd = rng.uniform(-8, 8, (3, H, W, 2)).astype(np.float32)
    result = segment_motion(fwd, bwd, SegmentConfig())
    assert [s.degenerate for s in result.stats] == ["no_consistent_pixels"] * 4
    assert [s.motion_model for s in result.stats] == ["none"] * 4
    assert not result.masks_thw.any()


def test_almost_everything_moving_is_flagged():
    """Independent random motion everywhere (trusted here by a huge FB threshold): no camera
    model explains the majority."""
    rng = np.random.default_rng(0)
    fwd = rng.uniform(-8, 8, (2, H, W, 2)).astype(np.float32)
    bwd = rng.uniform(-8, 8, (2, H, W, 2)).astype(np.float32)
    result = segment_motion(fwd, bwd, SegmentConfig(fb_threshold_px=1e6))
    assert {s.degenerate for s in result.stats} == {"mostly_moving"}
    assert all(s.moving_share > 0.5 for s in result.stats)


def test_degenerate_frame_takes_its_neighbours(scenes):
    """Garbage flow in pair 3 leaves frame 3 without consistent pixels; it takes frame 2's mask
    (the flow 3 -> 2 is still good) instead of coming out empty."""
    scene = scenes["static"]
    fwd, bwd = scene.flow_fwd_t1hw2.copy(), scene.flow_bwd_t1hw2.copy()
    rng = np.random.default_rng(0)
    fwd[3] = rng.uniform(-8, 8, (H, W, 2))
    bwd[3] = rng.uniform(-8, 8, (H, W, 2))
    result = segment_motion(fwd, bwd, SegmentConfig())
    assert result.stats[3].degenerate == "no_consistent_pixels"
    assert mask_j(result.masks_thw[3], scene.moving_thw[3]) > 0.9


def test_tiny_inputs_do_not_crash():
    result = segment_motion(
        np.ones((1, 2, 2, 2), np.float32), -np.ones((1, 2, 2, 2)), SegmentConfig()
    )
    assert result.masks_thw.shape == (2, 2, 2)
    assert result.stats[0].degenerate == "no_consistent_pixels"


# ---------------------------------------------------------------------------------------------
# User masks and bad inputs.


def test_user_masks_accept_bool_ids_binary_and_soft():
    ids = np.zeros((2, 4, 5), np.uint8)
    ids[0, 1, 1], ids[1, 2, 3] = 2, 255
    expected = ids != 0
    for masks in (
        expected,
        ids,
        ids.astype(np.int64),
        expected.astype(np.float32) * 0.8,
        expected.tolist(),
    ):
        out = validate_user_masks(masks, height=4, width=5, n_frames=2)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    "masks",
    [
        np.zeros((2, 4, 6), bool),  # wrong width
        np.zeros((3, 4, 5), bool),  # wrong frame count
        np.zeros((2, 4, 5, 1), bool),  # extra axis
        np.full((2, 4, 5), -1, np.int16),  # negative id
        np.full((2, 4, 5), 1.5, np.float32),  # out of [0, 1]
        np.full((2, 4, 5), np.nan, np.float32),
        np.full((2, 4, 5), "a"),
    ],
)
def test_bad_user_masks(masks):
    with pytest.raises(InvalidArgumentError) as err:
        validate_user_masks(masks, height=4, width=5, n_frames=2)
    assert err.value.field == "user_masks"


def test_bad_inputs_name_the_field():
    good = np.zeros((2, 8, 8, 2), np.float32)
    bad_nan = good.copy()
    bad_nan[0, 0, 0, 0] = np.nan
    cases = [
        (dict(flow_fwd_t1hw2=bad_nan), "flow_fwd"),
        (dict(flow_fwd_t1hw2=np.zeros((8, 8, 2), np.float32)), "flow_fwd"),
        (dict(flow_fwd_t1hw2=np.zeros((0, 8, 8, 2), np.float32)), "flow_fwd"),
        (dict(flow_bwd_t1hw2=np.zeros((2, 8, 9, 2), np.float32)), "flow_bwd"),
        (dict(flow_bwd_t1hw2=np.zeros((2, 8, 8, 2), object)), "flow_bwd"),
        (dict(depth_thw=np.ones((2, 8, 8))), "depth"),
        (dict(depth_confidence_thw=np.ones((3, 8, 8))), "depth_confidence"),
        (
            dict(depth_thw=np.ones((3, 8, 8)), depth_confidence_thw=np.ones((3, 8, 9))),
            "depth_confidence",
        ),
        (dict(cfg=SegmentConfig(threshold=0.0)), "threshold"),
        (dict(cfg=SegmentConfig(fb_threshold_px=float("nan"))), "fb_threshold_px"),
        (dict(cfg=SegmentConfig(morph_open_px=-1)), "morph_open_px"),
        (dict(cfg=SegmentConfig(score_margin_px=-1)), "score_margin_px"),
        (dict(cfg=SegmentConfig(min_consistent_share=1.0)), "min_consistent_share"),
        (dict(cfg=SegmentConfig(max_moving_share=0.0)), "max_moving_share"),
    ]
    for overrides, field in cases:
        kwargs = dict(flow_fwd_t1hw2=good, flow_bwd_t1hw2=good, cfg=SegmentConfig())
        kwargs.update(overrides)
        with pytest.raises(InvalidArgumentError) as err:
            segment_motion(**kwargs)
        assert err.value.field == field, overrides


# ---------------------------------------------------------------------------------------------
# Real frames.


def test_davis_frames_give_a_plausible_mask(shared_data):
    """Three real DAVIS frames (dancers before a nearly still camera), DIS flow: every frame
    gets a non-empty mask covering about a third of the picture (measured 0.33 to 0.35)."""
    paths = sorted((shared_data / "davis-frames").glob("*.jpg"))
    frames_thw3 = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    flow = compute_flow(frames_thw3, FlowConfig(backend="dis"))
    fwd = np.stack([p.flow_fwd_hw2 for p in flow.pairs])
    bwd = np.stack([p.flow_bwd_hw2 for p in flow.pairs])
    result = segment_motion(fwd, bwd, SegmentConfig())
    assert result.masks_thw.shape == frames_thw3.shape[:3]
    for s in result.stats:
        assert s.degenerate is None
        assert 0.2 < s.moving_share < 0.5, s
    assert all(s.temporal_iou > 0.7 for s in result.stats[1:])
