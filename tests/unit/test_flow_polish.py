"""The photometric polish of DIS flow (services/flow/polish.py): Lucas-Kanade steps that find a
known sub-pixel shift, leave untextured windows and targets outside the image alone, and through
the engine take out DIS's lag on a synthetic scene's moving object, more of it in more rounds;
flow taken from a neighbour puts the pixels along a motion boundary back on their own side."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.evaluation.fit_suite import floor_row, suite_clip
from services.evaluation.metrics import flow_epe, flow_speed_bias, sample_queries
from services.flow.config import FlowConfig
from services.flow.engine import compute_flow
from services.flow.polish import lucas_kanade_steps, polish_flow, take_neighbour_flow
from services.synthetic.scene import SceneConfig, make_scene
from tests.textures import smooth_texture_hw3

SHIFT_XY = (0.6, -0.35)


def _shifted(image_hw3: np.ndarray, shift_xy: tuple[float, float]) -> np.ndarray:
    """The image content moved by shift_xy: dst(p + shift) = src(p)."""
    height, width = image_hw3.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(
        image_hw3,
        grid_x - np.float32(shift_xy[0]),
        grid_y - np.float32(shift_xy[1]),
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )


def test_lucas_kanade_steps_find_a_sub_pixel_shift_from_zero_flow():
    src_hw3 = smooth_texture_hw3()
    dst_hw3 = _shifted(src_hw3, SHIFT_XY)
    flow_hw2 = lucas_kanade_steps(src_hw3, dst_hw3, np.zeros((64, 80, 2), np.float32))
    error_n2 = flow_hw2[8:-8, 8:-8].reshape(-1, 2) - np.array(SHIFT_XY, np.float32)
    # Measured: mean error (0.0000, 0.0000) px, median length 0.042 px (the frames' uint8
    # rounding); with bilinear instead of cubic warping the mean was (-0.024, -0.032) px.
    assert np.linalg.norm(error_n2.mean(axis=0)) < 0.01
    assert np.median(np.linalg.norm(error_n2, axis=1)) < 0.06
    assert flow_hw2.dtype == np.float32 and flow_hw2.shape == (64, 80, 2)


def test_untextured_windows_and_targets_outside_the_image_keep_their_flow():
    flat_hw3 = np.full((32, 40, 3), 128, np.uint8)
    start_hw2 = np.full((32, 40, 2), 0.25, np.float32)
    np.testing.assert_array_equal(lucas_kanade_steps(flat_hw3, flat_hw3, start_hw2), start_hw2)

    src_hw3 = smooth_texture_hw3()
    far_hw2 = np.zeros((64, 80, 2), np.float32)
    far_hw2[..., 0] = 200.0  # every target is off the right edge
    np.testing.assert_array_equal(lucas_kanade_steps(src_hw3, src_hw3, far_hw2), far_hw2)


def test_polish_keeps_a_right_flow_right():
    """Started at the true shift, the polish (steps and refinement) stays there (median 0.04 px
    off, measured)."""
    src_hw3 = smooth_texture_hw3(seed=1)
    dst_hw3 = _shifted(src_hw3, SHIFT_XY)
    start_hw2 = np.broadcast_to(np.array(SHIFT_XY, np.float32), (64, 80, 2)).copy()
    polished_hw2 = polish_flow(src_hw3, dst_hw3, start_hw2)
    error_n = np.linalg.norm(polished_hw2[8:-8, 8:-8] - start_hw2[8:-8, 8:-8], axis=-1)
    assert np.median(error_n) < 0.06


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(height=96, width=128, n_frames=8, seed=0))


def test_dis_polish_takes_out_the_lag_on_the_moving_object(scene):
    """Measured on this scene (OpenCV 5.0, 2 CPU cores): EPE over visible pixels 0.248 -> 0.124
    px, moving pixels 0.695 -> 0.275 px, mean error along their motion -0.584 -> -0.148 px."""
    moving_thw = scene.moving_thw[:-1] & scene.valid_fwd_t1hw
    figures = {}
    for polish in (False, True):
        config = FlowConfig(dis_polish=polish)
        fwd_t1hw2, _ = compute_flow(scene.frames_thw3, config).stacked()
        figures[polish] = (
            flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2, scene.valid_fwd_t1hw),
            flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw),
            flow_speed_bias(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw),
        )
    (epe, epe_moving, bias), (epe_polished, epe_moving_polished, bias_polished) = (
        figures[False],
        figures[True],
    )
    assert epe_polished < 0.7 * epe
    assert epe_moving_polished < 0.6 * epe_moving
    assert bias < -0.4 and abs(bias_polished) < 0.4 * abs(bias)


def test_more_polish_rounds_and_smaller_windows_bring_the_flow_closer_on_small_objects():
    """The accuracy suite's orbit-3-leaving clip at 96x72x12 (three small objects moving 2-5 px
    a frame). Measured (OpenCV 5.0, 2 CPU cores), 1 round -> 3 rounds -> 3 rounds on windows of
    sigma 1 px instead of 1.5: EPE over all pixels 0.518 -> 0.461 -> 0.436 px, over the moving
    pixels 0.686 -> 0.614 -> 0.590 px, mean error along their motion -0.436 -> -0.377 -> -0.377
    px."""
    clip = suite_clip("orbit-3-leaving")
    scene = make_scene(clip.scene_config(96, 72, 12, 16))
    moving_thw = scene.moving_thw[:-1]
    figures = []
    for rounds, window_px in ((1, 1.5), (3, 1.5), (3, 1.0)):
        config = FlowConfig(dis_polish_rounds=rounds, dis_polish_window_px=window_px)
        fwd_t1hw2, _ = compute_flow(scene.frames_thw3, config).stacked()
        figures.append(
            (
                flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2),
                flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw),
                flow_speed_bias(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw),
            )
        )
    (epe_1, moving_1, bias_1), (epe_3, moving_3, bias_3), (epe_small, moving_small, _) = figures
    assert epe_3 < 0.93 * epe_1 and epe_small < 0.97 * epe_3
    assert moving_3 < 0.93 * moving_1 and moving_small < 0.98 * moving_3
    assert bias_1 < bias_3 < 0


def test_neighbour_flow_puts_a_blended_motion_boundary_back_on_each_side():
    """An object (columns 0-39) moves 2 px right over a still background and covers its columns
    40-41. The flow blends the two sides linearly over columns 37-43, as DIS's smoothness does.
    Every pixel on the object and every background pixel at least 2 px from the covered columns
    takes its side's flow, exactly. The covered columns have no right answer, and the background
    pixels right beside them, whose windows reach into them, are left unchecked (measured: column
    42 goes from 0.33 to 0.67 px, column 43 keeps 0.33 on a sixth of the rows)."""
    object_hw3, background_hw3 = smooth_texture_hw3(seed=2), smooth_texture_hw3(seed=3)
    src_hw3 = background_hw3.copy()
    src_hw3[:, :40] = object_hw3[:, :40]
    dst_hw3 = background_hw3.copy()
    dst_hw3[:, 2:42] = object_hw3[:, :40]
    dst_hw3[:, :2] = object_hw3[:, :2]  # what enters at the left edge: any texture
    column_w = np.arange(80)
    true_x_w = np.where(column_w < 40, 2.0, 0.0).astype(np.float32)
    flow_hw2 = np.zeros((64, 80, 2), np.float32)
    flow_hw2[..., 0] = np.interp(column_w, [37, 43], [2.0, 0.0])
    taken_hw2 = take_neighbour_flow(src_hw3, dst_hw3, flow_hw2, radius_px=4)
    checked_w = (column_w < 40) | (column_w >= 44)
    expected_hw = np.broadcast_to(true_x_w[checked_w], (64, checked_w.sum()))
    np.testing.assert_array_equal(taken_hw2[:, checked_w, 0], expected_hw)
    np.testing.assert_array_equal(taken_hw2[..., 1], 0.0)
    assert np.abs(flow_hw2[:, column_w < 40, 0] - 2.0).max() > 0.6  # what it started from


def test_neighbour_flow_leaves_a_flow_that_is_the_same_everywhere_as_it_is():
    src_hw3 = smooth_texture_hw3(seed=1)
    dst_hw3 = _shifted(src_hw3, SHIFT_XY)
    start_hw2 = np.broadcast_to(np.array(SHIFT_XY, np.float32), (64, 80, 2)).copy()
    np.testing.assert_array_equal(take_neighbour_flow(src_hw3, dst_hw3, start_hw2, 4), start_hw2)


def test_neighbour_flow_raises_the_floor_trackers_aj_on_a_suite_clip():
    """The accuracy suite's orbit clip at 96x72x12 with the default flow, the chained-flow floor
    tracker (services/fit/flow_tracks.py) on it. Measured (OpenCV 5.0, 2 CPU cores): AJ 0.617
    without `dis_neighbour_px`, 0.656 with 4 px (δavg 0.756 -> 0.787)."""
    scene = make_scene(suite_clip("orbit").scene_config(96, 72, 12, 128))
    queries = sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    aj = {}
    for neighbour_px in (0, 4):
        config = FlowConfig(dis_neighbour_px=neighbour_px)
        fwd_t1hw2, bwd_t1hw2 = compute_flow(scene.frames_thw3, config).stacked()
        aj[neighbour_px] = floor_row(queries, fwd_t1hw2, bwd_t1hw2, (72, 96))["aj"]
    assert aj[4] > aj[0] + 0.025


def test_polish_rounds_below_one_and_empty_windows_are_refused():
    with pytest.raises(InvalidArgumentError, match="dis_polish_rounds"):
        FlowConfig(dis_polish_rounds=0)
    with pytest.raises(InvalidArgumentError, match="dis_polish_window_px"):
        FlowConfig(dis_polish_window_px=0.0)
    with pytest.raises(InvalidArgumentError, match="dis_neighbour_px"):
        FlowConfig(dis_neighbour_px=-1)
