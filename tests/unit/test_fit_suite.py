"""The tracking and pose suite and its floor (services/evaluation/fit_suite.py, naive_tracker.py)
against exact ground truth: the floor tracker on exact flow, the scores on perfect outputs, and
both prior sources end to end on a tiny clip."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from bench.suite_bench import SuiteBench, second_readout
from services.common.errors import InvalidArgumentError
from services.evaluation import metrics
from services.evaluation.fit_suite import (
    SUITE,
    ClipOutputs,
    configured_readout,
    load_readout,
    path_extent,
    query_rows,
    read_configured,
    run_clip,
    score,
    suite_clip,
    tapvid_row,
)
from services.fit.config import preset
from services.fit.flow_tracks import chained_flow_tracks
from services.fit.tracks import configured_tracks
from services.synthetic.scene import SceneConfig, make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(SceneConfig(width=64, height=48, n_frames=6, n_tracks=64, seed=0))


def test_floor_follows_exact_flow(scene):
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    points_qt2, occluded_qt = chained_flow_tracks(
        scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, query_rows(queries)
    )
    always_visible_q = ~queries.gt_occluded_qt.any(axis=1)
    error_qt = np.linalg.norm(points_qt2 - queries.gt_tracks_qt2, axis=-1)
    # Measured: median 0.0007 px (bilinear reads of exact flow; the tail is at depth edges).
    assert np.median(error_qt[always_visible_q]) < 0.01
    figures = metrics.tapvid_metrics(
        queries.query_t_q,
        queries.gt_tracks_qt2,
        queries.gt_occluded_qt,
        points_qt2,
        occluded_qt,
        (48, 64),
        "first",
    )
    assert figures["occlusion_accuracy"] > 0.85  # measured 0.92


def test_floor_chains_backward_before_the_query_frame(scene):
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "strided", stride=5)
    assert (queries.query_t_q == 5).any()
    points_qt2, occluded_qt = chained_flow_tracks(
        scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, query_rows(queries)
    )
    late_q = queries.query_t_q == 5
    seen_q = late_q & ~queries.gt_occluded_qt[:, 0] & ~queries.gt_occluded_qt[:, 5]
    error_q = np.linalg.norm(points_qt2[seen_q, 0] - queries.gt_tracks_qt2[seen_q, 0], axis=-1)
    assert np.median(error_q) < 0.05
    assert not occluded_qt[late_q, 5].any()  # the query frame itself is always visible


def test_floor_marks_disagreeing_flow_occluded():
    flow_fwd_t1hw2 = np.zeros((1, 8, 8, 2), np.float32)
    flow_fwd_t1hw2[..., 0] = 1.0
    flow_bwd_t1hw2 = -flow_fwd_t1hw2.copy()
    flow_bwd_t1hw2[0, :, 5:, 0] = 2.0  # returns from columns >= 5 land 3 px away
    queries_q3 = np.array([[0, 3, 2], [0, 3, 5], [0, 3, 7]], np.float64)
    points_qt2, occluded_qt = chained_flow_tracks(flow_fwd_t1hw2, flow_bwd_t1hw2, queries_q3)
    np.testing.assert_allclose(points_qt2[:, 1], [[3, 3], [6, 3], [8, 3]])
    # column 2 lands on 3 (consistent); column 5 lands on 6 (inconsistent); column 7 leaves
    assert occluded_qt[:, 1].tolist() == [False, True, True]
    assert not occluded_qt[:, 0].any()


def test_floor_refuses_bad_queries(scene):
    with pytest.raises(InvalidArgumentError, match="queries_q3"):
        chained_flow_tracks(scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, np.zeros((3, 2)))
    with pytest.raises(InvalidArgumentError, match="query frames"):
        chained_flow_tracks(scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, np.array([[9, 1, 1]]))


def test_perfect_outputs_score_perfectly(scene):
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    perfect = ClipOutputs(
        c2w_t44=scene.c2w_t44,
        depth_thw=scene.depth_thw,
        moving_mask_thw=scene.moving_thw,
        psnr_t=np.full(6, 40.0),
        points_qt2=queries.gt_tracks_qt2,
        occluded_qt=queries.gt_occluded_qt,
        flow_fwd_t1hw2=scene.flow_fwd_t1hw2,
        flow_bwd_t1hw2=scene.flow_bwd_t1hw2,
    )
    row = score(scene, queries, perfect)
    assert row["aj"] == 1.0 and row["delta_avg"] == 1.0 and row["oa"] == 1.0
    assert row["ate"] < 1e-9 and row["ate_share"] < 1e-9 and row["depth_abs_rel"] < 1e-6
    assert row["mask_j"] == 1.0 and row["psnr"] == 40.0
    assert 0.0 < row["naive_aj"] <= 1.0  # the floor stands beside every row


def test_path_extent_and_clip_names():
    c2w_t44 = np.tile(np.eye(4), (3, 1, 1))
    c2w_t44[:, :3, 3] = [[0, 0, 0], [3, 0, 0], [0, 4, 0]]
    assert path_extent(c2w_t44) == pytest.approx(5.0)
    assert {clip.camera for clip in SUITE} == {"moving", "rotation", "static"}
    assert suite_clip("pan").camera == "rotation"
    with pytest.raises(InvalidArgumentError, match="clip"):
        suite_clip("nope")


@pytest.mark.parametrize("source", ["exact", "pipeline"])
def test_a_clip_runs_end_to_end(source):
    """Both prior sources through the real engines on a tiny clip: every figure is there."""
    cfg = dataclasses.replace(preset("test"), init_points=400, max_points=800, iters=10)
    row = run_clip(suite_clip("orbit"), source, cfg, width=48, height=32, n_frames=4, n_tracks=32)
    for name in ("aj", "delta_avg", "oa", "naive_aj", "ate", "rpe_rot_deg", "mask_j", "psnr"):
        assert np.isfinite(row[name]), name
    assert row["source"] == source and row["clip"] == "orbit" and row["size"] == "48x32x4"
    if source == "exact":
        assert row["psnr"] > 30.0 and row["ate_share"] < 0.02


def test_a_second_track_readout_is_scored_on_the_same_fit(tmp_path):
    """`other_readout` reads the same fit again: the row's own readout gives the row's own
    figures, a readout that holds every query still gives exactly that readout's figures; an
    other version's tracks module is read through its configured_tracks, or its track_2d."""
    cfg = dataclasses.replace(preset("test"), init_points=400, max_points=800, iters=10)
    clip = suite_clip("orbit")
    size = dict(width=48, height=32, n_frames=4, n_tracks=32)
    same = run_clip(clip, "exact", cfg, **size, other_readout=configured_readout())
    assert [same[f"other_{k}"] for k in ("aj", "delta_avg", "oa")] == [
        same["aj"],
        same["delta_avg"],
        same["oa"],
    ]

    def held_still(result, queries_q3, cfg=None, priors=None):
        points_qt2 = np.repeat(queries_q3[:, None, [2, 1]], result.n_frames, axis=1)
        return points_qt2, np.zeros(points_qt2.shape[:2], bool)

    still = run_clip(clip, "exact", cfg, **size, other_readout=held_still)
    scene = make_scene(clip.scene_config(48, 32, 4, 32))
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    held_qt2, visible_qt = held_still(SimpleNamespace(n_frames=4), query_rows(queries))
    expected = tapvid_row(queries, held_qt2, visible_qt, (32, 48))
    assert still["other_aj"] == expected["aj"] and still["other_oa"] == expected["oa"]
    assert still["aj"] == same["aj"]  # the fit itself is the same (CPU)

    module = tmp_path / "tracks.py"
    module.write_text("def track_2d(result, queries_q3):\n    return 'read'\n")
    assert load_readout(module)(None, None, cfg, None) == "read"
    configured = tmp_path / "configured.py"
    configured.write_text(
        "from types import SimpleNamespace\n"
        "def configured_tracks(result, queries_q3, cfg, priors):\n"
        "    return SimpleNamespace(points_qt2=cfg.track_motion, occluded_qt=priors)\n"
    )
    assert load_readout(configured)(None, None, cfg, "priors") == (cfg.track_motion, "priors")
    (tmp_path / "empty.py").write_text("")
    for path in (tmp_path / "empty.py", tmp_path / "missing.py"):
        with pytest.raises(InvalidArgumentError, match="other_tracks"):
            load_readout(path)


def test_the_fit_configs_track_motion_makes_the_rows_tracks():
    """The row's own figures come from the readout `track_motion` names: read both ways, the two
    fits' figures swap places (the fits are the same on the CPU). Without the flow chain, whose
    point a moving query takes wherever it holds (with exact masks on the whole of this clip),
    whatever the motion model says."""
    cfg = dataclasses.replace(
        preset("test"), init_points=400, max_points=800, iters=10, tracks_with_flow_chain=False
    )
    clip = suite_clip("orbit")
    size = dict(width=48, height=32, n_frames=4, n_tracks=32)
    rows = {
        motion: run_clip(
            clip,
            "exact",
            dataclasses.replace(cfg, track_motion=motion),
            **size,
            other_readout=configured_readout(other),
        )
        for motion, other in (("local_rigid", "gaussian"), ("gaussian", "local_rigid"))
    }
    rigid, carried = rows["local_rigid"], rows["gaussian"]
    assert rigid["aj"] != carried["aj"]
    assert (rigid["aj"], rigid["other_aj"]) == (carried["other_aj"], carried["aj"])


def test_suite_bench_scores_a_second_track_motion_or_a_second_tracks_module(tmp_path):
    other = second_readout(SuiteBench(other_motion="local_rigid"))
    assert other.func is read_configured
    assert other.keywords == {"motion": "local_rigid", "read": configured_tracks}
    assert second_readout(SuiteBench()) is None
    module = tmp_path / "tracks.py"
    module.write_text("def track_2d(result, queries_q3):\n    return 'read'\n")
    assert second_readout(SuiteBench(other_tracks=module))(None, None, None, None) == "read"
    with pytest.raises(InvalidArgumentError, match="other_motion"):
        second_readout(SuiteBench(other_tracks=module, other_motion="local_rigid"))
