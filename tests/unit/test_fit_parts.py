"""The fitting engine's parts against exact expectations (test_fit.py runs whole fits)."""

from __future__ import annotations

import dataclasses
import io
import time

import numpy as np
import pytest
import torch

from services.common.errors import IntegrityError, InvalidArgumentError
from services.common.geometry import (
    axis_angle_33,
    backproject_p3,
    intrinsics_33,
    pixel_grid_hw2,
    project_p2,
)
from services.common.sampling import sample_bilinear
from services.common.store import LocalFolderStore
from services.depth.config import MEASURED_DEPTH_CONFIDENCE
from services.fit import camera
from services.fit import tracks as tracks_module
from services.fit.camera import optimise_pose, pnp_c2w, pose_update_44
from services.fit.checkpoint import FolderCheckpoints, pack, unpack
from services.fit.cluster import split_moving
from services.fit.config import FitConfig, preset
from services.fit.engine import FitPriors, FitResult
from services.fit.export import PLY_PROPERTIES, SH_C0, ply_bytes, tum_lines, write_tum
from services.fit.flow_tracks import carried_through_occlusion, chained_flow_tracks
from services.fit.gaussians import FrameGaussians, render_frame
from services.fit.initialise import (
    gaussians_at_pixels,
    neighbour_gap_px,
    sample_pixels,
    texture_probability_hw,
)
from services.fit.losses import photometric_loss, photometric_target, ssim_map_hw
from services.fit.motion import (
    flow_on_own_side,
    lift_moving,
    split_and_move,
    spread_displacement,
)
from services.fit.stage import StoreCheckpoints
from services.fit.timing import PhaseTimer
from services.fit.tracks import (
    APPEARANCE_MATCH_LEVELS,
    FRONT_SURFACE_GAP,
    FlowChain,
    FlowCheck,
    Tracks,
    attach,
    configured_tracks,
    track_2d,
    track_3d,
    track_queries,
)
from services.fit.videos import draw_trajectories, trajectory_frames
from tests.textures import smooth_texture_hw3

H, W = 48, 64
K_33 = intrinsics_33(H, W, 60.0)


def _pose(angle_deg: float, axis=(0.2, 1.0, 0.1), centre=(0.3, -0.1, 0.2)) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = axis_angle_33(np.array(axis, float), np.deg2rad(angle_deg))
    c2w[:3, 3] = centre
    return c2w


# -- configuration ---------------------------------------------------------------------------


def test_default_preset_has_the_original_defaults():
    cfg = preset("default")
    assert (cfg.init_points, cfg.iters_first, cfg.iters, cfg.camera_iters) == (
        60_000,
        500,
        300,
        150,
    )
    assert (cfg.lr_first, cfg.lr, cfg.camera_lr) == (4e-3, 1e-3, 5e-4)
    assert (cfg.lambda_rgb, cfg.lambda_depth, cfg.lambda_flow) == (1.0, 1e-4, 1e-2)
    assert (cfg.lambda_still, cfg.lambda_isotropic) == (10.0, 10.0)
    assert cfg == FitConfig()
    assert preset("fast").iters < cfg.iters and preset("test").init_points < 2000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_points", 10),
        ("iters", -1),
        ("camera_patience", -1),
        ("ssim_share", 1.5),
        ("lr", 0.0),
        ("moving_mask_margin_px", -1),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(InvalidArgumentError, match=field):
        dataclasses.replace(preset("test"), **{field: value})


def test_preset_returns_a_copy_and_refuses_unknown_names():
    preset("test").iters = 1
    assert preset("test").iters != 1
    with pytest.raises(InvalidArgumentError, match="preset"):
        preset("slow")


# -- priors ----------------------------------------------------------------------------------


def _priors(T: int = 3) -> FitPriors:
    return FitPriors(
        frames_thw3=np.zeros((T, H, W, 3), np.uint8),
        depth_thw=np.ones((T, H, W), np.float32),
        K_33=K_33,
        flow_fwd_t1hw2=np.zeros((T - 1, H, W, 2), np.float32),
        flow_bwd_t1hw2=None,
        moving_thw=np.zeros((T, H, W), np.float32),
    )


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("depth_thw", np.ones((3, H, W - 1), np.float32), "shape"),
        ("flow_fwd_t1hw2", np.zeros((3, H, W, 2), np.float32), "shape"),
        ("moving_thw", np.full((3, H, W), 2.0, np.float32), "[0, 1]"),
        ("depth_thw", np.zeros((3, H, W), np.float32), "no positive depth"),
        ("depth_thw", np.full((3, H, W), np.nan, np.float32), "NaN"),
        ("c2w_t44", np.zeros((3, 4, 4)), "last rows"),
        ("frames_thw3", np.zeros((3, H, W, 3), np.float32), "uint8"),
        ("depth_confidence_thw", np.ones((3, H, W + 1), np.float32), "shape"),
        ("depth_confidence_thw", np.full((3, H, W), 1.5, np.float32), "[0, 1]"),
    ],
)
def test_priors_validation_names_the_field(field, value, needle):
    priors = dataclasses.replace(_priors(), **{field: value})
    with pytest.raises(InvalidArgumentError, match=field) as info:
        priors.validate()
    assert needle in str(info.value)


def test_valid_priors_pass():
    _priors().validate()
    dataclasses.replace(_priors(), moving_thw=np.zeros((3, H, W), bool)).validate()
    dataclasses.replace(_priors(), depth_confidence_thw=np.ones((3, H, W), np.float32)).validate()


def test_hard_moving_masks_are_the_moving_masks_where_every_score_is_0_or_1():
    """`FitPriors.hard_moving_masks`: the moving masks themselves where every score is 0 or 1
    (exact masks, or the user's), bool ones too; none for soft scores."""
    hard_thw = np.zeros((3, H, W), np.float32)
    hard_thw[:, 10:20, 10:20] = 1.0
    hard = dataclasses.replace(_priors(), moving_thw=hard_thw)
    assert np.array_equal(hard.hard_moving_masks(), hard_thw == 1)
    as_bool = dataclasses.replace(_priors(), moving_thw=hard_thw == 1)
    assert np.array_equal(as_bool.hard_moving_masks(), hard_thw == 1)
    soft = dataclasses.replace(_priors(), moving_thw=hard_thw * np.float32(0.8))
    assert soft.hard_moving_masks() is None


def test_measured_depth_needs_positive_depth_and_enough_confidence():
    priors = _priors()
    priors.depth_thw[0, 0, 0] = 0.0
    unconfident_thw = np.stack([priors.depth_measured_hw(t) for t in range(3)])
    assert unconfident_thw.sum() == 3 * H * W - 1  # no confidence: all measured
    confidence_thw = np.full((3, H, W), MEASURED_DEPTH_CONFIDENCE, np.float32)
    confidence_thw[1, :, : W // 2] = 0.05  # the offline backend's filled pixels
    confident = dataclasses.replace(priors, depth_confidence_thw=confidence_thw)
    measured_thw = np.stack([confident.depth_measured_hw(t) for t in range(3)])
    assert not measured_thw[0, 0, 0] and measured_thw[0, 0, 1]
    assert not measured_thw[1, :, : W // 2].any() and measured_thw[1, :, W // 2 :].all()
    assert priors.first_frames(2).depth_confidence_thw is None


def test_widened_masks_reach_the_margin_and_keep_each_score():
    priors = _priors()
    priors.moving_thw[1, 4, 5] = 0.8  # one moving pixel, with its score
    priors.moving_thw[2, 0, 0] = 1.0  # one in a corner
    assert priors.with_moving_widened(0) is priors
    widened_thw = priors.with_moving_widened(2).moving_thw
    expected_thw = np.zeros((3, H, W), np.float32)
    expected_thw[1, 2:7, 3:8] = 0.8  # 2 px on every side, the same frame only
    expected_thw[2, 0:3, 0:3] = 1.0
    np.testing.assert_array_equal(widened_thw, expected_thw)
    assert priors.moving_thw.sum() == np.float32(1.8)  # the given priors are left as they were
    flags = dataclasses.replace(priors, moving_thw=priors.moving_thw > 0).with_moving_widened(1)
    assert flags.moving_thw.dtype == np.float32 and flags.moving_thw[1, 3:6, 4:7].all()


# -- initialisation, losses, camera ----------------------------------------------------------


def test_texture_sampling_prefers_edges_and_is_seeded():
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, W // 2 :] = 255  # one vertical edge
    probability_hw = texture_probability_hw(frame, texture_share=0.9)
    assert probability_hw.sum() == pytest.approx(1.0)
    assert probability_hw[:, W // 2 - 1].min() > 10 * probability_hw[:, 5].max()
    rows, cols = sample_pixels(probability_hw, 60, np.random.default_rng(1))
    again = sample_pixels(probability_hw, 60, np.random.default_rng(1))
    assert np.array_equal(rows, again[0]) and np.array_equal(cols, again[1])
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 60
    on_edge = np.abs(cols - (W // 2 - 0.5)) < 1  # the 2 of 64 columns Sobel sees the edge in
    assert on_edge.mean() > 0.7
    assert len(sample_pixels(probability_hw, 10**6, np.random.default_rng(1))[0]) == H * W


def test_sampling_draws_what_a_draw_over_the_whole_image_draws():
    # sample_pixels hands only the candidates to rng.choice; the draws must be those of a
    # choice over every pixel with the same generator (zeros add nothing to its sums).
    rng = np.random.default_rng(3)
    for trial in range(30):
        probability_hw = rng.random((H, W)) ** rng.uniform(1, 6)
        probability_hw[rng.random((H, W)) < rng.uniform(0.0, 0.98)] = 0.0
        n = int(rng.integers(1, 400))
        p = probability_hw.reshape(-1)
        n_expected = min(n, int(np.count_nonzero(p)))
        flat = np.random.default_rng(trial).choice(
            p.size, size=n_expected, replace=False, p=p / p.sum()
        )
        expected = np.divmod(np.sort(flat), W)
        rows, cols = sample_pixels(probability_hw, n, np.random.default_rng(trial))
        assert np.array_equal(rows, expected[0]) and np.array_equal(cols, expected[1])


def test_neighbour_gaps_leave_out_only_points_too_far_to_matter():
    # Brute force over every point, against the search that leaves far existing points out:
    # the clipped footprints (what a new Gaussian's size comes from) must be equal.
    rng = np.random.default_rng(4)
    for n_new, n_old in [(300, 5000), (40, 20000), (2, 3), (1, 0), (500, 0)]:
        blob_centres = rng.uniform([0, 0], [640, 360], (3, 2))
        new_p2 = np.unique(
            np.rint(blob_centres[rng.integers(0, 3, n_new)] + rng.normal(0, 25, (n_new, 2))),
            axis=0,
        )
        old_m2 = rng.uniform([-40, -40], [680, 400], (n_old, 2))
        pool_q2 = np.concatenate([new_p2, old_m2])
        k = min(3, len(pool_q2) - 1)
        if k == 0:
            expected = np.ones(len(new_p2))
        else:
            distance_pq = np.linalg.norm(new_p2[:, None] - pool_q2[None], axis=-1)
            expected = np.sort(distance_pq, axis=1)[:, 1 : k + 1].mean(axis=1)
        got = neighbour_gap_px(new_p2, old_m2 if n_old else None)
        assert np.array_equal(np.clip(got / 2, 0.5, 4.0), np.clip(expected / 2, 0.5, 4.0))
        near = expected <= 8.0  # unclipped footprints: there the gap is the exact mean distance
        assert np.allclose(got[near], expected[near], rtol=1e-12)


def test_new_gaussians_sit_on_the_depth_prior():
    rng = np.random.default_rng(0)
    depth_hw = rng.uniform(2.0, 5.0, (H, W)).astype(np.float32)
    frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    c2w = _pose(10.0)
    rows, cols = np.array([0, 10, 47]), np.array([0, 30, 63])
    g = gaussians_at_pixels(rows, cols, frame, depth_hw, depth_hw > 4, K_33, c2w, 7, 0.8, "cpu")
    xy, z = project_p2(K_33, c2w, g.means_n3.double().numpy())
    assert np.allclose(xy, np.stack([cols, rows], 1), atol=1e-3)
    assert np.allclose(z, depth_hw[rows, cols], rtol=1e-5)
    assert np.allclose(g.colors_n3.numpy(), frame[rows, cols] / 255.0, atol=0.011)
    assert g.ids_n.tolist() == [7, 8, 9]
    assert g.moving_n.tolist() == (depth_hw[rows, cols] > 4).tolist()
    assert torch.allclose(g.opacities_n, torch.tensor(0.8))


def test_ssim_and_photometric_loss():
    a = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0))
    target = photometric_target(a)
    assert torch.allclose(ssim_map_hw(a, target), torch.ones(H, W), atol=1e-5)
    assert float(photometric_loss(a, target, 0.2)) == pytest.approx(0.0, abs=1e-6)
    b = (a + 0.1).clamp(0, 1)
    weight = torch.zeros(H, W)
    weight[:10] = 1
    assert float(photometric_loss(b, target, 0.0, weight)) == pytest.approx(
        float(((b - a) ** 2)[:10].mean()), rel=1e-5
    )


def test_ssim_equals_the_two_dimensional_window_definition():
    """The separable blur must give SSIM with the full 11x11 Gaussian window (zero padding)."""
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(H, W, 3, generator=generator, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(H, W, 3, generator=generator, dtype=torch.float64)).clamp(0, 1)
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    window_11x11 = torch.outer(g, g) / torch.outer(g, g).sum()

    def blur(image_hw3: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(image_hw3.permute(2, 0, 1), (5, 5, 5, 5))
        patches = padded.unfold(1, 11, 1).unfold(2, 11, 1)  # [3, H, W, 11, 11]
        return (patches * window_11x11).sum(dim=(-1, -2)).permute(1, 2, 0)

    mu_a, mu_b = blur(a), blur(b)
    cov = blur(a * b) - mu_a * mu_b
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    c1, c2 = 0.01**2, 0.03**2
    expected_hw = (
        (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    ).mean(dim=-1)
    ssim_hw = ssim_map_hw(a, photometric_target(b))
    assert torch.allclose(ssim_hw, expected_hw, atol=1e-12)
    assert float(ssim_hw.mean()) < 0.97  # the noise is visible to the measure


@pytest.mark.parametrize("angle", [0.0, 1e-5, 0.37, 2.5])
def test_pose_update_is_the_exponential_map(angle):
    axis = torch.tensor([0.2, -0.6, 0.77], dtype=torch.float64)
    omega = axis / axis.norm() * angle
    tau = torch.tensor([0.3, -0.1, 0.5], dtype=torch.float64)
    twist_44 = torch.zeros(4, 4, dtype=torch.float64)
    twist_44[:3, :3] = torch.tensor(
        [[0, -omega[2], omega[1]], [omega[2], 0, -omega[0]], [-omega[1], omega[0], 0]]
    )
    twist_44[:3, 3] = tau
    pose_44 = pose_update_44(omega, tau)
    assert torch.allclose(pose_44, torch.linalg.matrix_exp(twist_44), atol=1e-12)
    expected_33 = axis_angle_33(omega.numpy(), angle) if angle > 0 else np.eye(3)
    assert np.allclose(pose_44[:3, :3].numpy(), expected_33, atol=1e-12)


def test_pnp_recovers_a_pose_from_exact_correspondences():
    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [W - 1, H - 1], (300, 2))
    points = backproject_p3(K_33, np.eye(4), xy, rng.uniform(2, 6, 300))
    truth = _pose(4.0)
    pixels, _ = project_p2(K_33, truth, points)
    pixels[:30] += rng.uniform(5, 10, (30, 2))  # outliers
    found = pnp_c2w(points, pixels, K_33, np.eye(4), rng)
    assert found is not None
    c2w, inlier_points, _ = found
    assert np.allclose(c2w, truth, atol=1e-6)
    assert len(inlier_points) == 270


def test_the_model_depth_lifts_where_it_covers_and_the_prior_departs():
    prior_hw = np.array([[2.0, 2.0, 2.0, 2.0]], np.float32)
    model_hw = np.array([[2.09, 2.11, 1.0, 0.0]], np.float32)
    alpha_hw = np.array([[1.0, 1.0, 0.4, 1.0]], np.float32)
    # within 5 %: the prior; beyond: the model; uncovered or empty: the prior.
    lifted_hw = camera.lifting_depth_hw(prior_hw, model_hw, alpha_hw)
    assert np.array_equal(lifted_hw, np.array([[2.0, 2.11, 2.0, 2.0]], np.float32))
    assert lifted_hw.dtype == np.float32


def _wall_refinement(monkeypatch):
    """Still Gaussians on a textured wall, the frame they render at a known pose, and a camera
    refinement of them against it that counts its renders: (refine(start_w2c, iters, patience)
    -> (pose, renders), the known pose, the loss at a pose)."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth_hw = (3.0 + 0.02 * np.arange(W)[None, :] + np.zeros((H, 1))).astype(np.float32)
    c2w = _pose(5.0)
    rows, cols = (a.ravel() for a in np.mgrid[0:H:2, 0:W:2])
    still = gaussians_at_pixels(rows, cols, frame, depth_hw, depth_hw < 0, K_33, c2w, 0, 0.8, "cpu")
    w2c_44 = torch.as_tensor(np.linalg.inv(c2w), dtype=torch.float32)
    K = torch.as_tensor(K_33, dtype=torch.float32)
    with torch.no_grad():
        target = photometric_target(still.render(w2c_44, K, W, H, backend="torch").rgb_hw3)
    points_p3 = still.means_n3[::9].detach()
    pixels_p2 = torch.as_tensor(project_p2(K_33, c2w, points_p3.double().numpy())[0]).float()
    renders = []
    counted = camera.render

    def counting_render(*args, **kwargs):
        renders.append(1)
        return counted(*args, **kwargs)

    monkeypatch.setattr(camera, "render", counting_render)
    settings = dict(lambda_flow=0.01, lr=5e-4, scene_scale=3.0, ssim_share=0.2, backend="torch")

    def refine(start_w2c_44, iters, patience):
        renders.clear()
        pose = optimise_pose(
            still, target, torch.ones(H, W), start_w2c_44, K, points_p3, pixels_p2,
            iters=iters, patience=patience, **settings,
        )  # fmt: skip
        return pose, len(renders)

    def loss(w2c):
        with torch.no_grad():
            rgb_hw3 = still.render(w2c, K, W, H, backend="torch").rgb_hw3
            return float(
                camera.camera_loss(rgb_hw3, target, torch.ones(H, W), settings["ssim_share"],
                                   points_p3, pixels_p2, w2c, K, settings["lambda_flow"])
            )  # fmt: skip

    return refine, w2c_44, loss


def test_camera_refinement_stops_where_it_stalls(monkeypatch):
    refine, true_w2c_44, _ = _wall_refinement(monkeypatch)
    # From the right pose no step lowers the loss: the first check (5 steps) ends it, and the
    # start pose comes back as it was; without patience all 40 steps run to the same pose.
    pose, renders = refine(true_w2c_44, iters=40, patience=5)
    assert renders == 5 and torch.equal(pose, true_w2c_44)
    pose, renders = refine(true_w2c_44, iters=40, patience=0)
    assert renders == 40 and torch.equal(pose, true_w2c_44)


def test_camera_refinement_with_patience_is_the_full_one_cut_short(monkeypatch):
    refine, true_w2c_44, loss = _wall_refinement(monkeypatch)
    twist = torch.tensor([0.004, -0.003, 0.002, 0.01, 0.0, -0.01])
    start_w2c_44 = (pose_update_44(twist[:3], twist[3:]) @ true_w2c_44).float()
    pose, renders = refine(start_w2c_44, iters=120, patience=5)
    assert renders > 5  # the loss fell, so the first check did not stop it
    assert loss(pose) < 0.7 * loss(start_w2c_44)
    # Stopping only truncates: the same steps without patience give the same pose.
    same, same_renders = refine(start_w2c_44, iters=renders, patience=0)
    assert same_renders == renders and torch.equal(same, pose)


# -- motion and clustering -------------------------------------------------------------------


def test_flow_is_read_on_each_points_own_side_of_the_mask():
    rng = np.random.default_rng(5)
    flow_hw2 = rng.normal(size=(H, W, 2)).astype(np.float32)
    moving_hw = rng.random((H, W)) < 0.4
    xy_n2 = rng.uniform(-2, [W + 1, H + 1], (500, 2))
    moving_n = rng.random(500) < 0.5
    flow_n2 = flow_on_own_side(flow_hw2, xy_n2, moving_n, moving_hw)
    assert np.array_equal(flow_n2[moving_n], sample_bilinear(flow_hw2, xy_n2[moving_n], moving_hw))
    assert np.array_equal(
        flow_n2[~moving_n], sample_bilinear(flow_hw2, xy_n2[~moving_n], ~moving_hw)
    )
    # A point whose four corners lie on the other side reads plain bilinear flow.
    corner_xy = np.array([[10.5, 10.5]])
    one_side_hw = np.zeros((H, W), bool)
    assert np.array_equal(
        flow_on_own_side(flow_hw2, corner_xy, np.array([True]), one_side_hw),
        sample_bilinear(flow_hw2, corner_xy),
    )


def test_moving_depth_follows_the_prior_only_where_it_was_measured():
    c2w_next = _pose(5.0)
    xy_prev = np.array([[20.0, 20.0], [40.0, 30.0], [20.0, 30.0]])
    target = xy_prev + [[3.0, 1.0], [-2.0, 0.5], [1.0, 1.0]]
    z_prev = np.array([2.0, 3.0, 4.0])
    still_z = np.array([2.2, 2.9, 4.1])
    prior_prev_hw = np.full((H, W), 2.0, np.float32)
    prior_next_hw = np.full((H, W), 3.0, np.float32)  # the prior says 1.5 times farther
    measured_hw = np.ones((H, W), bool)
    filled_hw = measured_hw.copy()
    filled_hw[31, 21] = False  # the third point's target pixel was filled in, not measured

    def z_of(trusted_next_hw):
        points = lift_moving(
            xy_prev,
            z_prev,
            still_z,
            target,
            prior_prev_hw,
            prior_next_hw,
            measured_hw,
            trusted_next_hw,
            K_33,
            c2w_next,
        )
        xy, z = project_p2(K_33, c2w_next, points)
        assert np.allclose(xy, target)
        return z

    assert np.allclose(z_of(measured_hw), 1.5 * z_prev)
    assert np.allclose(z_of(filled_hw), [3.0, 4.5, 4.1])  # the unmeasured one: still_z


@pytest.mark.parametrize("behind_occluders", [False, True])
def test_a_moving_gaussian_hidden_at_its_target_keeps_its_depth_instead_of_the_occluders(
    behind_occluders,
):
    """Two moving Gaussians 3 away, both carried 2 px right by the flow; at the second one's
    target an occluder 2.1 away moves the other way (the backward flow there does not bring the
    point back) and the prior's depth is the occluder's. The first follows the prior's depth
    change (3 -> 3.3); with `moving_behind_occluders` the second keeps its depth, without it it
    lands on the occluder."""
    pixels_n2 = np.array([[20.0, 20.0], [40.0, 30.0]])
    means_n3 = backproject_p3(K_33, np.eye(4), pixels_n2, np.array([3.0, 3.0]))
    priors = dataclasses.replace(
        _priors(2),
        flow_fwd_t1hw2=np.tile(np.array([2.0, 0.0], np.float32), (1, H, W, 1)),
        flow_bwd_t1hw2=np.tile(np.array([-2.0, 0.0], np.float32), (1, H, W, 1)),
        moving_thw=np.ones((2, H, W), np.float32),
    )
    priors.flow_bwd_t1hw2[0, 28:33, 40:45] = (6.0, 0.0)  # the occluder around (42, 30)
    prior_next_hw = np.full((H, W), 3.3, np.float32)
    prior_next_hw[28:33, 40:45] = 2.1
    everywhere_hw = np.ones((H, W), bool)
    update = split_and_move(
        means_n3,
        np.array([True, True]),
        priors,
        1,
        c2w_prev_44=np.eye(4),
        c2w_next_44=np.eye(4),
        depth_prev_hw=np.full((H, W), 3.0),
        alpha_prev_hw=np.ones((H, W)),
        prior_depth_prev_hw=np.full((H, W), 3.0, np.float32),
        prior_depth_next_hw=prior_next_hw,
        trusted_prev_hw=everywhere_hw,
        trusted_next_hw=everywhere_hw,
        cfg=FitConfig(moving_behind_occluders=behind_occluders),
    )
    assert update.seen_moving_n.all()
    xy_n2, z_n = project_p2(K_33, np.eye(4), update.means_n3)
    assert np.allclose(xy_n2, pixels_n2 + [2.0, 0.0])
    assert np.allclose(z_n, [3.3, 3.0 if behind_occluders else 2.1])


def test_hidden_points_take_their_neighbours_displacement():
    known = np.array([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0]])
    moved = np.array([[1.0, 0, 0], [1, 0, 0], [0, 0, 5], [0, 0, 5]])
    unknown = np.array([[0.5, 0, 0], [10.5, 0, 0]])
    out = spread_displacement(known, moved, unknown)
    # 4 neighbours each: both see all four known points, so both get the mean displacement.
    assert np.allclose(out, moved.mean(axis=0))
    assert spread_displacement(known[:0], moved[:0], unknown).shape == (2, 3)


def test_a_hidden_point_takes_the_displacement_of_neighbours_not_in_front_of_it():
    """A point hidden at z 3 behind an occluder at z 2.1: the occluder's four points are its
    nearest and move right, its own object's four (a little farther, at its depth) move left.
    Given camera z it takes its own object's motion; without, the occluder's."""
    occluder_n3 = np.array([[0.1, 0.0, 2.1], [-0.1, 0.0, 2.1], [0.0, 0.1, 2.1], [0.0, -0.1, 2.1]])
    own_n3 = np.array([[1.0, 0.0, 3.0], [-1.0, 0.0, 3.0], [0.0, 1.0, 3.0], [0.0, -1.0, 3.0]])
    known_n3 = np.concatenate([occluder_n3, own_n3])
    moved_n3 = np.concatenate([np.tile([0.2, 0.0, 0.0], (4, 1)), np.tile([-0.3, 0.0, 0.0], (4, 1))])
    hidden_m3 = np.array([[0.0, 0.0, 3.0]])
    assert np.allclose(spread_displacement(known_n3, moved_n3, hidden_m3), [[0.2, 0.0, 0.0]])
    gated = spread_displacement(known_n3, moved_n3, hidden_m3, known_n3[:, 2], hidden_m3[:, 2])
    assert np.allclose(gated, [[-0.3, 0.0, 0.0]])
    # With nothing but the occluder around, the nearest points it has are used.
    alone = spread_displacement(
        occluder_n3, moved_n3[:4], hidden_m3, occluder_n3[:, 2], hidden_m3[:, 2]
    )
    assert np.allclose(alone, [[0.2, 0.0, 0.0]])


def test_split_moving_uses_motion_and_mask_prior():
    rng = np.random.default_rng(0)
    residual = np.concatenate([rng.normal(0.1, 0.05, 100), rng.normal(3.0, 0.3, 40)])
    truth = np.arange(140) >= 100
    mask = truth.astype(float)
    mask[95:100] = 1.0  # a dilated mask covers 5 still points: motion says still
    assert np.array_equal(split_moving(residual, mask, 0.5, 0.5), truth)
    # No motion evidence: the masks decide.
    flat = rng.normal(0.1, 0.05, 140)
    assert np.array_equal(split_moving(flat, mask, 0.5, 0.5), mask >= 0.5)
    # Motion without any mask: clear motion still wins.
    unmasked = split_moving(residual, np.zeros(140), 0.5, 0.5)
    assert not unmasked[:100].any() and unmasked[100:].mean() > 0.85
    assert split_moving(np.zeros(0), np.zeros(0), 0.5, 0.5).shape == (0,)
    # A mask over everything: clear motion still finds the still points.
    assert np.array_equal(split_moving(residual, np.ones(140), 0.5, 0.5), truth)


def test_split_moving_keeps_what_the_masks_are_sure_of_only_when_asked():
    """A masked object whose residual motion is slow (0.5 px, beside still points at 0.1 and a
    fast object at 3 px) falls to the still side of the 2-means; with `mask_keeps` its Gaussians
    stay moving where their score reaches it, and motion still decides below."""
    rng = np.random.default_rng(1)
    residual = np.concatenate(
        [rng.normal(0.1, 0.03, 100), rng.normal(3.0, 0.3, 40), rng.normal(0.5, 0.05, 30)]
    )
    mask = np.concatenate([np.zeros(100), np.ones(40), np.full(20, 0.9), np.full(10, 0.6)])
    by_motion = split_moving(residual, mask, 0.5, 0.5)
    assert not by_motion[140:].any() and by_motion[100:140].all() and not by_motion[:100].any()
    kept = split_moving(residual, mask, 0.5, 0.5, mask_keeps=0.75)
    assert np.array_equal(kept, by_motion | (mask >= 0.75))
    assert kept[140:160].all() and not kept[160:].any()
    assert np.array_equal(split_moving(residual, mask, 0.5, 0.5, mask_keeps=1.5), by_motion)
    for bad in (-0.1, float("nan")):
        with pytest.raises(InvalidArgumentError, match="cluster_mask_keeps"):
            FitConfig(cluster_mask_keeps=bad)


# -- tracks on a hand-made result -------------------------------------------------------------


def _two_layer_result() -> FitResult:
    """A big still back Gaussian and a small front one moving right by 0.3 per frame."""
    T = 4
    frames, depth = [], []
    for t in range(T):
        frame = FrameGaussians(
            means_n3=np.array([[0.0, 0.0, 5.0], [0.3 * t, 0.0, 3.0]], np.float32),
            quats_n4=np.tile(np.array([1, 0, 0, 0], np.float32), (2, 1)),
            scales_n3=np.array([[3.0] * 3, [0.08] * 3], np.float32),
            opacities_n=np.array([0.99, 0.99], np.float32),
            colors_n3=np.array([[0.2] * 3, [0.9] * 3], np.float32),
            moving_n=np.array([False, True]),
            ids_n=np.array([3, 5]),
        )
        out = render_frame(frame, np.eye(4), K_33, W, H)
        depth.append((out.depth_hw / out.alpha_hw.clamp_min(1e-6)).numpy())
        frames.append(frame)
    return FitResult(
        c2w_t44=np.tile(np.eye(4), (T, 1, 1)),
        K_33=K_33,
        frames=frames,
        psnr_t=np.zeros(T),
        moving_share_t=np.full(T, 0.5),
        depth_scale_t=np.ones(T),
        depth_thw=np.stack(depth).astype(np.float32),
        moving_mask_thw=np.zeros((T, H, W), bool),
        held_back_t=np.zeros(T, np.int64),
        seconds=0.0,
    )


def test_tracks_follow_the_dominant_gaussian():
    result = _two_layer_result()
    front_xy, _ = project_p2(K_33, np.eye(4), np.array([[0.0, 0.0, 3.0]]))
    corner = (2.0, 3.0)  # (y, x) far from the front Gaussian
    queries = np.array([[0, front_xy[0, 1], front_xy[0, 0]], [1, *corner]])
    assert attach(result, queries).tolist() == [5, 3]
    points, occluded = track_2d(result, queries)
    # The query point is lifted at the front Gaussian's depth (3.0; the test below) and moves
    # with it.
    step = K_33[0, 0] * 0.3 / 3.0
    assert np.allclose(points[0, :, 0] - front_xy[0, 0], step * np.arange(4), atol=1e-3)
    assert np.allclose(points[1], [[corner[1], corner[0]]] * 4, atol=1e-3)
    assert not occluded.any()
    world, alive = track_3d(result, queries)
    assert alive.all()
    assert np.allclose(world[0, :, 0] - world[0, 0, 0], 0.3 * np.arange(4), atol=1e-5)
    assert np.allclose(world[1, :, 2], 5.0, atol=0.05)


def test_a_query_the_moving_mask_covers_at_an_objects_rim_moves_with_the_object():
    """At the front Gaussian's rim (2.5 of its standard deviations off its centre) the still one
    behind dominates the pixel: without masks the query stays there; with a moving mask over the
    pixel it attaches to the moving Gaussian, at its depth, and moves with it."""
    result = _two_layer_result()
    front_xy, _ = project_p2(K_33, np.eye(4), np.array([[0.0, 0.0, 3.0]]))
    rim_x = front_xy[0, 0] + 2.5 * 0.08 * K_33[0, 0] / 3.0
    queries = np.array([[0, front_xy[0, 1], rim_x]])
    assert attach(result, queries).tolist() == [3]
    unmasked = track_queries(result, queries)
    assert not unmasked.moving_q[0]
    assert np.allclose(unmasked.points_qt2[0, :, 0], rim_x, atol=1e-3)
    mask_thw = np.zeros((4, H, W), bool)
    mask_thw[0, int(round(front_xy[0, 1])), int(round(rim_x))] = True
    masked = track_queries(result, queries, moving_mask_thw=mask_thw)
    assert masked.moving_q[0]
    assert masked.world_qt3[0, 0, 2] == pytest.approx(3.0, abs=1e-4)
    step = K_33[0, 0] * 0.3 / 3.0
    assert np.allclose(masked.points_qt2[0, :, 0] - rim_x, step * np.arange(4), atol=1e-3)
    # A mask elsewhere changes nothing; one of the wrong shape is refused.
    mask_thw[0] = False
    mask_thw[0, 0, 0] = True
    elsewhere = track_queries(result, queries, moving_mask_thw=mask_thw)
    assert np.array_equal(elsewhere.points_qt2, unmasked.points_qt2)
    with pytest.raises(InvalidArgumentError, match="moving_mask_thw"):
        track_queries(result, queries, moving_mask_thw=mask_thw[:, :-1])
    # Configured: the priors' scores count where they reach MASK_SURE_SCORE, and only with
    # tracks_moving_by_mask.
    priors = _priors(4)
    for score, on, moves in ((0.95, True, True), (0.8, True, False), (0.95, False, False)):
        priors.moving_thw[0, int(round(front_xy[0, 1])), int(round(rim_x))] = score
        cfg = FitConfig(tracks_moving_by_mask=on)
        assert configured_tracks(result, queries, cfg, priors).moving_q[0] == moves


def test_a_moving_query_is_lifted_at_the_front_surface_not_at_the_blended_depth():
    result = _two_layer_result()
    front_xy, _ = project_p2(K_33, np.eye(4), np.array([[0.0, 0.0, 3.0]]))
    queries = np.array([[0, front_xy[0, 1], front_xy[0, 0]]])
    # The rendered depth blends the front Gaussian (3.0) with the back one 2 m behind it: more
    # than FRONT_SURFACE_GAP farther than the front surface.
    depth = sample_bilinear(result.depth_thw[0][..., None], front_xy)[0, 0]
    assert 3.0 / (1 - FRONT_SURFACE_GAP) < depth < 3.3
    world, _ = track_3d(result, queries)
    assert world[0, 0, 2] == pytest.approx(3.0, abs=1e-4)
    # A query on a still Gaussian keeps the rendered depth.
    for frame in result.frames:
        frame.moving_n[:] = False
    world, _ = track_3d(result, queries)
    assert world[0, 0, 2] == pytest.approx(depth, abs=1e-4)
    # So does one whose ray never lets less than half the light pass (no front surface).
    faint = _two_layer_result()
    for frame in faint.frames:
        frame.opacities_n[:] = 0.2
    faint_depth = sample_bilinear(faint.depth_thw[0][..., None], front_xy)[0, 0]
    world, _ = track_3d(faint, queries)
    assert world[0, 0, 2] == pytest.approx(faint_depth, abs=1e-4)


def _back_query() -> np.ndarray:
    """The query row (t, y, x) on `_two_layer_result`'s still back point under the front
    Gaussian's path at frame 3, where the front one hides it."""
    xy3, _ = project_p2(K_33, np.eye(4), np.array([[0.9, 0.0, 3.0]]))
    return np.array([[0, 23.5, xy3[0, 0]]])


def _back_point_hidden_at_3(priors: FitPriors, cfg: FitConfig) -> bool:
    """The readout `cfg` configures (`configured_tracks`) flags the back point hidden at 3."""
    tracks = configured_tracks(_two_layer_result(), _back_query(), cfg, priors)
    return bool(tracks.occluded_qt[0, 3])


def test_track_behind_the_surface_is_occluded():
    result = _two_layer_result()
    # The still point under the front Gaussian's path at frame 3 is hidden there, seen at 0.
    back_query = _back_query()
    assert attach(result, back_query).tolist() == [3]
    _, occluded = track_2d(result, back_query)
    assert occluded[0].tolist() == [False, False, False, True]


MODEL_ORDER_ONLY = FitConfig(
    occlusion_from_frames=False,
    occlusion_from_flow_where_unmeasured=False,
    tracks_with_flow_chain=False,
)
"""A readout by the model's depth order alone (the three checks on by default off), against
which each check is switched on by itself."""


def test_the_frames_confirm_a_hidden_point_only_where_they_show_the_query():
    """The point of the test above, hidden by the model at frame 3: with frames that show the
    query's colours there it is reported visible; with frames that differ there by more than
    APPEARANCE_MATCH_LEVELS it stays hidden. Points the model sees keep their flags."""
    result = _two_layer_result()
    back_query = _back_query()
    frames_thw3 = np.full((result.n_frames, result.height, result.width, 3), 100, np.uint8)
    _, occluded = track_2d(result, back_query, frames_thw3=frames_thw3)
    assert occluded[0].tolist() == [False, False, False, False]
    frames_thw3[3] += int(APPEARANCE_MATCH_LEVELS) + 1
    _, occluded = track_2d(result, back_query, frames_thw3=frames_thw3)
    assert occluded[0].tolist() == [False, False, False, True]
    frames_thw3[3] -= 2  # within the tolerance again
    _, occluded = track_2d(result, back_query, frames_thw3=frames_thw3)
    assert occluded[0].tolist() == [False, False, False, False]
    with pytest.raises(InvalidArgumentError) as caught:
        track_2d(result, back_query, frames_thw3=frames_thw3[:2])
    assert caught.value.field == "frames_thw3"
    # A fit's own readout (stage, suite, fit_bench) hands the frames on only with the flag.
    priors = _priors_of(result, frames_thw3)
    for flag, expected in ((False, True), (True, False)):
        cfg = dataclasses.replace(MODEL_ORDER_ONLY, occlusion_from_frames=flag)
        assert configured_tracks(result, back_query, cfg, priors).occluded_qt[0, 3] == expected


def _priors_of(
    result: FitResult, frames_thw3: np.ndarray, confidence: float | None = None
) -> FitPriors:
    """`_priors` of `result`'s clip with `frames_thw3`, still flows both ways and `confidence`
    on every pixel (None: no confidence, all measured)."""
    priors = _priors(result.n_frames)
    return dataclasses.replace(
        priors,
        frames_thw3=frames_thw3,
        flow_bwd_t1hw2=np.zeros_like(priors.flow_fwd_t1hw2),
        depth_confidence_thw=None
        if confidence is None
        else np.full(priors.depth_thw.shape, confidence, np.float32),
    )


def test_the_flow_check_fails_where_the_round_trip_misses_towards_the_query_frame():
    """Forward 2 px right and back 2 px left agree everywhere; with no backward motion a point
    after its query frame (back, then forward: 2 px off) and one before it (forward, then back)
    both fail, and the query frame itself never does."""
    T = 4
    forward = np.zeros((T - 1, H, W, 2), np.float32)
    forward[..., 0] = 2.0
    points_qt2 = np.tile(np.array([30.0, 20.0], np.float32), (2, T, 1))
    queries_q3 = np.array([[0, 20.0, 30.0], [2, 20.0, 30.0]])
    unmeasured_t = np.ones(T, bool)
    agreeing = FlowCheck(forward, -forward, unmeasured_t)
    assert not agreeing.disagrees_qt(points_qt2, queries_q3).any()
    still_back = FlowCheck(forward, np.zeros_like(forward), unmeasured_t)
    assert still_back.disagrees_qt(points_qt2, queries_q3).tolist() == [
        [False, True, True, True],
        [True, True, False, True],
    ]
    measured_1 = FlowCheck(forward, np.zeros_like(forward), np.array([True, False, True, True]))
    assert measured_1.disagrees_qt(points_qt2, queries_q3).tolist() == [
        [False, False, True, True],
        [True, False, False, True],
    ]


def test_the_flow_overrules_a_hidden_point_only_where_the_depth_measured_nothing():
    """The back point hidden at frame 3 (the tests above): with the flow agreeing there, the flag
    shows it only in a frame whose depth prior measured no pixel; where the flow's round trip
    misses there, or no backward flow is given, it stays hidden."""
    result = _two_layer_result()
    frames_thw3 = np.zeros((result.n_frames, H, W, 3), np.uint8)
    cfg = dataclasses.replace(MODEL_ORDER_ONLY, occlusion_from_flow_where_unmeasured=True)
    filled = _priors_of(result, frames_thw3, confidence=0.0)
    assert not _back_point_hidden_at_3(filled, cfg)
    assert _back_point_hidden_at_3(filled, MODEL_ORDER_ONLY)  # without it the model's order holds
    assert _back_point_hidden_at_3(
        _priors_of(result, frames_thw3, confidence=MEASURED_DEPTH_CONFIDENCE), cfg
    )
    assert _back_point_hidden_at_3(_priors_of(result, frames_thw3), cfg)  # no confidence: measured
    missing = dataclasses.replace(filled, flow_bwd_t1hw2=np.full_like(filled.flow_bwd_t1hw2, 3.0))
    assert _back_point_hidden_at_3(missing, cfg)
    assert _back_point_hidden_at_3(dataclasses.replace(filled, flow_bwd_t1hw2=None), cfg)


def test_the_flow_chain_agrees_where_it_reaches_the_point_unbroken():
    """Flow 1 px right and back: the chain from a query at frame 1 agrees with points on its path
    and not with one 3.5 px off it (FLOW_CHAIN_AGREEMENT_PX), though it holds there. A backward
    flow that turns the round trip between frames 1 and 2 into 2 px breaks the chain there for
    good, away from the query frame either way: after a query at frame 1, before one at frame 3,
    even where the point sits on the chain."""
    T = 4
    forward = np.zeros((T - 1, H, W, 2), np.float32)
    forward[..., 0] = 1.0
    queries_q3 = np.array([[1, 20.0, 30.0], [3, 20.0, 30.0]])
    points_qt2 = np.zeros((2, T, 2), np.float32)
    points_qt2[..., 1] = 20.0
    points_qt2[0, :, 0] = [25.5, 30.0, 31.0, 32.0]  # frame 0: 3.5 px left of the chain
    points_qt2[1, :, 0] = [27.0, 28.0, 29.0, 30.0]
    agrees_qt, chained_qt2, unbroken_qt = FlowChain(forward, -forward).agreement(
        points_qt2, queries_q3
    )
    assert agrees_qt.tolist() == [[False, True, True, True], [True, True, True, True]]
    assert unbroken_qt.all()
    np.testing.assert_allclose(chained_qt2[0, :, 0], [29.0, 30.0, 31.0, 32.0])
    broken = -forward
    broken[1] = 1.0  # from frame 2 back to 1: 1 px right, the round trip 2 px off
    points_qt2[1, :2, 0] = [29.0, 30.0]  # where the broken chain puts them
    agrees_qt, _, unbroken_qt = FlowChain(forward, broken).agreement(points_qt2, queries_q3)
    assert agrees_qt.tolist() == [[False, True, False, False], [False, False, True, True]]
    assert unbroken_qt.tolist() == [[True, True, False, False], [False, False, True, True]]


def _flow_chain_priors(
    forward: np.ndarray, backward: np.ndarray, moving_thw: np.ndarray
) -> FitPriors:
    """Priors that give FlowChain what it reads (flows and hard moving masks); the frames and
    depth are placeholders of the right shape."""
    T, h, w = moving_thw.shape
    return FitPriors(
        frames_thw3=np.zeros((T, h, w, 3), np.uint8),
        depth_thw=np.ones((T, h, w), np.float32),
        K_33=np.eye(3),
        flow_fwd_t1hw2=forward,
        flow_bwd_t1hw2=backward,
        moving_thw=moving_thw.astype(np.float32),
    )


def test_a_moving_chain_reads_the_flow_inside_hard_masks():
    """An object (columns 6-9 at frame 0) moves 1 px right a frame over a still background. A
    query at x = 9.4, inside its last column, reads 0.4 of the background's flow bilinearly and
    lags 0.4 px; read inside the masks (`inside_thw`) it moves with the object exactly, its
    round trips holding. A query not marked to read inside is carried as before, bit for bit.
    FlowChain.of takes hard moving masks (every score 0 or 1), not soft scores nor with its flag
    off."""
    T, h, w = 4, 20, 20
    inside_thw = np.zeros((T, h, w), bool)
    forward = np.zeros((T - 1, h, w, 2), np.float32)
    backward = np.zeros((T - 1, h, w, 2), np.float32)
    for t in range(T):
        inside_thw[t, :, 6 + t : 10 + t] = True
    for t in range(T - 1):
        forward[t][inside_thw[t]] = (1.0, 0.0)
        backward[t][inside_thw[t + 1]] = (-1.0, 0.0)
    queries_q3 = np.array([[0, 10.0, 9.4], [0, 10.0, 9.4]])
    plain_qt2, plain_lost_qt = chained_flow_tracks(forward, backward, queries_q3)
    read_qt2, read_lost_qt = chained_flow_tracks(
        forward, backward, queries_q3, inside_thw=inside_thw, reads_inside_q=np.array([True, False])
    )
    np.testing.assert_allclose(read_qt2[0, :, 0], [9.4, 10.4, 11.4, 12.4], atol=1e-5)
    assert not read_lost_qt[0].any()
    assert plain_qt2[0, 3, 0] == pytest.approx(12.0)  # the plain read lags 0.4 px
    assert np.array_equal(read_qt2[1], plain_qt2[1]) and np.array_equal(
        read_lost_qt[1], plain_lost_qt[1]
    )
    with pytest.raises(InvalidArgumentError, match="inside_thw"):
        chained_flow_tracks(forward, backward, queries_q3, inside_thw=inside_thw)

    priors = _flow_chain_priors(forward, backward, inside_thw)
    assert np.array_equal(FlowChain.of(priors, True).moving_inside_thw, inside_thw)
    assert FlowChain.of(priors, False).moving_inside_thw is None
    soft = dataclasses.replace(priors, moving_thw=inside_thw * np.float32(0.7))
    assert FlowChain.of(soft, True).moving_inside_thw is None
    chain = FlowChain.of(priors, True)
    points_qt2 = np.repeat(read_qt2[:1], 2, axis=0)
    agrees_qt, chained_qt2, _ = chain.agreement(points_qt2, queries_q3, np.array([True, False]))
    assert np.array_equal(chained_qt2, read_qt2) and agrees_qt.all()


def test_a_moving_chain_on_a_turning_objects_outline_reads_its_flow_to_first_order():
    """A disc of radius 6.3 px turns 0.25 rad a frame about its centre over a still background
    (exact flows, the disc's pixel centres as hard masks). A query 5.8 px from the centre lies on
    the mask's outline: read inside the masks bilinearly it takes the flow of pixel centres
    nearer the centre, which turn less far, and falls behind; the points FlowChain reports read
    the inside pixels' flow to first order and stay on the true circle to 1e-5 px, while where
    the chain holds and agrees comes from the bilinear read, as before."""
    T, h, w, radius, turn = 4, 24, 24, 6.3, 0.25
    centre_2 = np.array([11.7, 12.2])
    rotation_22 = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    offset_hw2 = pixel_grid_hw2(h, w) - centre_2
    disc_hw = np.linalg.norm(offset_hw2, axis=-1) <= radius
    inside_thw = np.repeat(disc_hw[None], T, axis=0)
    forward = np.zeros((T - 1, h, w, 2), np.float32)
    backward = np.zeros((T - 1, h, w, 2), np.float32)
    forward[:, disc_hw] = offset_hw2[disc_hw] @ rotation_22.T - offset_hw2[disc_hw]
    backward[:, disc_hw] = offset_hw2[disc_hw] @ rotation_22 - offset_hw2[disc_hw]
    start_2 = centre_2 + 5.8 * np.array([np.cos(0.3), np.sin(0.3)])
    angle_t = 0.3 + turn * np.arange(T)
    truth_t2 = centre_2 + 5.8 * np.stack([np.cos(angle_t), np.sin(angle_t)], axis=1)
    queries_q3 = np.array([[0, start_2[1], start_2[0]]])
    priors = _flow_chain_priors(forward, backward, inside_thw)
    chain = FlowChain.of(priors, True)
    bilinear_qt2, bilinear_lost_qt = chained_flow_tracks(
        forward, backward, queries_q3, inside_thw=inside_thw, reads_inside_q=np.array([True])
    )
    agrees_qt, chained_qt2, unbroken_qt = chain.agreement(
        bilinear_qt2, queries_q3, np.array([True])
    )
    np.testing.assert_allclose(chained_qt2[0], truth_t2, atol=1e-5)
    assert np.linalg.norm(bilinear_qt2[0, -1] - truth_t2[-1]) > 0.1
    assert np.array_equal(unbroken_qt[0], ~bilinear_lost_qt[0]) and agrees_qt.all()


def _crossing_objects(T: int = 10, h: int = 20, w: int = 64):
    """Object A (columns 10-25 at frame 0, rows 5-14) moves 2 px right a frame behind object B
    (columns 40-47, rows 2-17), which moves 2 px left, over a still background: exact flows
    (each pixel's own motion, also where it is hidden in the next frame) and both objects as
    hard masks."""
    cols_w, rows_h = np.arange(w), np.arange(h)
    inside_thw = np.zeros((T, h, w), bool)
    motion_thw2 = np.zeros((T, h, w, 2), np.float32)
    for t in range(T):
        a_hw = ((rows_h >= 5) & (rows_h < 15))[:, None] & (
            (cols_w >= 10 + 2 * t) & (cols_w < 26 + 2 * t)
        )
        b_hw = ((rows_h >= 2) & (rows_h < 18))[:, None] & (
            (cols_w >= 40 - 2 * t) & (cols_w < 48 - 2 * t)
        )
        motion_thw2[t][a_hw] = (2.0, 0.0)
        motion_thw2[t][b_hw] = (-2.0, 0.0)  # B lies in front
        inside_thw[t] = a_hw | b_hw
    return inside_thw, motion_thw2[:-1], -motion_thw2[1:]


def test_a_moving_point_is_carried_through_an_occlusion_by_its_objects_visible_part():
    """A point of A (x = 20) passes behind B in frames 5 and 6 (B's columns are 30-37 and 28-35
    there). Its chain fails the round trip at frame 5; carried on by the flow of A's visible part
    it lies where A's motion puts it in every frame, hidden exactly in frames 5-6 and seen again
    from frame 7. The same query read by FlowChain: the carried points and flags from the failed
    step on. A query whose chain fails its first step is not carried, nor is one on the
    background half a pixel beside A's outline (row 4.4): it reads A's flow inside the mask and
    moves with A until B comes, but never lies on a mask pixel."""
    T = 10
    inside_thw, forward, backward = _crossing_objects(T)
    truth_t = 20.0 + 2.0 * np.arange(T)
    points_t2, hidden_t = carried_through_occlusion(
        forward, backward, inside_thw, np.array([26.0, 10.0]), np.array([2.0, 0.0]), 3, 1
    )
    np.testing.assert_allclose(points_t2[4:, 0], truth_t[4:], atol=1e-9)
    np.testing.assert_allclose(points_t2[4:, 1], 10.0, atol=1e-9)
    assert np.flatnonzero(hidden_t).tolist() == [5, 6]

    queries_q3 = np.array([[0, 10.0, 20.0], [4, 10.0, 28.0], [0, 4.4, 20.0]])
    moving_q = np.ones(3, bool)
    chained_qt2, lost_qt = chained_flow_tracks(
        forward, backward, queries_q3, inside_thw=inside_thw, reads_inside_q=moving_q
    )
    assert np.flatnonzero(lost_qt[0])[0] == 5
    assert lost_qt[1, 5]  # the second query's chain fails its first step
    assert np.flatnonzero(lost_qt[2])[0] == 5 and chained_qt2[2, 4, 0] == pytest.approx(28.0)
    priors = _flow_chain_priors(forward, backward, inside_thw)
    chain = FlowChain.of(priors, True)
    _, chained_qt2, unbroken_qt = chain.agreement(chained_qt2, queries_q3, moving_q)
    points_qt2, hidden_qt, carried_qt = chain.carried(
        chained_qt2, unbroken_qt, queries_q3, moving_q
    )
    assert np.flatnonzero(carried_qt[0]).tolist() == [5, 6, 7, 8, 9]
    np.testing.assert_allclose(points_qt2[0, :, 0], truth_t, atol=1e-5)
    assert np.flatnonzero(hidden_qt[0]).tolist() == [5, 6]
    assert not carried_qt[1:].any() and not hidden_qt[1:].any()
    soft = dataclasses.replace(priors, moving_thw=inside_thw * np.float32(0.7))
    assert FlowChain.of(soft, True).carried(chained_qt2, unbroken_qt, queries_q3, moving_q) is None


def test_chained_points_move_by_the_flow_taken_from_neighbours_where_masks_are_soft():
    """An object (columns 8-19 at frame 0) moves 2 px right a frame over a still background, and
    both flows blend its motion with the background's over 6 columns at its right outline, as
    DIS does. A query at x = 18.5, on the object, chained plainly lags (1.5 px in the first
    step); with the flow taken from neighbours up to 4 px away (soft masks) it moves with the
    object exactly. Where the chain holds and where it agrees come from the flow as given, so
    they are those of the chain without it. Hard masks, or 0 px, leave the flows as given."""
    T, h, w = 4, 24, 48
    object_hw3, background_hw3 = smooth_texture_hw3(h, w, 1), smooth_texture_hw3(h, w, 2)
    frames_thw3 = np.repeat(background_hw3[None], T, axis=0)
    moving_thw = np.zeros((T, h, w), bool)
    forward = np.zeros((T - 1, h, w, 2), np.float32)
    backward = np.zeros((T - 1, h, w, 2), np.float32)
    columns_w = np.arange(w)
    for t in range(T):
        frames_thw3[t, :, 8 + 2 * t : 20 + 2 * t] = object_hw3[:, 8:20]
        moving_thw[t, :, 8 + 2 * t : 20 + 2 * t] = True
    for t in range(T - 1):
        # The outline at column 19 + 2t blended over columns 17..23 (+ 2t), and back from t + 1.
        forward[t, ..., 0] = np.interp(columns_w, [17 + 2 * t, 23 + 2 * t], [2.0, 0.0])
        forward[t, :, : 8 + 2 * t, 0] = 0.0
        backward[t, ..., 0] = np.interp(columns_w, [19 + 2 * t, 25 + 2 * t], [-2.0, 0.0])
        backward[t, :, : 10 + 2 * t, 0] = 0.0
    soft = FitPriors(
        frames_thw3=frames_thw3,
        depth_thw=np.ones((T, h, w), np.float32),
        K_33=np.eye(3),
        flow_fwd_t1hw2=forward,
        flow_bwd_t1hw2=backward,
        moving_thw=moving_thw * np.float32(0.7),
    )
    queries_q3 = np.array([[0, 12.0, 18.5]])
    moving_q = np.array([True])
    points_qt2 = np.zeros((1, T, 2), np.float32)
    plain = FlowChain.of(soft, True, 0)
    taken = FlowChain.of(soft, True, 4)
    assert plain.points_fwd_t1hw2 is None and taken.points_fwd_t1hw2 is not None
    plain_agrees_qt, plain_qt2, plain_unbroken_qt = plain.agreement(
        points_qt2, queries_q3, moving_q
    )
    agrees_qt, taken_qt2, unbroken_qt = taken.agreement(points_qt2, queries_q3, moving_q)
    np.testing.assert_allclose(taken_qt2[0, :, 0], [18.5, 20.5, 22.5, 24.5], atol=1e-4)
    np.testing.assert_allclose(taken_qt2[0, :, 1], 12.0, atol=1e-4)
    assert plain_qt2[0, 1, 0] == pytest.approx(20.0, abs=1e-4)  # 1.5 px read at the outline
    assert np.array_equal(agrees_qt, plain_agrees_qt)
    assert np.array_equal(unbroken_qt, plain_unbroken_qt) and unbroken_qt.all()
    hard = dataclasses.replace(soft, moving_thw=moving_thw.astype(np.float32))
    assert FlowChain.of(hard, True, 4).points_fwd_t1hw2 is None
    one_frame = FitPriors(
        frames_thw3=frames_thw3[:1],
        depth_thw=soft.depth_thw[:1],
        K_33=np.eye(3),
        flow_fwd_t1hw2=forward[:0],
        flow_bwd_t1hw2=backward[:0],
        moving_thw=soft.moving_thw[:1],
    )
    _, alone_qt2, _ = FlowChain.of(one_frame, True, 4).agreement(
        np.zeros((1, 1, 2), np.float32), queries_q3, moving_q
    )
    np.testing.assert_allclose(alone_qt2[0, 0], [18.5, 12.0])
    with pytest.raises(InvalidArgumentError, match="tracks_chain_neighbour_px"):
        FitConfig(tracks_chain_neighbour_px=-1)


def test_where_the_chained_flow_lies_close_a_still_point_is_reported_midway():
    """Flow 0.75 px right per frame: the chain from the back point's query, on a still Gaussian,
    lies 0.75 and 1.5 px from the point at frames 1 and 2, within FLOW_CHAIN_MIDWAY_PX, so these
    frames report the pixel midway and the 3D track moves with it at its camera z; at frame 3,
    2.25 px off, the model's point stays, shown in view by the chain (within
    FLOW_CHAIN_AGREEMENT_PX) where the model hides it. Without the flag, the model's point."""
    result = _two_layer_result()
    priors = _priors_of(result, np.zeros((result.n_frames, H, W, 3), np.uint8))
    drift = np.zeros_like(priors.flow_fwd_t1hw2)
    drift[..., 0] = 0.75
    priors = dataclasses.replace(priors, flow_fwd_t1hw2=drift, flow_bwd_t1hw2=-drift)
    model = configured_tracks(result, _back_query(), MODEL_ORDER_ONLY, priors)
    cfg = dataclasses.replace(MODEL_ORDER_ONLY, tracks_with_flow_chain=True)
    tracks = configured_tracks(result, _back_query(), cfg, priors)
    shift_t = tracks.points_qt2[0, :, 0] - model.points_qt2[0, :, 0]
    np.testing.assert_allclose(shift_t, [0.0, 0.375, 0.75, 0.0], atol=1e-4)
    _assert_3d_track_on_2d_at_model_z(result, tracks, model)
    assert model.occluded_qt[0].tolist() == [False, False, False, True]
    assert tracks.occluded_qt[0].tolist() == [False] * result.n_frames


def _assert_3d_track_on_2d_at_model_z(result: FitResult, tracks: Tracks, model: Tracks) -> None:
    """The first query's 3D track projects onto its 2D one, at the camera z of the model's."""
    for t in range(result.n_frames):
        xy, z = project_p2(K_33, result.c2w_t44[t], tracks.world_qt3[0, t][None].astype(float))
        np.testing.assert_allclose(xy[0], tracks.points_qt2[0, t], atol=1e-4)
        _, model_z = project_p2(K_33, result.c2w_t44[t], model.world_qt3[0, t][None].astype(float))
        assert z[0] == pytest.approx(model_z[0])


def test_a_moving_query_takes_the_chained_flows_point_wherever_the_chain_holds():
    """The front Gaussian moves about 5.5 px right per frame; a flow 1.5 px faster carries the
    chain from its query 1.5, 3 and 4.5 px ahead of the model's point at frames 1-3. The query,
    on a moving Gaussian, is reported at the chain's pixel in every frame, beyond
    FLOW_CHAIN_AGREEMENT_PX too, its 3D track with it at its camera z. Where a round trip
    fails (backward flow from frame 2 to 1 still) the chain breaks and the model's point stays
    from there on."""
    result = _two_layer_result()
    front_xy, _ = project_p2(K_33, np.eye(4), np.array([[0.0, 0.0, 3.0]]))
    query = np.array([[0, front_xy[0, 1], front_xy[0, 0]]])
    priors = _priors_of(result, np.zeros((result.n_frames, H, W, 3), np.uint8))
    flow = np.zeros_like(priors.flow_fwd_t1hw2)
    flow[..., 0] = K_33[0, 0] * 0.3 / 3.0 + 1.5
    priors = dataclasses.replace(priors, flow_fwd_t1hw2=flow, flow_bwd_t1hw2=-flow)
    model = configured_tracks(result, query, MODEL_ORDER_ONLY, priors)
    cfg = dataclasses.replace(MODEL_ORDER_ONLY, tracks_with_flow_chain=True)
    tracks = configured_tracks(result, query, cfg, priors)
    assert tracks.moving_q.tolist() == [True]
    shift_t = tracks.points_qt2[0, :, 0] - model.points_qt2[0, :, 0]
    np.testing.assert_allclose(shift_t, [0.0, 1.5, 3.0, 4.5], atol=1e-3)
    _assert_3d_track_on_2d_at_model_z(result, tracks, model)
    broken = -flow
    broken[1] = 0.0
    tracks = configured_tracks(
        result, query, cfg, dataclasses.replace(priors, flow_bwd_t1hw2=broken)
    )
    shift_t = tracks.points_qt2[0, :, 0] - model.points_qt2[0, :, 0]
    np.testing.assert_allclose(shift_t, [0.0, 1.5, 0.0, 0.0], atol=1e-3)


def test_the_chained_flow_overrules_a_hidden_point_where_it_reaches_it():
    """The back point hidden at frame 3 (the tests above) under still flow: the chain stays on the
    query pixel, where the point stays, so the flag shows it in every frame, measured depth or
    not; a chain that leaves the point (flow 2 px right and back), one whose round trips miss, or
    no backward flow keep it hidden."""
    result = _two_layer_result()
    # No confidence: measured everywhere.
    still = _priors_of(result, np.zeros((result.n_frames, H, W, 3), np.uint8))
    cfg = dataclasses.replace(MODEL_ORDER_ONLY, tracks_with_flow_chain=True)
    assert not _back_point_hidden_at_3(still, cfg)
    assert _back_point_hidden_at_3(still, MODEL_ORDER_ONLY)  # without it the model's order holds
    moving = np.zeros_like(still.flow_fwd_t1hw2)
    moving[..., 0] = 2.0
    assert _back_point_hidden_at_3(
        dataclasses.replace(still, flow_fwd_t1hw2=moving, flow_bwd_t1hw2=-moving), cfg
    )
    missing = dataclasses.replace(still, flow_bwd_t1hw2=np.full_like(still.flow_bwd_t1hw2, 3.0))
    assert _back_point_hidden_at_3(missing, cfg)
    assert _back_point_hidden_at_3(dataclasses.replace(still, flow_bwd_t1hw2=None), cfg)


def test_track_queries_gives_both_tracks_and_the_moving_flag():
    result = _two_layer_result()
    front_xy, _ = project_p2(K_33, np.eye(4), np.array([[0.0, 0.0, 3.0]]))
    queries = np.array([[0, front_xy[0, 1], front_xy[0, 0]], [1, 2.0, 3.0]])
    tracks = track_queries(result, queries)
    points, occluded = track_2d(result, queries)
    world, alive = track_3d(result, queries)
    np.testing.assert_array_equal(tracks.points_qt2, points)
    np.testing.assert_array_equal(tracks.occluded_qt, occluded)
    np.testing.assert_array_equal(tracks.world_qt3, world)
    np.testing.assert_array_equal(tracks.alive_qt, alive)
    assert tracks.moving_q.tolist() == [True, False]  # the front Gaussian moves, the back not


def test_no_queries_give_empty_tracks_and_an_undrawn_trajectory_video():
    result = _two_layer_result()
    tracks = track_queries(result, np.zeros((0, 3)))
    assert tracks.points_qt2.shape == (0, 4, 2) and tracks.world_qt3.shape == (0, 4, 3)
    assert tracks.occluded_qt.shape == tracks.alive_qt.shape == (0, 4)
    assert tracks.moving_q.shape == (0,)
    frames = np.full((4, H, W, 3), 128, np.uint8)
    np.testing.assert_array_equal(trajectory_frames(result, frames, tracks), frames)


def test_queries_are_checked():
    result = _two_layer_result()
    with pytest.raises(InvalidArgumentError, match="queries_q3"):
        track_2d(result, np.array([[9, 1.0, 1.0]]))
    with pytest.raises(InvalidArgumentError, match="queries_q3"):
        track_2d(result, np.zeros((2, 2)))


# -- trajectories with empty sets (the original crashed there) --------------------------------


@pytest.mark.parametrize("moving", [np.zeros(5, bool), np.ones(5, bool), np.zeros(0, bool)])
def test_draw_trajectories_handles_empty_sets(moving):
    T = 4
    frames = np.zeros((T, H, W, 3), np.uint8)
    n = len(moving)
    points = np.tile(np.linspace(5, 40, T)[None, :, None], (n, 1, 2))
    occluded = np.zeros((n, T), bool)
    drawn = draw_trajectories(frames, points, occluded, moving)
    assert drawn.shape == frames.shape and drawn.dtype == np.uint8
    assert (drawn[-1].any(axis=-1).sum() > 0) == (n > 0)
    if n:
        colour = drawn[-1][int(points[0, -1, 1]), int(points[0, -1, 0])]
        assert (colour[2] > colour[0]) == (not moving[0])  # still blue, moving warm


@pytest.mark.parametrize("all_moving", [False, True])
def test_trajectory_video_when_all_points_are_still_or_moving(all_moving):
    result = _two_layer_result()
    flagged = [dataclasses.replace(f, moving_n=np.full(2, all_moving)) for f in result.frames]
    result = dataclasses.replace(result, frames=flagged)
    frames = np.full((4, H, W, 3), 128, np.uint8)
    drawn = trajectory_frames(result, frames)
    assert drawn.shape == frames.shape
    assert (drawn != 128).any()


# -- exports and checkpoints ------------------------------------------------------------------


def test_ply_has_the_3dgs_layout_and_values():
    frame = _two_layer_result().frames[1]
    data = ply_bytes(frame)
    header, body = data.split(b"end_header\n")
    lines = header.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 2"]
    assert [line.split()[-1] for line in lines[3:]] == list(PLY_PROPERTIES)
    table = np.frombuffer(body, dtype=[(p, "<f4") for p in PLY_PROPERTIES])
    assert np.allclose(np.stack([table["x"], table["y"], table["z"]], 1), frame.means_n3)
    assert np.allclose(0.5 + SH_C0 * table["f_dc_0"], frame.colors_n3[:, 0], atol=1e-6)
    assert np.allclose(1 / (1 + np.exp(-table["opacity"])), frame.opacities_n, atol=1e-6)
    assert np.allclose(np.exp(table["scale_0"]), frame.scales_n3[:, 0], rtol=1e-6)
    assert np.allclose(table["rot_0"], 1.0)


def test_tum_lines_round_trip():
    c2w = np.stack([np.eye(4), _pose(30.0, axis=(0, 0, 1), centre=(1, 2, 3))])
    lines = tum_lines(c2w, fps=5.0)
    assert lines[0].split() == ["0.000000"] + ["0.000000000"] * 6 + ["1.000000000"]
    values = np.array(lines[1].split(), float)
    half = np.deg2rad(15.0)
    assert np.allclose(values, [0.2, 1, 2, 3, 0, 0, np.sin(half), np.cos(half)], atol=1e-8)
    text = io.StringIO()
    write_tum(c2w, 5.0, text)
    assert text.getvalue().splitlines()[1:] == lines
    with pytest.raises(InvalidArgumentError, match="fps"):
        tum_lines(c2w, 0.0)


@pytest.mark.parametrize("kind", ["folder", "store"])
def test_checkpoint_sinks_keep_every_one_until_cleared(tmp_path, kind):
    if kind == "folder":
        sink = FolderCheckpoints(tmp_path / "ckpt")
    else:
        sink = StoreCheckpoints(LocalFolderStore(tmp_path / "store"), "fits/abc/checkpoints")
    assert sink.load_all() == []
    sink.save(3, b"three")
    sink.save(1, b"one")
    assert sink.load_all() == [(1, b"one"), (3, b"three")]
    sink.clear()
    assert sink.load_all() == []
    sink.save(5, b"five")
    assert sink.load_all() == [(5, b"five")]


def test_checkpoint_encoding_round_trips_and_rejects_garbage():
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.eye(2, dtype=np.float32)}
    back, meta = unpack(pack(arrays, {"frame": 3}))
    assert meta == {"frame": 3}
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    with pytest.raises(IntegrityError):
        unpack(b"not a checkpoint")


def test_phase_timer_does_not_count_nested_phases_twice():
    timer = PhaseTimer(torch.device("cpu"))
    with timer.phase("optimise"):
        time.sleep(0.05)
        with timer.phase("densify"):
            time.sleep(0.1)
    with timer.phase("optimise"):
        time.sleep(0.05)
    assert set(timer.seconds) == {"optimise", "densify"}
    assert 0.1 <= timer.seconds["densify"] < 0.15
    assert 0.1 <= timer.seconds["optimise"] < 0.15  # the nested 0.1 s is densify's alone


def _spinning_ball_result(
    T: int = 5,
    spin_deg: float = 12.0,
    jitter: float = 0.0,
    *,
    disc: bool = False,
    depth_noise: float = 0.0,
) -> tuple[FitResult, np.ndarray, list[np.ndarray]]:
    """A ball of 80 small Gaussians (radius 0.5, 4 m away) that spins `spin_deg` per frame about
    a tilted axis while it drifts right, before a big still back Gaussian; `jitter`: each ball
    Gaussian also wanders by that standard deviation (m) per axis and frame. `disc`: the 80 lie
    on a disc facing the camera instead and spin about the optical axis, so their image motion
    is one similarity of the image; `depth_noise`: each one's distance from the camera is off by
    that relative standard deviation in every frame after the first, along its ray (its pixel
    stays). Returns the result, the object's centres [T, 3] and rotations (from frame 0)."""
    i = np.arange(80) + 0.5
    if disc:
        radius_n, azimuth = 0.5 * np.sqrt(i / 80), np.pi * (1 + 5**0.5) * i
        shape_n3 = np.stack([radius_n * np.cos(azimuth), radius_n * np.sin(azimuth), 0 * i], 1)
        axis_3 = np.array([0.0, 0.0, 1.0])
    else:
        polar, azimuth = np.arccos(1 - 2 * i / 80), np.pi * (1 + 5**0.5) * i
        shape_n3 = 0.5 * np.stack(
            [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], 1
        )
        axis_3 = np.array([0.3, 1.0, 0.2])
    centres_t3 = np.array([[0.05 * t, 0.0, 4.0] for t in range(T)])
    rotations = [axis_angle_33(axis_3, np.deg2rad(spin_deg * t)) for t in range(T)]
    rng = np.random.default_rng(0)
    wander_tn3 = rng.normal(0.0, jitter, (T, 80, 3))
    wander_tn3[0] = 0.0
    along_ray_tn = 1.0 + rng.normal(0.0, depth_noise, (T, 80))
    along_ray_tn[0] = 1.0
    frames, depth = [], []
    for t in range(T):
        ball_n3 = (shape_n3 @ rotations[t].T + centres_t3[t] + wander_tn3[t]) * along_ray_tn[
            t, :, None
        ]
        frame = FrameGaussians(
            means_n3=np.vstack([[0.0, 0.0, 9.0], ball_n3]).astype(np.float32),
            quats_n4=np.tile(np.array([1, 0, 0, 0], np.float32), (81, 1)),
            scales_n3=np.array([[6.0] * 3] + [[0.12] * 3] * 80, np.float32),
            opacities_n=np.full(81, 0.99, np.float32),
            colors_n3=np.full((81, 3), 0.5, np.float32),
            moving_n=np.arange(81) > 0,
            ids_n=np.arange(81),
        )
        out = render_frame(frame, np.eye(4), K_33, W, H)
        depth.append((out.depth_hw / out.alpha_hw.clamp_min(1e-6)).numpy())
        frames.append(frame)
    result = FitResult(
        c2w_t44=np.tile(np.eye(4), (T, 1, 1)),
        K_33=K_33,
        frames=frames,
        psnr_t=np.zeros(T),
        moving_share_t=np.full(T, 80 / 81),
        depth_scale_t=np.ones(T),
        depth_thw=np.stack(depth).astype(np.float32),
        moving_mask_thw=np.zeros((T, H, W), bool),
        held_back_t=np.zeros(T, np.int64),
        seconds=0.0,
    )
    return result, centres_t3, rotations


def _object_truth_t3(world_3: np.ndarray, t_query: int, centres_t3, rotations) -> np.ndarray:
    """Where the object's own motion takes the point it holds at `world_3` in frame t_query."""
    local_3 = rotations[t_query].T @ (world_3.astype(np.float64) - centres_t3[t_query])
    return np.stack(
        [
            rotation @ local_3 + centre
            for rotation, centre in zip(rotations, centres_t3, strict=True)
        ]
    )


def _assert_2d_and_3d_readouts_agree(result, queries, motion, tracks) -> None:
    """track_2d and track_3d give what track_queries gave."""
    points, occluded = track_2d(result, queries, motion)
    np.testing.assert_array_equal(points, tracks.points_qt2)
    np.testing.assert_array_equal(occluded, tracks.occluded_qt)
    world, alive = track_3d(result, queries, motion)
    np.testing.assert_array_equal(world, tracks.world_qt3)
    np.testing.assert_array_equal(alive, tracks.alive_qt)


def test_local_rigid_tracks_turn_with_a_spinning_object():
    result, centres_t3, rotations = _spinning_ball_result()
    # Queries on the ball at frames 0 and 2 (tracked both ways) and one on the still background.
    queries = np.array([[0, 24.0, 33.0], [2, 21.0, 30.0], [0, 5.0, 5.0]])
    rigid = track_queries(result, queries, "local_rigid")
    carried = track_queries(result, queries, "gaussian")
    assert rigid.moving_q.tolist() == [True, True, False]
    for q, t_query in enumerate([0, 2]):
        # The ball's own motion of the query's point: exact for the local rigid track.
        truth_t3 = _object_truth_t3(rigid.world_qt3[q, t_query], t_query, centres_t3, rotations)
        np.testing.assert_allclose(rigid.world_qt3[q], truth_t3, atol=1e-4)
        truth_xy_t2, _ = project_p2(K_33, np.eye(4), truth_t3)
        np.testing.assert_allclose(rigid.points_qt2[q], truth_xy_t2, atol=1e-2)
        # Carried at a fixed offset from one Gaussian's centre, the point does not turn.
        assert np.abs(carried.world_qt3[q] - truth_t3).max() > 0.02
    # A still query and every occlusion flag are the same either way.
    np.testing.assert_array_equal(rigid.world_qt3[2], carried.world_qt3[2])
    np.testing.assert_array_equal(rigid.occluded_qt, carried.occluded_qt)
    np.testing.assert_array_equal(rigid.alive_qt, carried.alive_qt)
    _assert_2d_and_3d_readouts_agree(result, queries, "local_rigid", rigid)


def test_local_rigid_keeps_the_carried_point_where_no_turn_explains_the_motion():
    # The ball drifts without turning, its Gaussians wandering 1 cm per axis and frame: a rigid
    # turn explains no more of the neighbours' motion than their mean translation does.
    result, _, _ = _spinning_ball_result(spin_deg=0.0, jitter=0.01)
    queries = np.array([[0, 24.0, 33.0], [2, 21.0, 30.0]])
    rigid = track_queries(result, queries, "local_rigid")
    assert rigid.moving_q.all()
    np.testing.assert_array_equal(
        rigid.world_qt3, track_queries(result, queries, "gaussian").world_qt3
    )
    # Turning 12 degrees per frame under the same wander, the turn explains it.
    result, _, _ = _spinning_ball_result(jitter=0.01)
    moved = track_queries(result, queries, "local_rigid").world_qt3
    assert np.abs(moved - track_queries(result, queries, "gaussian").world_qt3).max() > 0.02


def test_local_rigid_weighs_down_gaussians_that_drift_off_the_object():
    result, centres_t3, rotations = _spinning_ball_result()
    queries = np.array([[0, 24.0, 33.0]])
    dominant = attach(result, queries)[0]
    # The two Gaussians nearest the query's own drift off the ball by 0.1 m per frame.
    means_n3 = result.frames[0].means_n3
    gap_n = np.linalg.norm(means_n3 - means_n3[dominant], axis=1)
    gap_n[[0, dominant]] = np.inf
    for t, frame in enumerate(result.frames):
        frame.means_n3[np.argsort(gap_n)[:2]] += np.array([0.0, 0.1 * t, 0.0], np.float32)
    world_3 = track_queries(result, queries, "local_rigid").world_qt3[0]
    truth_t3 = _object_truth_t3(world_3[0], 0, centres_t3, rotations)
    # The refits with residual weights leave them out (one plain fit: 0.056 m off).
    np.testing.assert_allclose(world_3, truth_t3, atol=1e-4)


def test_local_rigid_falls_back_to_the_carried_point():
    result, _, _ = _spinning_ball_result()
    queries = np.array([[0, 24.0, 33.0]])
    carried = track_queries(result, queries, "gaussian")
    dominant = attach(result, queries)[0]
    # In the last frame only the query's own Gaussian and two others of the ball are left:
    # too few neighbours for a rigid fit, so the point is the carried one there.
    last = result.frames[-1]
    keep = (last.ids_n == 0) | (last.ids_n == dominant) | np.isin(last.ids_n, [1, 2])
    result.frames[-1] = last.subset(keep)
    rigid = track_queries(result, queries, "local_rigid")
    np.testing.assert_array_equal(rigid.world_qt3[0, -1], carried.world_qt3[0, -1])
    assert np.abs(rigid.world_qt3[0, 1:-1] - carried.world_qt3[0, 1:-1]).max() > 0.01
    # A query point far off the moving cloud (its lift sank behind an outline) is carried too.
    far_q3 = carried.world_qt3[:, 0].astype(np.float64) + np.array([0.0, 0.0, 3.0])
    moved = tracks_module._local_rigid_points(
        result, queries, far_q3, np.array([True]), carried.world_qt3
    )
    np.testing.assert_array_equal(moved, carried.world_qt3)


def test_local_affine_tracks_follow_the_neighbours_image_motion():
    # A disc spinning 12 degrees per frame about the optical axis: its image motion is one
    # similarity of the image. Its Gaussians' depths are off by 5 % in every later frame (their
    # pixels are right): the rigid fit in 3D is thrown off, the affine map of the image is not.
    result, centres_t3, rotations = _spinning_ball_result(disc=True, depth_noise=0.05)
    queries = np.array([[0, 24.0, 33.0], [2, 22.0, 31.0], [0, 5.0, 5.0]])
    affine = track_queries(result, queries, "local_affine")
    rigid = track_queries(result, queries, "local_rigid")
    assert affine.moving_q.tolist() == [True, True, False]
    for q, t_query in enumerate([0, 2]):
        # The disc's point under the query pixel (the disc stays in the plane z = 4).
        surface_3 = backproject_p3(K_33, np.eye(4), queries[q, [2, 1]][None], np.array([4.0]))[0]
        truth_t3 = _object_truth_t3(surface_3, t_query, centres_t3, rotations)
        truth_xy_t2, _ = project_p2(K_33, np.eye(4), truth_t3)
        np.testing.assert_allclose(affine.points_qt2[q], truth_xy_t2, atol=1e-3)
        assert np.abs(rigid.points_qt2[q] - truth_xy_t2).max() > 0.05
        # The point keeps local_rigid's camera z: only its pixel moves.
        np.testing.assert_allclose(affine.world_qt3[q, :, 2], rigid.world_qt3[q, :, 2], rtol=1e-5)
    # The still query, the occlusion flags and the 2D tracks' projection are as before.
    np.testing.assert_array_equal(affine.world_qt3[2], rigid.world_qt3[2])
    np.testing.assert_array_equal(affine.occluded_qt, rigid.occluded_qt)
    _assert_2d_and_3d_readouts_agree(result, queries, "local_affine", affine)


def test_local_affine_keeps_local_rigid_where_no_map_explains_the_motion():
    # The disc drifts without turning, its Gaussians wandering 1 cm per axis and frame: one
    # affine map explains no more of their image motion than their mean shift does.
    result, _, _ = _spinning_ball_result(spin_deg=0.0, jitter=0.01, disc=True)
    queries = np.array([[0, 24.0, 33.0], [2, 22.0, 31.0]])
    affine = track_queries(result, queries, "local_affine")
    assert affine.moving_q.all()
    np.testing.assert_array_equal(
        affine.world_qt3, track_queries(result, queries, "local_rigid").world_qt3
    )
    # Spinning under the same wander, the map explains it.
    result, _, _ = _spinning_ball_result(jitter=0.01, disc=True)
    moved = track_queries(result, queries, "local_affine").world_qt3
    assert np.abs(moved - track_queries(result, queries, "local_rigid").world_qt3).max() > 1e-3


def test_weighted_affine_fit_recovers_a_map_and_refuses_points_on_a_line():
    rng = np.random.default_rng(1)
    a_k2 = rng.uniform(-5, 5, (16, 2))
    map_32 = np.array([[0.9, 0.3], [-0.2, 1.1], [2.0, -1.5]])
    a_rk3 = np.concatenate([a_k2, np.ones((16, 1))], axis=1)[None].repeat(2, axis=0)
    a_rk3[1, :, 1] = 2.0 * a_rk3[1, :, 0]  # the second row's points lie on one line
    b_rk2 = a_rk3 @ map_32
    weight_rk = rng.uniform(0.5, 2.0, (2, 16))
    fitted_r32, fits_r = tracks_module._weighted_affine_fit(a_rk3, b_rk2, weight_rk)
    assert fits_r.tolist() == [True, False]
    np.testing.assert_allclose(fitted_r32[0], map_32, atol=1e-9)
    np.testing.assert_array_equal(fitted_r32[1], np.zeros((3, 2)))


def test_track_motion_is_checked():
    result, _, _ = _spinning_ball_result(2)
    with pytest.raises(InvalidArgumentError, match="motion"):
        track_2d(result, np.array([[0, 24.0, 33.0]]), "affine")
    with pytest.raises(InvalidArgumentError, match="track_motion"):
        FitConfig(track_motion="affine")
