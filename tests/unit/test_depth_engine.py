"""Depth engine end to end: the offline backend on synthetic and real frames, the re-run and
fallback policy with a stand-in model, and input validation.

Figures at the time of writing (2 shared CPU cores): moving-camera scene 256x192, 8 frames:
abs-rel 0.040 after one median scale for the whole clip (static pixels 0.023), 2 s.
ScanNet (4 frames, 640x480, flow at 640x480 resized to the 512x384 working size): all depths
finite and positive, rotation errors of the chained poses 0.3-1.0 deg, consecutive median-depth
ratios within 3.5%. docs/depth.md. The flow comes from the flow engine, as the pipeline's flow
stage computes it (tests/depth_flow.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, ResourceExhaustedError
from services.common.geometry import focal_intrinsics_33, relative_pose_from_c2w
from services.depth.backends.base import AlignmentFailedError, WindowDepth
from services.depth.backends.offline import PRIOR_CONFIDENCE, OfflineSettings
from services.depth.engine import (
    DepthConfig,
    DepthRuntime,
    WindowRunner,
    describe_backends,
    estimate_depth,
)
from services.depth.flows import resize_flow
from services.evaluation.metrics import (
    ate_rpe,
    depth_metrics,
    direction_error_deg,
    rotation_error_deg,
)
from services.synthetic.scene import SceneConfig, make_scene
from tests.depth_flow import flow_for_depth


@pytest.fixture(scope="module")
def moving_scene():
    return make_scene(SceneConfig(height=192, width=256, n_frames=8, camera="moving"))


@pytest.fixture(scope="module")
def moving_flow(moving_scene):
    return flow_for_depth(moving_scene.frames_thw3)


@pytest.fixture(scope="module")
def moving_result(moving_scene, moving_flow):
    return estimate_depth(moving_scene.frames_thw3, DepthConfig(), flow=moving_flow)


def test_offline_depth_on_a_moving_camera(moving_scene, moving_result):
    scene, result = moving_scene, moving_result
    assert result.depth_thw.shape == scene.depth_thw.shape and result.depth_thw.dtype == np.float32
    assert np.all(np.isfinite(result.depth_thw)) and np.all(result.depth_thw > 0)
    overall = depth_metrics(result.depth_thw, scene.depth_thw)  # one scale for the whole clip
    static = depth_metrics(result.depth_thw, scene.depth_thw, valid=~scene.moving_thw)
    assert overall["abs_rel"] < 0.06 and static["abs_rel"] < 0.035
    assert overall["delta1"] > 0.95
    # The assumed 60 degree field of view is the synthetic camera's: the intrinsics are exact.
    fx, fy, cx, cy = result.intrinsics
    np.testing.assert_allclose([fx, fy, cx, cy], scene.K_33[[0, 1, 0, 1], [0, 1, 2, 2]])
    camera = ate_rpe(result.c2w_t44, scene.c2w_t44)
    assert camera["rpe_rot_deg"] < 0.3 and camera["ate"] < 0.03  # metres, after Sim(3)
    q = result.quality
    assert q.nonpositive_share == 0.0 and q.prior_share == 0.0
    assert q.scale_drift < 0.05
    # No anchor grid, so no subsample period to score (the mast3r tests score it).
    assert q.periodic_artefact is None and q.artefact_period_px is None
    assert result.plan is None and result.backend == "offline" and result.repairs == []
    assert np.all((result.confidence_thw >= 0) & (result.confidence_thw <= 1))


def test_moving_mask_keeps_objects_out_of_the_geometry(moving_scene, moving_flow):
    masked = estimate_depth(
        moving_scene.frames_thw3, moving_thw=moving_scene.moving_thw, flow=moving_flow
    )
    static = ~moving_scene.moving_thw
    err = depth_metrics(masked.depth_thw, moving_scene.depth_thw, valid=static)["abs_rel"]
    assert err < 0.035
    assert np.all(masked.confidence_thw[moving_scene.moving_thw] <= 0.05)  # filled, not measured


def test_rotating_camera_falls_back_to_the_prior_and_says_so():
    scene = make_scene(SceneConfig(height=96, width=128, n_frames=6, camera="rotation"))
    result = estimate_depth(scene.frames_thw3, flow=flow_for_depth(scene.frames_thw3))
    assert result.quality.prior_share == 1.0 and result.prior_t.all()
    assert np.all(result.confidence_thw <= PRIOR_CONFIDENCE + 1e-6)
    assert result.c2w_t44 is None
    assert sum("smooth prior used" in r for r in result.repairs) == 6
    assert result.warnings == [
        "depth of 6 of 6 frames (100%) is the smooth prior, not measured: the camera barely "
        "translates there, so parallax cannot give depth; use the mast3r backend"
    ]
    # The prior is a ground plane seen from above: depth grows from the bottom row to the top.
    column = result.depth_thw[0, :, 64]
    assert np.all(np.diff(column) < 0) and column[0] / column[-1] == pytest.approx(3.0, rel=0.05)


def test_long_video_is_cut_into_windows_and_stitched():
    scene = make_scene(SceneConfig(height=144, width=192, n_frames=14, camera="moving"))
    cfg = DepthConfig(window=6, overlap=2)
    result = estimate_depth(scene.frames_thw3, cfg, flow=flow_for_depth(scene.frames_thw3, cfg))
    assert result.depth_thw.shape == (14, 144, 192)
    static = ~scene.moving_thw
    assert depth_metrics(result.depth_thw, scene.depth_thw, valid=static)["abs_rel"] < 0.08
    # One scale across the three windows: per-frame alignment scales agree within 20%.
    scales = [
        depth_metrics(result.depth_thw[t], scene.depth_thw[t], valid=static[t])["scale"]
        for t in range(14)
    ]
    assert max(scales) / min(scales) < 1.2


def test_output_keeps_the_frames_height_and_width():
    scene = make_scene(SceneConfig(height=96, width=160, n_frames=4, camera="moving"))
    cfg = DepthConfig(offline_long_side=64)
    result = estimate_depth(scene.frames_thw3, cfg, flow=flow_for_depth(scene.frames_thw3, cfg))
    assert result.work_hw == (38, 64) and result.depth_thw.shape == (4, 96, 160)
    fx, fy, cx, cy = result.intrinsics
    assert (cx, cy) == pytest.approx((79.5, 47.5)) and fx == pytest.approx(fy, rel=0.02)


def test_offline_depth_refuses_missing_or_incomplete_flow(moving_scene, moving_flow):
    frames = moving_scene.frames_thw3
    with pytest.raises(InvalidArgumentError, match="flow stage's result") as err:
        estimate_depth(frames)
    assert err.value.field == "flow"
    consecutive = {pair: flows for pair, flows in moving_flow.items() if pair[1] - pair[0] == 1}
    with pytest.raises(
        InvalidArgumentError, match=r"\(0, 3\): compute the flow with extra_stride=3"
    ):
        estimate_depth(frames, flow=consecutive)
    cropped = {pair: (fwd[:, :100], bwd[:, :100]) for pair, (fwd, bwd) in moving_flow.items()}
    with pytest.raises(InvalidArgumentError, match=r"shape \(192, 100, 2\)") as err:
        estimate_depth(frames, flow=cropped)
    assert err.value.field == "flow"


def test_flow_resized_to_the_working_size_matches_the_exact_flow_there():
    """The exact flow of a 256x192 scene, resized to 128x96 with its vectors halved, is the exact
    flow of the same scene rendered at 128x96 (up to occlusion edges)."""
    big = make_scene(SceneConfig(height=192, width=256, n_frames=2, camera="moving"))
    small = make_scene(SceneConfig(height=96, width=128, n_frames=2, camera="moving"))
    error_hw = np.linalg.norm(
        resize_flow(big.flow_fwd_t1hw2[0], (96, 128)) - small.flow_fwd_t1hw2[0], axis=-1
    )
    assert np.abs(small.flow_fwd_t1hw2[0]).max() > 10.0  # a real motion, not a still scene
    assert np.median(error_hw) < 0.01 and np.quantile(error_hw, 0.95) < 0.01


def test_scannet_depth_is_finite_positive_and_poses_match(shared_data):
    root = shared_data / "scannet-posed"
    names = ("0048", "0054", "0060", "0066")
    images = [cv2.imread(str(root / "color" / f"{n}.png")) for n in names]
    frames = np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images])
    gt_c2w = np.stack([np.loadtxt(root / "pose" / f"{n}.txt") for n in names])
    # The default 60 degree field of view (ScanNet's is 58); flow at 640x480, depth at 512x384.
    result = estimate_depth(frames, flow=flow_for_depth(frames))
    assert np.all(np.isfinite(result.depth_thw)) and np.all(result.depth_thw > 0)
    assert result.quality.nonpositive_share == 0.0 and result.quality.scale_drift < 0.06
    assert result.c2w_t44 is not None
    rot, direction = [], []
    for a, b in itertools.combinations(range(4), 2):
        R_gt, t_gt = relative_pose_from_c2w(gt_c2w[a], gt_c2w[b])
        R, t = relative_pose_from_c2w(result.c2w_t44[a], result.c2w_t44[b])
        rot.append(rotation_error_deg(R, R_gt))
        direction.append(direction_error_deg(t, t_gt))
    assert max(rot) < 2.0 and np.median(direction) < 10.0


class _StandIn:
    """A model stand-in with MASt3R's `run_window` contract: scripted answers per call."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def run_window(self, frames_thw3: np.ndarray, settings) -> WindowDepth:
        self.calls.append((len(frames_thw3), settings))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        n, h, w = frames_thw3.shape[:3]
        depth = np.broadcast_to(np.linspace(1.0, 3.0, h)[:, None], (n, h, w)).astype(np.float32)
        depth = answer(depth.copy())
        return WindowDepth(depth, np.ones_like(depth), focal_intrinsics_33(h, w, 50.0))


def _runner(model, n_frames: int = 6) -> WindowRunner:
    scene = make_scene(SceneConfig(height=48, width=64, n_frames=n_frames, camera="moving"))
    return WindowRunner(
        cfg=DepthConfig(),
        frames_thw3=scene.frames_thw3,
        moving_thw=None,
        offline_settings=OfflineSettings(focal_px=55.4),
        pair_flows=flow_for_depth(scene.frames_thw3),
        model=model,
    )


def _negative_patch(depth: np.ndarray) -> np.ndarray:
    depth[1, 10:20, 10:20] = -0.5  # alignment output with non-positive depths
    return depth


def test_window_with_negative_depths_is_repaired_and_counted():
    runner = _runner(_StandIn([_negative_patch]))
    window = runner.run(0, 6)
    assert np.all(window.depth_thw > 0)
    assert runner.bad_values == 100 and runner.all_values == 6 * 48 * 64
    assert any("frame 1: filled 100 non-positive" in r for r in runner.repairs)


def test_failed_alignment_is_rerun_with_safer_settings():
    model = _StandIn([AlignmentFailedError("assertion core_depth > 0"), lambda d: d])
    runner = _runner(model)
    window = runner.run(0, 6)
    assert np.all(window.depth_thw > 0)
    first, second = model.calls[0][1], model.calls[1][1]
    assert (second.scene_graph, second.winsize) == ("swin", 1) and first != second
    assert "core_depth" in runner.repairs[0] and "safer settings" in runner.repairs[1]


def test_window_that_never_aligns_falls_back_to_offline():
    def mostly_broken(depth):
        depth[:, :40] = np.nan
        return depth

    runner = _runner(_StandIn([mostly_broken]))
    window = runner.run(0, 6)
    assert np.all(np.isfinite(window.depth_thw)) and np.all(window.depth_thw > 0)
    assert window.c2w_t44 is None and "used the offline backend" in runner.repairs[-1]
    assert sum("too broken" in r for r in runner.repairs) == 3  # once per MASt3R attempt


def test_out_of_memory_splits_the_window():
    oom = ResourceExhaustedError("CUDA out of memory")

    class Small(_StandIn):
        def run_window(self, frames_thw3, settings):
            if len(frames_thw3) > 5:
                raise oom
            return super().run_window(frames_thw3, settings)

    runner = _runner(Small([lambda d: d]), n_frames=8)
    window = runner.run(0, 8)
    assert window.depth_thw.shape == (8, 48, 64) and np.all(window.depth_thw > 0)
    assert "split into 0-4, 3-7" in runner.repairs[0]
    with pytest.raises(ResourceExhaustedError, match="do not fit"):
        _runner(_StandIn([oom]), n_frames=5).run(0, 5)


@pytest.mark.parametrize(
    ("frames", "field"),
    [
        (np.zeros((4, 32, 32, 3), np.float32), "frames_thw3"),
        (np.zeros((1, 32, 32, 3), np.uint8), "frames_thw3"),
        (np.zeros((4, 32, 32), np.uint8), "frames_thw3"),
        (np.zeros((4, 8, 32, 3), np.uint8), "frames_thw3"),
        ([np.zeros((32, 32, 3), np.uint8)] * 3, "frames_thw3"),
    ],
)
def test_bad_frames_are_rejected(frames, field):
    with pytest.raises(InvalidArgumentError) as err:
        estimate_depth(frames)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("config_type", "values", "field"),
    [
        (DepthConfig, {"backend": "midas"}, "backend"),
        (DepthConfig, {"window": 2}, "window"),
        (DepthConfig, {"window": 8, "overlap": 8}, "overlap"),
        (DepthConfig, {"overlap": 0}, "overlap"),
        (DepthConfig, {"subsample": 3}, "subsample"),
        (DepthConfig, {"focal_px": -5.0}, "focal_px"),
        (DepthConfig, {"fov_deg": 179.0}, "fov_deg"),
        (DepthConfig, {"max_fill_share": 1.5}, "max_fill_share"),
        (DepthRuntime, {"memory_budget_gb": float("nan")}, "memory_budget_gb"),
        (DepthRuntime, {"device": "tpu"}, "device"),
    ],
)
def test_bad_config_is_rejected(config_type, values, field):
    with pytest.raises(InvalidArgumentError) as err:
        config_type(**values)
    assert err.value.field == field


def test_bad_moving_mask_is_rejected():
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(InvalidArgumentError, match="moving_thw"):
        estimate_depth(frames, moving_thw=np.zeros((2, 32, 16), bool))
    with pytest.raises(InvalidArgumentError, match="bool"):
        estimate_depth(frames, moving_thw=np.zeros((2, 32, 32), np.uint8))


def test_describe_backends():
    infos = {name: (available, detail) for name, available, detail in describe_backends()}
    assert infos["offline"][0] is True
    assert set(infos) == {"offline", "mast3r"}
    assert isinstance(infos["mast3r"][1], str) and infos["mast3r"][1]


def test_shared_data_path_is_the_documented_one(shared_data):
    assert shared_data == Path(__file__).parents[2].parent / "shared" / "data"
