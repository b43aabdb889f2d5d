"""Two-pass depth (`PipelineConfig.two_pass_depth`): the depth stage runs again with the segment
stage's masks, and the fit gets that second depth. Checked on an embedded run of a small
synthetic clip with exact expectations: which arrays reach which engine, which keys the results
have, what the store answers the second time, and how a wrong segment result is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from gflow.v1 import depth_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.stage import artifact
from services.common.video import store_frames
from services.depth import stage as depth_stage
from services.fit import stage as fit_stage
from services.flow import stage as flow_stage
from services.flow.engine import FlowConfig
from services.pipeline.config import PipelineConfig, with_best_tracks
from services.pipeline.engine import depth_request, run_pipeline
from services.segment import stage as segment_stage
from services.synthetic.scene import SceneConfig, make_scene
from tests.faults.clips import lean_fit
from tests.integration.test_flow_once import _record_calls

FLOW = FlowConfig(dis_preset="fast", variational_refinement=False)  # cheap on two cores


def _config(two_pass: bool) -> PipelineConfig:
    return PipelineConfig(flow=FLOW, fit=lean_fit(), track_grid=0, two_pass_depth=two_pass)


def test_the_second_depth_leaves_the_segment_masks_out_and_reaches_the_fit(
    local_store, monkeypatch
):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())  # 64x48, 8 frames, moving camera and one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    depth_calls, fit_calls = [], []
    _record_calls(monkeypatch, depth_stage, "estimate_depth", depth_calls)
    _record_calls(monkeypatch, fit_stage, "fit", fit_calls)

    one_pass = run_pipeline(artifacts, video, _config(False))
    assert len(depth_calls) == 1 and depth_calls[0][1]["moving_thw"] is None
    two_pass = run_pipeline(artifacts, video, _config(True))

    # Flow and the first depth and segment come from the store; only the second depth is new.
    assert two_pass.flow.cached and two_pass.segment.cached
    assert two_pass.segment.key == one_pass.segment.key
    assert len(depth_calls) == 2
    masks_thw = artifacts.get_array(artifact(two_pass.segment, "masks", "segment"))
    assert masks_thw.any()  # the clip's object was found, so the masks can change the depth
    np.testing.assert_array_equal(depth_calls[1][1]["moving_thw"], masks_thw.astype(bool))

    assert two_pass.depth.key != one_pass.depth.key
    report = artifacts.get_json(two_pass.depth.report)
    assert report["moving_masks"] == two_pass.segment.key
    first_depth_thw, second_depth_thw = (
        artifacts.get_array(artifact(r.depth, "depth", "depth")) for r in (one_pass, two_pass)
    )
    assert not np.array_equal(first_depth_thw, second_depth_thw)
    priors = fit_calls[1][0][0]
    np.testing.assert_array_equal(priors.depth_thw, second_depth_thw)

    again = run_pipeline(artifacts, video, _config(True))  # all from the store
    assert again.depth.cached and again.fit.cached and again.fit.key == two_pass.fit.key
    assert len(depth_calls) == 2 and len(fit_calls) == 2


def test_a_segment_result_of_another_video_is_refused(local_store):
    artifacts = Artifacts(local_store)
    config = _config(True)
    scenes = [make_scene(SceneConfig(seed=seed, n_frames=4)) for seed in (0, 1)]
    videos = [store_frames(artifacts, s.frames_thw3, 10.0) for s in scenes]
    this, other = (run_pipeline(artifacts, v, _config(False)) for v in videos)
    request = depth_request(videos[0], this.flow, config, other.segment)
    with pytest.raises(InvalidArgumentError, match="another video") as err:
        depth_stage.depth_from_request(artifacts, request)
    assert err.value.field == "segment"
    # A flow result in the segment field is not a segment result either.
    wrong_stage = depth_pb2.EstimateDepthRequest()
    wrong_stage.CopyFrom(request)
    wrong_stage.segment.CopyFrom(this.flow)
    with pytest.raises(InvalidArgumentError, match="not a stored segment result"):
        depth_stage.depth_from_request(artifacts, wrong_stage)


def test_best_tracks_runs_every_stage_with_its_opt_in(local_store, monkeypatch):
    """`with_best_tracks` (gflow run --best-tracks) reaches every stage of an embedded run: the
    flow polished in three rounds on small windows, the masks from measured depth only, depth
    twice with bundle adjustment (the second with the masks), and the fit keeping the depth
    stage's cameras and Adam's moments, its tracks' occlusion read with the frames and the
    flow."""
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    calls = {name: [] for name in ("flow", "segment", "depth", "fit")}
    _record_calls(monkeypatch, flow_stage, "compute_flow", calls["flow"])
    _record_calls(monkeypatch, segment_stage, "segment_motion", calls["segment"])
    _record_calls(monkeypatch, depth_stage, "estimate_depth", calls["depth"])
    _record_calls(monkeypatch, fit_stage, "fit", calls["fit"])
    result = run_pipeline(artifacts, video, with_best_tracks(_config(False)))

    assert [len(c) for c in calls.values()] == [1, 1, 2, 1]
    flow_config = calls["flow"][0][0][1]
    assert flow_config.dis_polish and flow_config.dis_polish_rounds == 3
    assert flow_config.dis_polish_window_px == 1.0
    assert calls["segment"][0][0][2].measured_depth_only
    (first_args, first_kwargs), (second_args, second_kwargs) = calls["depth"]
    assert first_args[1].offline_bundle_adjust and second_args[1].offline_bundle_adjust
    assert first_kwargs["moving_thw"] is None and second_kwargs["moving_thw"].any()
    fit_args = calls["fit"][0][0]
    assert fit_args[1].camera_from_prior_poses and fit_args[1].occlusion_from_frames
    assert not fit_args[1].moving_depth_from_filled_prior
    assert fit_args[1].keep_adam_state and fit_args[1].occlusion_from_flow_where_unmeasured
    np.testing.assert_array_equal(
        artifacts.get_array(artifact(result.fit, "c2w", "fit")),
        artifacts.get_array(artifact(result.depth, "c2w", "depth")),
    )
