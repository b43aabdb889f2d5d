"""Synthetic scenes: the ground truth is checked against itself (warping, reprojection, tracks)."""

from __future__ import annotations

from dataclasses import asdict, replace

import cv2
import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.geometry import pixel_grid_hw2, project_p2, rigid_flow_hw2
from services.evaluation.synth_check import consistency_figures
from services.synthetic.scene import (
    SceneConfig,
    SynthCommand,
    SyntheticScene,
    make_scene,
    run_synth,
)

CAMERAS = ("moving", "rotation", "static")
_CACHE: dict[tuple, SyntheticScene] = {}


def scene(**kwargs) -> SyntheticScene:
    """Scenes are deterministic, so tests share them."""
    key = tuple(sorted(kwargs.items()))
    if key not in _CACHE:
        _CACHE[key] = make_scene(SceneConfig(**kwargs))
    return _CACHE[key]


def test_shapes_dtypes_and_determinism():
    cfg = SceneConfig(n_tracks=32)
    a, b = make_scene(cfg), make_scene(cfg)
    T, H, W, N = 8, 48, 64, 32
    expected = {
        "frames_thw3": ((T, H, W, 3), np.uint8),
        "depth_thw": ((T, H, W), np.float32),
        "K_33": ((3, 3), np.float64),
        "c2w_t44": ((T, 4, 4), np.float64),
        "flow_fwd_t1hw2": ((T - 1, H, W, 2), np.float32),
        "flow_bwd_t1hw2": ((T - 1, H, W, 2), np.float32),
        "valid_fwd_t1hw": ((T - 1, H, W), np.bool_),
        "valid_bwd_t1hw": ((T - 1, H, W), np.bool_),
        "moving_thw": ((T, H, W), np.bool_),
        "tracks_nt2": ((N, T, 2), np.float32),
        "occluded_nt": ((N, T), np.bool_),
        "object_thw": ((T, H, W), np.int8),
        "tracks_world_nt3": ((N, T, 3), np.float32),
        "track_query_t_n": ((N,), np.int64),
        "track_object_n": ((N,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(a, name)
        assert value.shape == shape and value.dtype == dtype, name
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    other = make_scene(replace(cfg, seed=1))
    assert not np.array_equal(a.frames_thw3, other.frames_thw3)
    assert np.all(a.depth_thw > 0) and np.all(np.isfinite(a.depth_thw))


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_frames=1),
        dict(camera="fly"),
        dict(n_objects=4),
        dict(height=4),
        dict(n_tracks=-1),
        dict(motion_scale=-1.0),
    ],
)
def test_bad_config_names_the_field(bad):
    with pytest.raises(InvalidArgumentError) as err:
        make_scene(SceneConfig(**bad))
    assert err.value.field == next(iter(bad))


@pytest.mark.parametrize("camera", CAMERAS)
def test_warping_by_gt_flow_reproduces_next_frame_and_depth_poses_reproduce_flow(camera):
    fig = consistency_figures(scene(camera=camera, n_objects=2, nonrigid=True))
    # Residuals come only from bilinear interpolation, 8-bit rounding and occlusion edges.
    assert fig.warp_err_mean < 2.0 and fig.warp_err_median < 1.0
    assert fig.warp_err_mean < 0.4 * fig.still_err_mean
    assert fig.reproj_err_max_px < 1e-3  # float32 depth is the only approximation
    assert 0.8 < fig.valid_fraction < 1.0


def test_consistency_figures_see_a_wrong_flow():
    sc = scene(n_objects=2)
    broken = replace(sc, flow_bwd_t1hw2=np.zeros_like(sc.flow_bwd_t1hw2))
    fig = consistency_figures(broken)
    assert fig.warp_err_mean == pytest.approx(fig.still_err_mean, rel=1e-6)
    # With a translating camera, wrong depth gives wrong rigid flow.
    scaled = replace(sc, depth_thw=sc.depth_thw * 1.1)
    assert consistency_figures(scaled).reproj_err_max_px > 0.05


def test_moving_objects_are_not_explained_by_the_camera():
    sc = scene(camera="moving", n_objects=2, nonrigid=True)
    for t in range(len(sc.flow_fwd_t1hw2)):
        if not sc.moving_thw[t].any():
            continue
        rigid = rigid_flow_hw2(sc.depth_thw[t], sc.K_33, sc.c2w_t44[t], sc.c2w_t44[t + 1])
        err = np.linalg.norm(rigid - sc.flow_fwd_t1hw2[t], axis=-1)
        assert np.median(err[sc.moving_thw[t]]) > 0.3


def test_static_camera_flow_is_zero_off_objects_and_occlusion_is_exact():
    sc = scene(camera="static", n_objects=2)
    assert np.all(sc.c2w_t44 == sc.c2w_t44[0])
    static = ~sc.moving_thw[:-1]
    assert np.abs(sc.flow_fwd_t1hw2[static]).max() < 1e-9
    # A background point stays on its pixel, so it is hidden exactly where an object arrives.
    np.testing.assert_array_equal(sc.valid_fwd_t1hw[static], ~sc.moving_thw[1:][static])


def test_pure_rotation_flow_is_the_rotation_homography():
    sc = scene(camera="rotation")
    assert np.abs(sc.c2w_t44[:, :3, 3]).max() == 0.0
    h, w = sc.depth_thw.shape[1:]
    xy1 = np.concatenate([pixel_grid_hw2(h, w), np.ones((h, w, 1))], axis=-1)
    K, K_inv = sc.K_33, np.linalg.inv(sc.K_33)
    for t in range(len(sc.flow_fwd_t1hw2)):
        R_rel = sc.c2w_t44[t + 1, :3, :3].T @ sc.c2w_t44[t, :3, :3]
        mapped = xy1 @ (K @ R_rel @ K_inv).T
        flow = mapped[..., :2] / mapped[..., 2:] - xy1[..., :2]
        static = ~sc.moving_thw[t]
        assert np.abs(flow - sc.flow_fwd_t1hw2[t])[static].max() < 1e-3
    assert np.linalg.norm(sc.flow_fwd_t1hw2, axis=-1).mean() > 1.0


def test_moving_camera_has_parallax_and_objects_move_a_few_pixels_per_frame():
    sc = scene(camera="moving")
    h, w = sc.depth_thw.shape[1:]
    xy1 = np.concatenate([pixel_grid_hw2(h, w), np.ones((h, w, 1))], axis=-1)
    K, K_inv = sc.K_33, np.linalg.inv(sc.K_33)
    residual = []
    for t in range(len(sc.flow_fwd_t1hw2)):
        R_rel = sc.c2w_t44[t + 1, :3, :3].T @ sc.c2w_t44[t, :3, :3]
        mapped = xy1 @ (K @ R_rel @ K_inv).T
        rot_flow = mapped[..., :2] / mapped[..., 2:] - xy1[..., :2]
        residual.append(np.linalg.norm(sc.flow_fwd_t1hw2[t] - rot_flow, axis=-1))
    assert np.median(residual) > 0.5  # translation: depth-dependent flow (parallax)
    object_speed = np.linalg.norm(sc.flow_fwd_t1hw2, axis=-1)[sc.moving_thw[:-1]]
    assert 1.0 < np.median(object_speed) < 8.0
    assert sc.moving_thw.any(axis=(1, 2)).all()


@pytest.mark.parametrize("camera", ("moving", "static"))
def test_tracks_agree_with_flow_visibility_and_3d_positions(camera):
    sc = scene(camera=camera, n_objects=2, nonrigid=True, n_tracks=96)
    T = sc.depth_thw.shape[0]
    assert np.any(sc.track_object_n < 0) and np.any(sc.track_object_n >= 0)
    for n, tq in enumerate(sc.track_query_t_n):
        assert not sc.occluded_nt[n, tq]
        x, y = sc.tracks_nt2[n, tq]
        xi, yi = int(round(float(x))), int(round(float(y)))
        assert abs(x - xi) < 1e-3 and abs(y - yi) < 1e-3  # queries sit on pixel centres
        if tq + 1 < T:
            step = sc.tracks_nt2[n, tq + 1] - sc.tracks_nt2[n, tq]
            np.testing.assert_allclose(step, sc.flow_fwd_t1hw2[tq, yi, xi], atol=2e-3)
            assert sc.occluded_nt[n, tq + 1] == (not sc.valid_fwd_t1hw[tq, yi, xi])
        if tq > 0:
            step = sc.tracks_nt2[n, tq - 1] - sc.tracks_nt2[n, tq]
            np.testing.assert_allclose(step, sc.flow_bwd_t1hw2[tq - 1, yi, xi], atol=2e-3)
            assert sc.occluded_nt[n, tq - 1] == (not sc.valid_bwd_t1hw[tq - 1, yi, xi])
        assert sc.moving_thw[tq, yi, xi] == (sc.track_object_n[n] >= 0)
        _, z = project_p2(sc.K_33, sc.c2w_t44[tq], sc.tracks_world_nt3[n, tq][None].astype(float))
        assert sc.depth_thw[tq, yi, xi] == pytest.approx(z[0], rel=1e-5)
    for t in range(T):
        xy, _ = project_p2(sc.K_33, sc.c2w_t44[t], sc.tracks_world_nt3[:, t].astype(np.float64))
        np.testing.assert_allclose(xy, sc.tracks_nt2[:, t], atol=2e-3)


@pytest.mark.parametrize("nonrigid", (False, True))
def test_rigid_objects_keep_point_distances_nonrigid_ones_do_not(nonrigid):
    sc = scene(camera="static", n_objects=1, nonrigid=nonrigid, n_tracks=64)
    on_object = sc.track_object_n == 0
    pts_nt3 = sc.tracks_world_nt3[on_object].astype(np.float64)
    assert len(pts_nt3) >= 8
    dist_nnt = np.linalg.norm(pts_nt3[:, None] - pts_nt3[None], axis=-1)
    change = np.abs(dist_nnt - dist_nnt[..., :1]).max()
    if nonrigid:
        assert change > 0.05  # metres
    else:
        assert change < 1e-4
    # Either way the object moves.
    assert np.linalg.norm(pts_nt3[:, -1] - pts_nt3[:, 0], axis=-1).min() > 0.1


def test_no_moving_objects_gives_empty_masks():
    sc = scene(n_objects=0, n_tracks=16)
    assert not sc.moving_thw.any() and np.all(sc.object_thw == -1)
    assert np.all(sc.track_object_n == -1)


def test_textures_are_not_flat_and_dis_flow_can_track_them():
    sc = scene()
    gray = sc.frames_thw3.astype(np.float32).mean(axis=-1)
    assert gray.std() > 12.0
    assert np.mean(np.abs(np.diff(gray, axis=2)) > 2.0) > 0.3  # gray-level steps between pixels
    # The two background planes differ (brick wall above, stone floor below).
    top = sc.frames_thw3[0, :8].reshape(-1, 3).mean(axis=0)
    bottom = sc.frames_thw3[0, -8:].reshape(-1, 3).mean(axis=0)
    assert np.abs(top - bottom).max() > 15.0
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    epe, zero_epe = [], []
    for t in range(len(sc.flow_fwd_t1hw2)):
        a, b = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in sc.frames_thw3[t : t + 2])
        err = np.linalg.norm(dis.calc(a, b, None) - sc.flow_fwd_t1hw2[t], axis=-1)
        epe.append(err[sc.valid_fwd_t1hw[t]].mean())
        zero_epe.append(np.linalg.norm(sc.flow_fwd_t1hw2[t], axis=-1)[sc.valid_fwd_t1hw[t]].mean())
    assert np.mean(epe) < 0.4 * np.mean(zero_epe)


def test_save_load_round_trip(tmp_path):
    sc = scene(n_tracks=16)
    sc.save(tmp_path / "scene")
    back = SyntheticScene.load(tmp_path / "scene")
    assert asdict(back.config) == asdict(sc.config)
    for name, value in sc.__dict__.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
    assert len(list((tmp_path / "scene" / "frames").glob("*.png"))) == 8
    with pytest.raises(NotFoundError):
        SyntheticScene.load(tmp_path / "nothing")


def test_run_synth_writes_the_folder(tmp_path):
    out = run_synth(SynthCommand(out=tmp_path / "s", scene=SceneConfig(n_frames=3, n_tracks=4)))
    assert out == tmp_path / "s"
    assert SyntheticScene.load(out).frames_thw3.shape == (3, 48, 64, 3)
