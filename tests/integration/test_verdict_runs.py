"""Verdicts on real flow, depth and segment runs of synthetic clips, where we know which must fire:
a rotation-only camera gives no parallax (depth is the prior), a translating one does, and frames
of independent noise have no consistent flow."""

from __future__ import annotations

import numpy as np
import pytest

from gflow.v1 import pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.video import store_frames
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import call_stage, depth_request, flow_request, segment_request
from services.pipeline.report import run_figures
from services.pipeline.verdicts import judge_run
from services.synthetic.scene import SceneConfig, make_scene


def _levels(local_store, frames_thw3: np.ndarray) -> dict[str, str]:
    """Run flow, depth and segment for real; the level of each judged figure by `stage.figure`."""
    artifacts = Artifacts(local_store)
    config = PipelineConfig()
    video = store_frames(artifacts, frames_thw3, 10.0)

    def run(stage: str, request):
        return call_stage(artifacts, stage, request, config.remote, lambda *_: None, None)

    flow = run("flow", flow_request(video, config))
    depth = run("depth", depth_request(video, flow, config))
    segment = run("segment", segment_request(video, flow, depth, config))
    result = pipeline_pb2.PipelineResult(video=video, flow=flow, depth=depth, segment=segment)
    verdict = judge_run(run_figures(artifacts, result))
    levels = {f"{v.stage}.{v.figure}": v.level for v in verdict.verdicts}
    assert not [v for v in verdict.verdicts if "no verdict rule" in v.reason]
    return levels


@pytest.mark.parametrize(("camera", "fires"), [("rotation", True), ("moving", False)])
def test_depth_prior_share_fires_for_a_rotation_only_camera(local_store, camera, fires):
    scene = make_scene(SceneConfig(height=48, width=64, n_frames=6, camera=camera))
    levels = _levels(local_store, scene.frames_thw3)
    assert (levels["depth.prior_share"] != "pass") == fires
    assert levels["flow.fb_consistent_share"] == "pass"  # the flow itself is fine


def test_noise_frames_fire_flow_consistency(local_store):
    frames_thw3 = (np.random.default_rng(0).random((6, 48, 64, 3)) * 255).astype(np.uint8)
    levels = _levels(local_store, frames_thw3)
    assert levels["flow.fb_consistent_share"] in ("warn", "fail")
