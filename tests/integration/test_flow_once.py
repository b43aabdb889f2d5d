"""Flow is computed once per run: one embedded run asks the flow backend for each directed frame
pair exactly once, and depth, segment and fit all see those same arrays (with a non-default flow
config, which a depth stage computing its own flow would not have used).

Measured on the 2-core development machine: 4 s (1 min 45 s while other jobs loaded it).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.stage import artifact
from services.common.video import frames_sha256, load_frames, store_frames
from services.depth import stage as depth_stage
from services.depth.engine import DepthConfig
from services.fit import stage as fit_stage
from services.flow.backends import dis
from services.flow.engine import FlowConfig, compute_flow, frame_pairs
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import run_pipeline
from services.segment import stage as segment_stage
from services.synthetic.scene import SceneConfig, make_scene
from tests.faults.clips import lean_fit

FLOW = FlowConfig(dis_preset="fast", variational_refinement=False)  # not the default DIS
STRIDE = DepthConfig().flow_stride


def _record_calls(monkeypatch, module, name: str, calls: list) -> None:
    """Wrap `module.name` so each call's arguments are appended to `calls`, then it runs."""
    original = getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)


def test_one_run_computes_each_pair_once_and_every_stage_sees_that_flow(local_store, monkeypatch):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())  # 64x48, 8 frames, moving camera and one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    frames_thw3 = load_frames(artifacts, video, frames_sha256(artifacts, video))
    frame_index = {frame.tobytes(): t for t, frame in enumerate(frames_thw3)}
    assert len(frame_index) == len(frames_thw3)  # every frame tells itself apart

    directed = []
    original_flow = dis.DisBackend.flow

    def counting_flow(self, src_bhw3, dst_bhw3):
        for src_hw3, dst_hw3 in zip(src_bhw3, dst_bhw3, strict=True):
            directed.append((frame_index[src_hw3.tobytes()], frame_index[dst_hw3.tobytes()]))
        return original_flow(self, src_bhw3, dst_bhw3)

    monkeypatch.setattr(dis.DisBackend, "flow", counting_flow)
    depth_calls, segment_calls, fit_calls = [], [], []
    _record_calls(monkeypatch, depth_stage, "estimate_depth", depth_calls)
    _record_calls(monkeypatch, segment_stage, "segment_motion", segment_calls)
    _record_calls(monkeypatch, fit_stage, "fit", fit_calls)

    config = PipelineConfig(flow=FLOW, fit=lean_fit(), track_grid=0)
    result = run_pipeline(artifacts, video, config)
    again = run_pipeline(artifacts, video, config)  # all from the store: no flow at all

    pairs = frame_pairs(len(frames_thw3), STRIDE)
    expected = Counter([*pairs, *((t1, t0) for t0, t1 in pairs)])
    assert Counter(directed) == expected and max(expected.values()) == 1
    assert again.fit.key == result.fit.key and again.fit.cached
    # Depth twice (the second run with the segment masks), each time with the one flow.
    assert len(depth_calls) == 2 and len(segment_calls) == len(fit_calls) == 1
    depth_flow = depth_calls[0][1]["flow"]
    second_flow = depth_calls[1][1]["flow"]
    assert sorted(second_flow) == sorted(depth_flow)
    for pair, flows in depth_flow.items():
        for mine, theirs in zip(flows, second_flow[pair], strict=True):
            np.testing.assert_array_equal(mine, theirs)
    segment_fwd_t1hw2, segment_bwd_t1hw2 = segment_calls[0][0][:2]
    priors = fit_calls[0][0][0]
    assert sorted(depth_flow) == sorted(pairs)
    for name, t1hw2 in (("flow_forward", segment_fwd_t1hw2), ("flow_backward", segment_bwd_t1hw2)):
        stored = artifacts.get_array(artifact(result.flow, name, "flow"))
        np.testing.assert_array_equal(t1hw2, stored)
    np.testing.assert_array_equal(priors.flow_fwd_t1hw2, segment_fwd_t1hw2)
    np.testing.assert_array_equal(priors.flow_bwd_t1hw2, segment_bwd_t1hw2)
    # The fit also reads the depth stage's confidence (where its depth was filled in).
    stored_confidence = artifacts.get_array(artifact(result.depth, "confidence", "depth"))
    np.testing.assert_array_equal(priors.depth_confidence_thw, stored_confidence)
    for t in range(len(frames_thw3) - 1):
        np.testing.assert_array_equal(depth_flow[(t, t + 1)][0], segment_fwd_t1hw2[t])
        np.testing.assert_array_equal(depth_flow[(t, t + 1)][1], segment_bwd_t1hw2[t])
    wide_fwd = artifacts.get_array(artifact(result.flow, f"flow_forward_stride{STRIDE}", "flow"))
    for t, fwd_hw2 in enumerate(wide_fwd):
        np.testing.assert_array_equal(depth_flow[(t, t + STRIDE)][0], fwd_hw2)
    # The flow config reached depth: the default DIS would have given other vectors.
    default = compute_flow(frames_thw3[:2], FlowConfig()).pairs[0].flow_fwd_hw2
    assert np.abs(default - depth_flow[(0, 1)][0]).mean() > 0.01


def test_the_flow_stage_is_asked_for_the_pairs_depth_triangulates_from():
    config = PipelineConfig()
    assert config.flow_config(8).extra_stride == STRIDE
    assert config.flow_config(STRIDE).extra_stride == 0  # a clip too short for the wide pairs
    assert PipelineConfig(depth=DepthConfig(flow_stride=1)).flow_config(8).extra_stride == 0
    with pytest.raises(InvalidArgumentError, match="leave it at 0 or set it to 3") as err:
        PipelineConfig(flow=FlowConfig(extra_stride=2))
    assert err.value.field == "flow.extra_stride"
