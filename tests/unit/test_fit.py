"""The GFlow engine on a synthetic clip with exact priors (64x48, 8 frames, the `test` preset).

Bounds sit just below the figures measured on a 2-core CPU (docs/fit.md lists them): PSNR 36.1 dB
mean (33.8 worst frame), camera ATE 3.0 mm after Sim(3) alignment on a 1.1 m path, TAP-Vid AJ
0.67 (first-frame queries; 0.88 on still points), moving-mask IoU 0.98 mean (0.86 before the
fit's masks kept to the priors', stop 60). Resuming from a checkpoint repeats the uninterrupted
run bit for bit.
"""

from __future__ import annotations

import dataclasses

import imageio.v3 as iio
import numpy as np
import pytest

from services.common.errors import CancelledError
from services.common.masks import widened_scores_thw
from services.evaluation import metrics
from services.evaluation.fit_suite import exact_priors
from services.fit.camera import DEPTH_SCALE_RANGE, scale_clipped_t
from services.fit.checkpoint import FolderCheckpoints, unpack
from services.fit.config import preset
from services.fit.engine import FitPriors, FitResult, fit
from services.fit.tracks import track_2d, track_3d
from services.fit.videos import VIDEO_NAMES, render_videos
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene


def _priors(scene: SyntheticScene, **overrides) -> FitPriors:
    return dataclasses.replace(exact_priors(scene), **overrides)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_scene(SceneConfig())


@pytest.fixture(scope="module")
def progress_log() -> list[tuple[int, int, str]]:
    return []


@pytest.fixture(scope="module")
def fitted(scene, progress_log) -> FitResult:
    return fit(
        _priors(scene),
        preset("test"),
        progress=lambda done, total, message: progress_log.append((done, total, message)),
    )


def _queries(scene: SyntheticScene, mode: str) -> tuple[metrics.TapvidQueries, np.ndarray]:
    q = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, mode)
    return q, np.stack([q.query_t_q, q.query_xy_q2[:, 1], q.query_xy_q2[:, 0]], axis=1)


def test_result_shapes_and_progress(fitted, scene, progress_log):
    T, H, W = scene.depth_thw.shape
    assert fitted.c2w_t44.shape == (T, 4, 4) and len(fitted.frames) == T
    assert fitted.depth_thw.shape == (T, H, W) and fitted.moving_mask_thw.shape == (T, H, W)
    assert np.allclose(fitted.c2w_t44[0], np.eye(4))
    assert [d for d, _, _ in progress_log] == list(range(1, T + 1))
    assert all(total == T and "PSNR" in message for _, total, message in progress_log)
    for frame in fitted.frames:
        assert len(frame) <= preset("test").max_points
        assert np.all(np.diff(frame.ids_n) > 0)  # ids are unique and in birth order
        assert np.allclose(np.linalg.norm(frame.quats_n4, axis=1), 1.0, atol=1e-5)


def test_reconstruction_psnr(fitted):
    assert fitted.psnr_t.mean() > 35.0
    assert fitted.psnr_t.min() > 32.5


def test_camera_trajectory(fitted, scene):
    errors = metrics.ate_rpe(fitted.c2w_t44, scene.c2w_t44)
    assert errors["ate"] < 0.006  # metres, on a path of about 1.1 m
    assert errors["rpe_rot_deg"] < 0.15
    assert errors["scale"] == pytest.approx(1.0, abs=0.05)  # metric depth in, metric poses out


def test_moving_split_matches_the_masks(fitted, scene):
    iou_t = [
        metrics.mask_j(p, g) for p, g in zip(fitted.moving_mask_thw, scene.moving_thw, strict=True)
    ]
    assert np.mean(iou_t) > 0.95 and min(iou_t) > 0.9
    assert 0.0 < fitted.moving_share_t.min() and fitted.moving_share_t.max() < 0.2


def test_tapvid_tracks(fitted, scene):
    q, queries = _queries(scene, "first")
    points, occluded = track_2d(fitted, queries)
    image_hw = scene.depth_thw.shape[1:]
    scores = metrics.tapvid_metrics(
        q.query_t_q, q.gt_tracks_qt2, q.gt_occluded_qt, points, occluded, image_hw, "first"
    )
    assert scores["average_jaccard"] > 0.6
    assert scores["occlusion_accuracy"] > 0.8
    still = scene.track_object_n[q.track_index_q] < 0
    still_scores = metrics.tapvid_metrics(
        q.query_t_q[still],
        q.gt_tracks_qt2[still],
        q.gt_occluded_qt[still],
        points[still],
        occluded[still],
        image_hw,
        "first",
    )
    assert still_scores["average_jaccard"] > 0.8


def test_3d_tracks_of_still_points(fitted, scene):
    q, queries = _queries(scene, "first")
    world_qt3, alive_qt = track_3d(fitted, queries)
    assert alive_qt[np.arange(len(queries)), q.query_t_q].all()
    # The fit's world is camera 0's frame; the scene's camera 0 maps it to the scene's world.
    c2w0 = scene.c2w_t44[0]
    in_scene_qt3 = world_qt3 @ c2w0[:3, :3].T + c2w0[:3, 3]
    gt_qt3 = scene.tracks_world_nt3[q.track_index_q]
    still = scene.track_object_n[q.track_index_q] < 0
    # Still points stay put (a few mm over the clip) ...
    assert np.median(np.ptp(in_scene_qt3[still], axis=1).max(axis=-1)) < 0.005
    # ... where the scene has them, up to the rendered depth's error (about 1.5 % of depth).
    gt_depth_q = np.linalg.norm(gt_qt3[:, 0] - scene.c2w_t44[0, :3, 3], axis=-1)
    relative_q = np.linalg.norm(in_scene_qt3[:, 0] - gt_qt3[:, 0], axis=-1) / gt_depth_q
    assert np.median(relative_q[still]) < 0.03


@pytest.mark.parametrize("keep_adam_state", [False, True])
def test_resume_equals_uninterrupted(fitted, scene, tmp_path, keep_adam_state):
    sink = FolderCheckpoints(tmp_path / "checkpoints")

    def stop_after_five(done: int, total: int, message: str) -> None:
        if done == 5:
            raise CancelledError("stopped on purpose")

    cfg = preset("test")  # checkpoints every 2 frames: the last one before the stop holds 0..3
    if keep_adam_state:  # the checkpoint carries Adam's moments, kept over densification too
        cfg = dataclasses.replace(cfg, keep_adam_state=True, densify_every=10)
        fitted = fit(_priors(scene), cfg)
    with pytest.raises(CancelledError):
        fit(_priors(scene), cfg, progress=stop_after_five, checkpoints=sink)
    assert [frame for frame, _ in sink.load_all()] == [1, 3]
    resumed = fit(_priors(scene), cfg, checkpoints=sink)
    assert resumed.resumed_from == 3 and fitted.resumed_from is None
    assert np.array_equal(resumed.c2w_t44, fitted.c2w_t44)
    assert np.array_equal(resumed.psnr_t, fitted.psnr_t)
    assert np.array_equal(resumed.depth_thw, fitted.depth_thw)
    for a, b in zip(resumed.frames, fitted.frames, strict=True):
        assert np.array_equal(a.ids_n, b.ids_n) and np.array_equal(a.moving_n, b.moving_n)
        assert np.abs(a.means_n3 - b.means_n3).max() <= 1e-6
        assert np.abs(a.colors_n3 - b.colors_n3).max() <= 1e-6
    # Each checkpoint holds the frames since the one before: every frame is written once.
    stored = sink.load_all()
    assert stored[-1][0] == len(fitted.frames) - 1
    ends = [frame + 1 for frame, _ in stored]
    headers = [unpack(data)[1] for _, data in stored]
    spans = [(header["first_frame"], header["frames_done"]) for header in headers]
    assert spans == list(zip([0, *ends[:-1]], ends, strict=True))


def test_filled_depth_prior_changes_moving_depth_only_where_it_was_filled(fitted, scene):
    """By default (moving_depth_from_filled_prior=False) the fit departs from one without a
    depth confidence only at pixels whose confidence says filled in: all measured, it is that
    fit bit for bit; all filled, frame 1 on differ. With the field on, a filled prior is
    followed as a measured one is."""
    assert not preset("test").moving_depth_from_filled_prior
    T, H, W = scene.depth_thw.shape
    measured = fit(
        _priors(scene, depth_confidence_thw=np.ones((T, H, W), np.float32)), preset("test")
    )
    filled_thw = np.zeros((T, H, W), np.float32)
    following = dataclasses.replace(preset("test"), moving_depth_from_filled_prior=True)
    followed = fit(_priors(scene, depth_confidence_thw=filled_thw), following)
    for result in (measured, followed):
        assert np.array_equal(result.frames[-1].means_n3, fitted.frames[-1].means_n3)
    filled = fit(_priors(scene, depth_confidence_thw=filled_thw), preset("test"))
    assert np.array_equal(filled.frames[0].means_n3, fitted.frames[0].means_n3)
    moved_n3, default_n3 = filled.frames[1].means_n3, fitted.frames[1].means_n3
    assert moved_n3.shape != default_n3.shape or not np.allclose(moved_n3, default_n3)


def test_videos(fitted, scene):
    videos = render_videos(fitted, _priors(scene), fps=8.0)
    assert set(videos) == set(VIDEO_NAMES)
    T, H, W = scene.depth_thw.shape
    for name, data in videos.items():
        frames = iio.imread(data, extension=".mp4")
        width = 2 * W if name == "reconstruction" else W
        assert frames.shape == (T, H, width, 3), name
    reconstruction = iio.imread(videos["reconstruction"], extension=".mp4").astype(float)
    # Input and render halves agree up to the fit and the codec.
    assert np.abs(reconstruction[:, :, :W] - reconstruction[:, :, W:]).mean() < 8.0


def test_cameras_tracked_against_the_model_depth_hold_a_prior_that_changes_shape(scene, tmp_path):
    """An estimated depth prior bends differently in every frame; lifting the camera's still
    points at the model's own depth (`camera_depth="model"`) tracks the camera against one map.
    Measured on this clip (2-core CPU): ATE 11.6 mm at the prior, 5.9 mm at the model."""
    T, H, W = scene.depth_thw.shape
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    waves_thw = np.stack(
        [
            np.sin(
                2
                * np.pi
                * (xx * rng.uniform(0.5, 1.5) + yy * rng.uniform(0.5, 1.5) + rng.uniform())
            )
            for _ in range(T)
        ]
    )
    bent = _priors(scene, depth_thw=(scene.depth_thw * (1 + 0.1 * waves_thw)).astype(np.float32))
    cfg = dataclasses.replace(preset("test"), camera_depth="model")
    at_prior = fit(bent, preset("test"))
    at_model = fit(bent, cfg)
    ate_prior = metrics.ate_rpe(at_prior.c2w_t44, scene.c2w_t44)["ate"]
    ate_model = metrics.ate_rpe(at_model.c2w_t44, scene.c2w_t44)["ate"]
    assert ate_model < 0.7 * ate_prior

    # The PnP lifts at the model as a checkpoint holds it, pruned: a resumed fit repeats the
    # straight one. prune_opacity 0.4 prunes still Gaussians at frame 3 of this clip, where the
    # resume starts (the test preset's own threshold prunes none here).
    pruning = dataclasses.replace(cfg, prune_opacity=0.4)
    straight = fit(bent, pruning)
    sink = FolderCheckpoints(tmp_path / "checkpoints")

    def stop_after_five(done: int, total: int, message: str) -> None:
        if done == 5:
            raise CancelledError("stopped on purpose")

    with pytest.raises(CancelledError):
        fit(bent, pruning, progress=stop_after_five, checkpoints=sink)
    resumed = fit(bent, pruning, checkpoints=sink)
    assert resumed.resumed_from == 3
    assert np.array_equal(resumed.c2w_t44, straight.c2w_t44)


def test_prior_poses_start_the_cameras():
    short = make_scene(SceneConfig(n_frames=3, seed=5))
    result = fit(_priors(short, c2w_t44=short.c2w_t44), preset("test"))
    assert np.allclose(result.c2w_t44[0], short.c2w_t44[0])
    # Within 3 cm at 3-7 m depth: about 0.4 px at this resolution.
    assert np.abs(result.c2w_t44[:, :3, 3] - short.c2w_t44[:, :3, 3]).max() < 0.03


def test_prior_poses_kept_as_the_cameras_unless_asked_not_to(fitted, scene):
    """camera_from_prior_poses (the default) takes the priors' poses as they are, a 10 cm error
    included, where the fit's own tracking (PnP and refinement from them) comes back to the true
    path; without prior poses the fit tracks its own either way."""
    short = make_scene(SceneConfig(n_frames=3, seed=5))
    off_c2w_t44 = short.c2w_t44.copy()
    off_c2w_t44[1:, :3, 3] += [0.1, -0.1, 0.0]
    keeping = preset("test")
    assert keeping.camera_from_prior_poses
    kept = fit(_priors(short, c2w_t44=off_c2w_t44), keeping)
    assert np.array_equal(kept.c2w_t44, off_c2w_t44)
    tracking = dataclasses.replace(keeping, camera_from_prior_poses=False)
    tracked = fit(_priors(short, c2w_t44=off_c2w_t44), tracking)
    off_m = np.abs(off_c2w_t44[1:, :3, 3] - short.c2w_t44[1:, :3, 3]).max()
    tracked_m = np.abs(tracked.c2w_t44[1:, :3, 3] - short.c2w_t44[1:, :3, 3]).max()
    assert tracked_m < off_m / 2
    without_poses = fit(_priors(scene), tracking)
    assert np.array_equal(without_poses.c2w_t44, fitted.c2w_t44)


def test_kept_cameras_keep_what_the_masks_are_sure_of(scene):
    """With the cameras kept from the priors' poses, Gaussians the masks score moving stay in the
    moving set (`cluster_mask_keeps`) where the motion would relabel them still: a band of still
    background the masks call moving stays moving only then; a fit tracking its own cameras
    ignores the field."""
    short = make_scene(SceneConfig(n_frames=3, seed=5))
    band_thw = short.moving_thw.astype(np.float32)
    band_thw[:, :8] = 1.0  # the top rows are still background
    priors = _priors(short, moving_thw=band_thw, c2w_t44=short.c2w_t44)
    keeping = dataclasses.replace(preset("test"), camera_from_prior_poses=True)
    overruled = dataclasses.replace(keeping, cluster_mask_keeps=1.5)
    band_moving = [fit(priors, cfg).moving_mask_thw[1:, :8].mean() for cfg in (keeping, overruled)]
    assert band_moving[0] > 0.6 and band_moving[1] < 0.4  # measured 0.78 and 0.26
    tracking = [dataclasses.replace(preset("test"), cluster_mask_keeps=v) for v in (0.75, 1.5)]
    own_priors = dataclasses.replace(priors, c2w_t44=None)
    own = [fit(own_priors, cfg).moving_mask_thw for cfg in tracking]
    assert np.array_equal(own[0], own[1])


def test_a_depth_prior_that_drifts_past_the_scale_range_is_flagged(caplog):
    """A prior whose scale shrinks to 0.6x per frame needs 1 / 0.6^t against the model: within
    DEPTH_SCALE_RANGE (2) up to frame 1, clipped from frame 2 on, which scale_clipped_t (the fit
    stage's figure depth_prior_scale_clipped_frames) and one log warning say."""
    short = make_scene(SceneConfig(n_frames=4, seed=5))
    shrink_t = 0.6 ** np.arange(4)
    drifting = _priors(short, depth_thw=(short.depth_thw * shrink_t[:, None, None]).astype("f4"))
    with caplog.at_level("WARNING", logger="services.fit.engine"):
        result = fit(drifting, preset("test"))
    assert result.depth_scale_t[1] == pytest.approx(1 / 0.6, rel=0.05)
    assert scale_clipped_t(result.depth_scale_t).tolist() == [False, False, True, True]
    assert result.depth_scale_t[2:].tolist() == [DEPTH_SCALE_RANGE[1]] * 2
    warned = [r.getMessage() for r in caplog.records if "depth prior's scale" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("frame 2:")
    assert not scale_clipped_t(fit(_priors(short), preset("test")).depth_scale_t).any()


def test_the_flow_weights_of_camera_and_moving_gaussians_are_apart(scene):
    """`lambda_flow` pulls the moving Gaussians to their flow targets, `lambda_camera_flow`
    weighs the camera refinement's still correspondences: frame 1's pose comes before frame 1's
    Gaussians are optimised, so it follows the camera's weight alone."""
    rng = np.random.default_rng(3)
    noisy_fwd = scene.flow_fwd_t1hw2 + rng.normal(0, 0.3, scene.flow_fwd_t1hw2.shape)
    priors = _priors(scene, flow_fwd_t1hw2=noisy_fwd.astype(np.float32)).first_frames(2)
    cfg = preset("test")

    def fitted_with(**weights) -> FitResult:
        return fit(priors, dataclasses.replace(cfg, **weights))

    base = fitted_with()
    no_gaussian_flow = fitted_with(lambda_flow=0.0)
    no_camera_flow = fitted_with(lambda_camera_flow=0.0)
    assert np.array_equal(no_gaussian_flow.c2w_t44, base.c2w_t44)
    assert not np.array_equal(no_gaussian_flow.frames[1].means_n3, base.frames[1].means_n3)
    assert not np.array_equal(no_camera_flow.c2w_t44[1], base.c2w_t44[1])


def test_the_mask_margin_widens_the_masks_the_fit_reads():
    """`moving_mask_margin_px` fits the priors as if their masks were that much wider
    (`FitPriors.with_moving_widened`), bit for bit, and the fit's moving set grows with it."""
    short = make_scene(SceneConfig(n_frames=3, seed=5))
    priors = _priors(short)
    margin = dataclasses.replace(preset("test"), moving_mask_margin_px=2)
    widened = fit(priors, margin)
    given_wide = fit(priors.with_moving_widened(2), preset("test"))
    assert np.array_equal(widened.frames[-1].means_n3, given_wide.frames[-1].means_n3)
    assert np.array_equal(widened.moving_mask_thw, given_wide.moving_mask_thw)
    tight = fit(priors, preset("test"))
    assert widened.moving_mask_thw.sum() > tight.moving_mask_thw.sum()


def test_the_fits_moving_masks_keep_inside_hard_masks():
    """The fit's moving mask is where its moving Gaussians dominate the render, kept inside the
    priors' masks where those are hard (every score 0 or 1): given hard masks 3 px too wide all
    round (a user's loose masks), it stays inside them and nearer the object than they are;
    given the same masks as soft scores (x 0.9), it is the moving Gaussians' footprint alone."""
    short = make_scene(SceneConfig(n_frames=3, seed=5))
    halo_thw = widened_scores_thw(short.moving_thw.astype(np.float32), 3)
    result = fit(_priors(short, moving_thw=halo_thw), preset("test"))
    assert not (result.moving_mask_thw & (halo_thw < 0.5)).any()

    def mean_j(masks_thw: np.ndarray) -> float:
        pairs = zip(masks_thw, short.moving_thw, strict=True)
        return float(np.mean([metrics.mask_j(m, g) for m, g in pairs]))

    assert mean_j(result.moving_mask_thw) > mean_j(halo_thw >= 0.5) + 0.1
    soft = fit(_priors(short, moving_thw=halo_thw * np.float32(0.9)), preset("test"))
    assert (soft.moving_mask_thw & (halo_thw < 0.5)).any()
