"""Bundle adjustment of the offline depth backend (services/depth/bundle.py): exact scenes with
known cameras and points, points that move (outliers), and the backend with and without it on
flow with pixel noise. docs/depth.md, "Bundle adjustment"."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.common.geometry import (
    axis_angle_33,
    focal_intrinsics_33,
    pixel_grid_hw2,
    rigid_flow_hw2,
    rotation_33,
)
from services.depth import bundle
from services.depth.backends.offline import OfflineSettings, run_window
from services.evaluation.metrics import ate_rpe
from services.flow.engine import frame_pairs
from services.synthetic.scene import SceneConfig, make_scene

HEIGHT, WIDTH, FOCAL = 72, 96, 80.0


def _cameras(n: int) -> np.ndarray:
    """c2w [n, 4, 4]: a camera sliding sideways and turning a little, as an orbit does."""
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for t in range(n):
        c2w[t, :3, :3] = rotation_33("y", np.deg2rad(-1.0 * t))
        c2w[t, :3, 3] = [0.1 * t, 0.01 * t, 0.0]
    return c2w


def _observations(c2w: np.ndarray, n_points: int, drift_px: float = 0.0) -> bundle.Observations:
    """Points anchored on a grid of each frame at depths 2-6, seen in every frame within 3;
    `drift_px` > 0 moves the first tenth of each frame's points by that many pixels a frame
    along y, across the epipolar lines of the sideways camera (an object whose motion no camera
    explains; motion along those lines looks like another depth)."""
    rng = np.random.default_rng(0)
    K_33 = focal_intrinsics_33(HEIGHT, WIDTH, FOCAL)
    n = len(c2w)
    pixels = pixel_grid_hw2(HEIGHT, WIDTH).reshape(-1, 2)
    anchor_t, anchor_xy, inverse, point, seen_t, seen_xy = [], [], [], [], [], []
    for a in range(n):
        xy = pixels[rng.choice(len(pixels), n_points, replace=False)]
        depth = rng.uniform(2.0, 6.0, n_points)
        rays = np.linalg.solve(K_33, np.c_[xy, np.ones(n_points)].T).T
        world = (rays * depth[:, None]) @ c2w[a, :3, :3].T + c2w[a, :3, 3]
        for b in range(max(0, a - 3), min(n, a + 4)):
            if b == a:
                continue
            camera = (world - c2w[b, :3, 3]) @ c2w[b, :3, :3]
            projected = (camera @ K_33.T)[:, :2] / camera[:, 2:]
            projected[: n_points // 10, 1] += drift_px * (b - a)
            point.append(a * n_points + np.arange(n_points))
            seen_t.append(np.full(n_points, b))
            seen_xy.append(projected)
        anchor_t.append(np.full(n_points, a))
        anchor_xy.append(xy)
        inverse.append(1.0 / depth)
    return bundle.Observations(
        anchor_t_p=np.concatenate(anchor_t),
        anchor_xy_p2=np.concatenate(anchor_xy),
        inverse_depth_p=np.concatenate(inverse),
        point_o=np.concatenate(point),
        seen_t_o=np.concatenate(seen_t),
        seen_xy_o2=np.concatenate(seen_xy),
    )


def _perturbed(c2w: np.ndarray, obs: bundle.Observations) -> tuple[np.ndarray, bundle.Observations]:
    """A start the size of the two-view estimates' errors: 0.5 deg, 2 cm, 10 % of depth."""
    rng = np.random.default_rng(1)
    start = c2w.copy()
    for t in range(1, len(c2w)):
        turn = axis_angle_33(rng.normal(size=3), np.deg2rad(0.5))
        start[t, :3, :3] = turn @ c2w[t, :3, :3]
        start[t, :3, 3] += rng.normal(scale=0.02, size=3)
    inverse = obs.inverse_depth_p * rng.uniform(0.9, 1.1, len(obs.inverse_depth_p))
    return start, replace(obs, inverse_depth_p=inverse)


def test_exact_observations_give_the_cameras_back():
    truth = _cameras(6)
    obs = _observations(truth, 150)
    start, obs_start = _perturbed(truth, obs)
    K_33 = focal_intrinsics_33(HEIGHT, WIDTH, FOCAL)
    result = bundle.bundle_adjust(start, K_33, obs_start, scale_px=1.0)
    assert result.residual_px_before > 0.5 and result.residual_px_after < 1e-3
    assert result.n_points == len(obs.anchor_t_p)  # no exact point is dropped
    error = ate_rpe(result.c2w_t44, truth)  # the scale is free: compared after Sim(3)
    extent = np.linalg.norm(truth[-1, :3, 3] - truth[0, :3, 3])
    assert error["ate"] < 1e-4 * extent and error["rpe_rot_deg"] < 1e-3
    np.testing.assert_array_equal(result.c2w_t44[0], start[0])  # frame 0 is held


def test_points_that_move_are_dropped_and_do_not_bend_the_cameras(monkeypatch):
    truth = _cameras(6)
    obs = _observations(truth, 150, drift_px=2.0)
    start, obs_start = _perturbed(truth, obs)
    K_33 = focal_intrinsics_33(HEIGHT, WIDTH, FOCAL)
    extent = np.linalg.norm(truth[-1, :3, 3] - truth[0, :3, 3])
    result = bundle.bundle_adjust(start, K_33, obs_start, scale_px=1.0)
    assert result.n_points == 6 * (150 - 15)  # exactly the moving tenth of each frame is gone
    assert result.residual_px_after < 1e-3
    assert ate_rpe(result.c2w_t44, truth)["ate"] < 1e-4 * extent
    # Without dropping them, Huber's pull bends the geometry.
    monkeypatch.setattr(bundle, "OUTLIER_ROUNDS", 0)
    kept = bundle.bundle_adjust(start, K_33, obs_start, scale_px=1.0)
    assert kept.n_points == 6 * 150
    assert ate_rpe(kept.c2w_t44, truth)["ate"] > 10 * ate_rpe(result.c2w_t44, truth)["ate"]


@pytest.fixture(scope="module")
def noisy_flow_window():
    """A moving-camera scene with its exact still flow plus 0.3 px of noise (DIS flow's error
    on textured still surfaces is 0.1-0.3 px), every consecutive pair and those 3 apart."""
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=10, camera="moving"))
    rng = np.random.default_rng(0)
    depth, c2w, K_33 = scene.depth_thw.astype(np.float64), scene.c2w_t44, scene.K_33

    def noisy(a: int, b: int) -> np.ndarray:
        flow = rigid_flow_hw2(depth[a], K_33, c2w[a], c2w[b])
        return (flow + rng.normal(scale=0.3, size=flow.shape)).astype(np.float32)

    flows = {(a, b): (noisy(a, b), noisy(b, a)) for a, b in frame_pairs(10, 3)}
    return scene, flows


def test_bundle_adjustment_makes_the_backend_s_cameras_and_depth_better(noisy_flow_window):
    scene, flows = noisy_flow_window
    settings = OfflineSettings(focal_px=scene.K_33[0, 0], min_parallax_px=0.5)
    still = ~scene.moving_thw.astype(bool)
    extent = np.linalg.norm(scene.c2w_t44[-1, :3, 3] - scene.c2w_t44[0, :3, 3])
    figures = {}
    for adjust in (False, True):
        window = run_window(
            scene.frames_thw3, flows, replace(settings, bundle_adjust=adjust), ~still
        )
        log_error = np.log(window.depth_thw / scene.depth_thw)
        shape_error = np.mean(
            [np.mean(np.abs(e[s] - np.median(e[s]))) for e, s in zip(log_error, still, strict=True)]
        )
        figures[adjust] = (ate_rpe(window.c2w_t44, scene.c2w_t44)["ate"] / extent, shape_error)
    (ate_chained, depth_chained), (ate_adjusted, depth_adjusted) = figures[False], figures[True]
    # Measured: ATE 5.8 % -> 0.12 % of the path, still depth's shape error 0.0201 -> 0.0181.
    assert ate_adjusted < 0.005 and ate_adjusted < ate_chained / 10
    assert depth_adjusted < 0.95 * depth_chained
