"""The flow engine with its default backend (DIS): accuracy, occlusion, real frames, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common.config import parse_config_json
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from services.evaluation.metrics import flow_epe
from services.flow.backends.dis import DisBackend
from services.flow.engine import (
    FlowConfig,
    FlowRuntime,
    compute_flow,
    describe_backends,
    frame_pairs,
)
from services.flow.memory import MAXRSS_KIND, RSS_PEAK_KIND
from services.synthetic.scene import SceneConfig, make_scene

# Measured with the default (DIS medium + variational refinement + the polish) on this scene
# (OpenCV 5.0, 2 CPU cores): mean EPE 0.124 px forward, 0.116 px backward (DIS without the polish:
# 0.248 and 0.256), where zero flow scores 3.11 px.
DIS_EPE_BOUND_PX = 0.16


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(height=96, width=128, n_frames=8, seed=0))


@pytest.fixture(scope="module")
def dis_result(scene):
    return compute_flow(scene.frames_thw3, FlowConfig())


def test_dis_flow_matches_the_exact_synthetic_flow(scene, dis_result):
    assert [(p.t0, p.t1) for p in dis_result.pairs] == [(t, t + 1) for t in range(7)]
    fwd = [
        flow_epe(p.flow_fwd_hw2, scene.flow_fwd_t1hw2[t], scene.valid_fwd_t1hw[t])
        for t, p in enumerate(dis_result.pairs)
    ]
    bwd = [
        flow_epe(p.flow_bwd_hw2, scene.flow_bwd_t1hw2[t], scene.valid_bwd_t1hw[t])
        for t, p in enumerate(dis_result.pairs)
    ]
    zero = [
        flow_epe(np.zeros_like(gt), gt, valid)
        for gt, valid in zip(scene.flow_fwd_t1hw2, scene.valid_fwd_t1hw, strict=True)
    ]
    assert np.mean(fwd) < DIS_EPE_BOUND_PX and np.mean(bwd) < DIS_EPE_BOUND_PX
    assert np.mean(fwd) < 0.15 * np.mean(zero)


def test_the_fine_dis_preset_is_more_accurate_than_medium(scene):
    """fine carries medium's patch search on to full resolution (docs/flow.md, "DIS presets");
    DIS's own fields, without the polish."""
    medium, fine = (
        compute_flow(scene.frames_thw3, FlowConfig(dis_preset=preset, dis_polish=False))
        for preset in ("medium", "fine")
    )

    def mean_epe(result):
        return np.mean(
            [
                flow_epe(p.flow_fwd_hw2, scene.flow_fwd_t1hw2[t], scene.valid_fwd_t1hw[t])
                for t, p in enumerate(result.pairs)
            ]
        )

    # Measured 0.248 px (medium, the default preset) and 0.135 px (fine) on this scene.
    assert mean_epe(fine) < 0.8 * mean_epe(medium)


def test_dis_pairs_of_a_batch_on_threads_equal_the_pairs_one_by_one(scene):
    """DisBackend runs a batch's pairs on a pool of threads, each pair with its own DIS instance:
    the flows are those of the pairs computed alone, bit for bit, polished or not, with
    neighbours' flow or without."""
    src_bhw3, dst_bhw3 = scene.frames_thw3[:-1], scene.frames_thw3[1:]
    for polish_rounds, neighbour_px in ((0, 0), (2, 4)):
        backend = DisBackend("medium", True, polish_rounds, 1.5, neighbour_px)
        batch_bhw2 = backend.flow(src_bhw3, dst_bhw3)
        for i in range(len(src_bhw3)):
            alone_1hw2 = backend.flow(src_bhw3[i : i + 1], dst_bhw3[i : i + 1])
            np.testing.assert_array_equal(batch_bhw2[i], alone_1hw2[0])
        assert batch_bhw2.dtype == np.float32 and batch_bhw2.shape[0] == len(src_bhw3)


def test_result_carries_shapes_figures_and_how_memory_was_measured(dis_result):
    assert (dis_result.backend, dis_result.device) == ("dis", "cpu")
    assert dis_result.memory_kind in (RSS_PEAK_KIND, MAXRSS_KIND)
    assert dis_result.peak_memory_bytes >= 0 and dis_result.seconds > 0
    for pair in dis_result.pairs:
        assert pair.flow_fwd_hw2.shape == pair.flow_bwd_hw2.shape == (96, 128, 2)
        assert pair.flow_fwd_hw2.dtype == np.float32
        assert pair.consistent_fwd_hw.dtype == bool
        assert pair.consistent_share == pytest.approx(pair.consistent_fwd_hw.mean())
        assert 0.85 < pair.consistent_share <= 1.0  # measured 0.921-0.939 on this scene
        assert 0.0 < pair.fb_error_mean < 0.3  # measured 0.117-0.159 px


def _sliding_square(shift: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two frames: a textured 80 px square slides `shift` px right over a still background.
    Returns the frames and the exact background of frame 0 that the square covers in frame 1."""
    height, width, side = 192, 256, 80
    rng = np.random.default_rng(seed)

    def texture(h: int, w: int) -> np.ndarray:
        noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
        return np.clip(noise * 3.0 - 255.0, 0, 255)

    background, square = texture(height, width), texture(side, side)
    y0, x0 = (height - side) // 2, (width - side - shift) // 2
    frames = np.stack([background, background])
    frames[0, y0 : y0 + side, x0 : x0 + side] = square
    frames[1, y0 : y0 + side, x0 + shift : x0 + shift + side] = square
    covered_hw = np.zeros((height, width), bool)
    covered_hw[y0 : y0 + side, x0 + side : x0 + side + shift] = True
    return frames.astype(np.uint8), covered_hw


def test_consistency_mask_flags_the_background_a_moving_occluder_covers():
    # Measured: 89 % of the covered strip flagged, 97.4 % of the rest consistent.
    frames_thw3, covered_hw = _sliding_square(shift=10)
    consistent_hw = compute_flow(frames_thw3, FlowConfig()).pairs[0].consistent_fwd_hw
    assert (~consistent_hw[covered_hw]).mean() > 0.75
    assert consistent_hw[~covered_hw].mean() > 0.95


def test_real_davis_frames_give_finite_mostly_consistent_flow(shared_data):
    paths = sorted((shared_data / "davis-frames").glob("*.jpg"))
    frames_thw3 = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    assert frames_thw3.shape == (3, 480, 854, 3)
    result = compute_flow(frames_thw3, FlowConfig())
    for pair in result.pairs:
        assert np.isfinite(pair.flow_fwd_hw2).all() and np.isfinite(pair.flow_bwd_hw2).all()
        # Measured: 0.874 and 0.900 of pixels consistent at 1 px; mean FB error 0.52 and 0.40 px.
        assert pair.consistent_share > 0.8
        assert pair.fb_error_mean < 0.8


def test_extra_stride_adds_the_long_pairs_after_the_consecutive_ones():
    assert frame_pairs(5, 3) == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 3), (1, 4)]
    frames_thw3 = make_scene(SceneConfig(n_frames=4)).frames_thw3
    result = compute_flow(frames_thw3, FlowConfig(extra_stride=2))
    assert [(p.t0, p.t1) for p in result.pairs] == [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)]
    for stride, firsts in ((1, [0, 1, 2]), (2, [3, 4])):  # stacked: one stride's pairs in order
        fwd_phw2, bwd_phw2 = result.stacked(stride)
        np.testing.assert_array_equal(fwd_phw2, [result.pairs[i].flow_fwd_hw2 for i in firsts])
        np.testing.assert_array_equal(bwd_phw2, [result.pairs[i].flow_bwd_hw2 for i in firsts])


def test_progress_counts_every_direction_up_to_the_total():
    calls = []
    compute_flow(
        make_scene(SceneConfig(n_frames=3)).frames_thw3,
        FlowConfig(),
        progress=lambda done, total, message: calls.append((done, total)),
    )
    assert calls[-1] == (4, 4)  # two pairs, both directions
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_describe_lists_every_backend_with_dis_ready():
    infos = {info.name: info for info in describe_backends()}
    assert set(infos) == {"dis", "raft", "unimatch"}
    assert infos["dis"].available and not infos["dis"].needs_weights
    assert "cpu" in infos["dis"].detail
    assert infos["raft"].needs_weights and infos["unimatch"].needs_weights
    for info in infos.values():
        assert info.detail  # version and device, or what to install


def test_config_comes_from_request_json_with_paths():
    cfg = parse_config_json(
        '{"backend": "raft", "raft_weights": "/w/raft.pth", "extra_stride": 2}', FlowConfig
    )
    assert cfg.raft_weights == Path("/w/raft.pth") and cfg.extra_stride == 2
    with pytest.raises(InvalidArgumentError, match="config_json.backend"):
        parse_config_json('{"backend": "farneback"}', FlowConfig)


FRAMES_THW3 = np.zeros((3, 16, 16, 3), np.uint8)


@pytest.mark.parametrize(
    ("frames", "cfg", "field"),
    [
        (FRAMES_THW3[:1], FlowConfig(), "frames_thw3"),
        ([FRAMES_THW3[0], np.zeros((16, 20, 3), np.uint8)], FlowConfig(), r"frames_thw3\[1\]"),
        (FRAMES_THW3.astype(np.float32) * np.nan, FlowConfig(), "frames_thw3: .*NaN"),
        (FRAMES_THW3.astype(np.float32), FlowConfig(), "frames_thw3: dtype is float32"),
        (FRAMES_THW3[..., 0], FlowConfig(), "frames_thw3"),
        (FRAMES_THW3, FlowConfig(extra_stride=3), "extra_stride"),  # as long as the clip
    ],
)
def test_bad_input_is_refused_naming_the_field(frames, cfg, field):
    with pytest.raises(InvalidArgumentError, match=f"^{field}"):
        compute_flow(frames, cfg)


@pytest.mark.parametrize(
    ("config_type", "values", "field"),
    [
        (FlowConfig, {"backend": "farneback"}, "backend"),
        (FlowConfig, {"dis_preset": "slow"}, "dis_preset"),
        (FlowConfig, {"extra_stride": 1}, "extra_stride"),
        (FlowConfig, {"fb_threshold_px": 0.0}, "fb_threshold_px"),
        (FlowConfig, {"raft_iterations": 0}, "raft_iterations"),
        (FlowRuntime, {"device": "tpu"}, "device"),
        (FlowRuntime, {"memory_budget_gb": float("nan")}, "memory_budget_gb"),
    ],
)
def test_bad_config_is_refused_where_it_is_made(config_type, values, field):
    with pytest.raises(InvalidArgumentError, match=f"^{field}"):
        config_type(**values)


def test_missing_weights_file_is_a_precondition_naming_path_and_source(tmp_path):
    missing = tmp_path / "raft_small.pth"
    with pytest.raises(
        FailedPreconditionError, match=f"raft_weights: no weights file at {missing}"
    ):
        compute_flow(FRAMES_THW3, FlowConfig(backend="raft", raft_weights=missing))
    with pytest.raises(FailedPreconditionError, match="raft_weights is not set.*download"):
        compute_flow(FRAMES_THW3, FlowConfig(backend="raft"))


def test_a_pair_over_the_memory_budget_is_refused_before_any_work():
    with pytest.raises(ResourceExhaustedError, match="memory_budget_gb"):
        compute_flow(FRAMES_THW3, FlowConfig(), FlowRuntime(memory_budget_gb=1e-6))
