"""The segment stage hands the depth stage's confidence to the engine when
`measured_depth_only` asks for it (docs/segment.md, Limits): on a panning clip, whose offline
depth is the smooth prior throughout, the stored scores are those of no depth at all."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.artifacts import Artifacts
from services.common.stage import artifact
from services.common.video import store_frames
from services.depth.config import MEASURED_DEPTH_CONFIDENCE
from services.fit.config import preset
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import run_pipeline
from services.segment.config import SegmentConfig
from services.segment.engine import segment_motion
from services.synthetic.scene import SceneConfig, make_scene


def test_the_segment_stage_skips_the_check_on_depth_the_depth_stage_assumed(local_store):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(camera="rotation"))  # 64x48, 8 frames, one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    fit_cfg = dataclasses.replace(preset("test"), iters=5)
    runs = {
        flag: run_pipeline(
            artifacts,
            video,
            PipelineConfig(  # depth once: the result holds the depth the segment stage read
                fit=fit_cfg, segment=SegmentConfig(measured_depth_only=flag), two_pass_depth=False
            ),
        )
        for flag in (False, True)
    }
    off, on = runs[False], runs[True]
    assert off.depth.key == on.depth.key and off.segment.key != on.segment.key

    def stored(result, name: str) -> np.ndarray:
        return artifacts.get_array(artifact(result, name, name))

    confidence_thw = stored(on.depth, "confidence")
    assert not (confidence_thw >= MEASURED_DEPTH_CONFIDENCE).any()  # the smooth prior throughout
    fwd, bwd = stored(on.flow, "flow_forward"), stored(on.flow, "flow_backward")
    without_depth = segment_motion(fwd, bwd, SegmentConfig(), frames_thw3=scene.frames_thw3)
    np.testing.assert_array_equal(stored(on.segment, "scores"), without_depth.scores_thw)
    with_depth = segment_motion(
        fwd,
        bwd,
        SegmentConfig(),
        depth_thw=stored(off.depth, "depth"),
        frames_thw3=scene.frames_thw3,
    )
    np.testing.assert_array_equal(stored(off.segment, "scores"), with_depth.scores_thw)
    assert not np.array_equal(without_depth.scores_thw, with_depth.scores_thw)
