"""Finding 2: cache keys come from what the server can verify, not from the client's word.

Before the fix, flow keyed by the client's `content_hash`: clip A's frames sent with clip C's
hash stored A's flow under C's key, and a later honest run of C was answered with A's flow.
"""

from __future__ import annotations

import numpy as np
import pytest

from gflow.v1 import common_pb2, segment_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.stage import artifact
from services.common.video import frames_hash
from services.flow.engine import FlowConfig, compute_flow
from services.flow.stage import run_flow
from services.segment.engine import SegmentConfig
from services.segment.stage import run_segment
from tests.faults.clips import clip_frames, stored_clip


@pytest.fixture
def artifacts(local_store) -> Artifacts:
    return Artifacts(local_store)


def _forward_flow(artifacts: Artifacts, result: common_pb2.StageResult) -> np.ndarray:
    return artifacts.get_array(artifact(result, "flow_forward", "flow"))


def test_frames_sent_with_another_clips_hash_do_not_poison_its_cache(artifacts):
    clip_a, clip_c = stored_clip(artifacts, 1), stored_clip(artifacts, 2)
    forged = common_pb2.VideoRef()
    forged.CopyFrom(clip_a)
    forged.content_hash = clip_c.content_hash
    with pytest.raises(InvalidArgumentError, match="video.content_hash: does not match"):
        run_flow(artifacts, forged, FlowConfig())

    honest = run_flow(artifacts, clip_c, FlowConfig())
    expected = compute_flow(clip_frames(2), FlowConfig())
    assert not honest.cached
    np.testing.assert_array_equal(
        _forward_flow(artifacts, honest), np.stack([p.flow_fwd_hw2 for p in expected.pairs])
    )


def test_an_empty_content_hash_is_refused(artifacts):
    video = stored_clip(artifacts, 1)
    video.content_hash = ""
    with pytest.raises(InvalidArgumentError, match="video.content_hash: is empty"):
        run_flow(artifacts, video, FlowConfig())


def test_foreign_frames_planted_under_a_clips_key_are_replaced_at_ingest(artifacts):
    """Someone with store access puts A's frames under the key C's frames will have: ingesting
    C replaces them instead of reusing them."""
    clip_a = stored_clip(artifacts, 1)
    planted_key = f"video/{frames_hash(clip_frames(2))[:40]}/frames"
    artifacts.store.put(
        planted_key, artifacts.store.get(clip_a.frames.key), clip_a.frames.media_type
    )
    clip_c = stored_clip(artifacts, 2)
    assert clip_c.frames.key == planted_key
    np.testing.assert_array_equal(artifacts.get_array(clip_c.frames), clip_frames(2))


def test_an_upstream_result_of_another_video_is_refused(artifacts):
    """Segment (and fit) read upstream results from the store and check their video."""
    clip_a, clip_c = stored_clip(artifacts, 1), stored_clip(artifacts, 2)
    flow_a = run_flow(artifacts, clip_a, FlowConfig())
    request = segment_pb2.SegmentMotionRequest(video=clip_c, flow=flow_a)
    with pytest.raises(InvalidArgumentError, match="flow: the flow result .* another video"):
        run_segment(artifacts, request, SegmentConfig())


def test_an_upstream_result_the_store_never_held_is_refused(artifacts):
    clip_a = stored_clip(artifacts, 1)
    flow_a = run_flow(artifacts, clip_a, FlowConfig())
    invented = common_pb2.StageResult()
    invented.CopyFrom(flow_a)
    invented.key = "flow/0123456789abcdef"
    request = segment_pb2.SegmentMotionRequest(video=clip_a, flow=invented)
    with pytest.raises(InvalidArgumentError, match="is not a stored flow result"):
        run_segment(artifacts, request, SegmentConfig())
