"""Views away from the fitted cameras (services/evaluation/novel_view.py, scene.render_view):
exact expectations on a tiny clip."""

from __future__ import annotations

import numpy as np
import pytest

from bench.novel_view_bench import table, variant_settings
from services.common.errors import InvalidArgumentError
from services.common.geometry import project_p2
from services.evaluation.fit_suite import exact_priors
from services.evaluation.novel_view import covisible_hw, score_side_views, side_offset_44
from services.fit.config import preset
from services.fit.engine import fit
from services.synthetic.scene import SceneConfig, make_scene, render_view

CONFIG = SceneConfig(width=48, height=36, n_frames=4, n_objects=2, nonrigid=True, n_tracks=8)


@pytest.fixture(scope="module")
def scene():
    return make_scene(CONFIG)


def test_render_view_at_the_clips_camera_repeats_the_frame(scene):
    for t in range(CONFIG.n_frames):
        rgb_hw3, depth_hw = render_view(CONFIG, t, scene.c2w_t44[t])
        assert np.array_equal(rgb_hw3, scene.frames_thw3[t])
        assert np.array_equal(depth_hw, scene.depth_thw[t])
    with pytest.raises(InvalidArgumentError, match="t"):
        render_view(CONFIG, CONFIG.n_frames, scene.c2w_t44[0])


def test_side_offset_moves_along_x_and_looks_back(scene):
    c2w_44 = scene.c2w_t44[2]
    moved_44 = c2w_44 @ side_offset_44(0.3, 4.0)
    look_point_p3 = (c2w_44 @ np.array([0.0, 0.0, 4.0, 1.0]))[None, :3]
    xy_p2, z_p = project_p2(scene.K_33, moved_44, look_point_p3)
    np.testing.assert_allclose(xy_p2[0], scene.K_33[:2, 2], atol=1e-9)
    assert z_p[0] == pytest.approx(np.hypot(0.3, 4.0))
    np.testing.assert_allclose(moved_44[:3, 3] - c2w_44[:3, 3], 0.3 * c2w_44[:3, 0], atol=1e-12)


def test_covisible_pixels(scene):
    t, K_33, c2w_44, depth_hw = 1, scene.K_33, scene.c2w_t44[1], scene.depth_thw[1]
    own = covisible_hw(K_33, c2w_44, depth_hw, c2w_44, depth_hw)
    assert own.all()
    side_c2w_44 = c2w_44 @ side_offset_44(0.6, 3.0)
    _, side_depth_hw = render_view(CONFIG, t, side_c2w_44)
    side = covisible_hw(K_33, side_c2w_44, side_depth_hw, c2w_44, depth_hw)
    assert 0.5 < side.mean() < 1.0  # the move uncovers what the clip's camera did not see


def test_side_views_of_a_fit(scene):
    result = fit(exact_priors(scene), preset("test"))
    unmoved = score_side_views(result, scene, 0.0)
    assert unmoved.psnr_db == pytest.approx(result.psnr_t.mean(), abs=1e-4)
    assert unmoved.covisible_share == 1.0
    side = score_side_views(result, scene, 0.1)
    assert side.psnr_db < unmoved.psnr_db
    assert side.covisible_psnr_db > side.psnr_db  # what the clip never showed scores lowest
    row = {"clip": "orbit", "settings": [], "psnr_fitted": 40.0, "side_views": [vars(side)]}
    assert table([row]).splitlines()[2].startswith("| orbit | (preset) | 40.00 | ")
    assert variant_settings("a=1, b=2,") == ("a=1", "b=2") and variant_settings("") == ()
