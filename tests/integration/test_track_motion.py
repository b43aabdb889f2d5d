"""The fit stage writes the tracks its config's `track_motion` (and `occlusion_from_frames`,
`occlusion_from_flow_where_unmeasured`, `tracks_with_flow_chain`) asks for (docs/fit.md,
"Tracks that turn with the object"): a different fit key, the readout called with that motion
(and the clip's frames, the priors' flow check, their flow chain), and what it returned
stored."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.artifacts import Artifacts
from services.common.stage import artifact
from services.common.video import store_frames
from services.fit import tracks as fit_tracks
from services.fit.config import preset
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import run_pipeline
from services.synthetic.scene import SceneConfig, make_scene


def test_the_fit_stage_writes_the_tracks_of_its_track_motion(local_store, monkeypatch):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())  # 64x48, 8 frames, moving camera and one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    read = []

    def recorded(result, queries_q3, motion, frames_thw3, flow_check, flow_chain, mask_thw):
        tracks = track_queries(
            result, queries_q3, motion, frames_thw3, flow_check, flow_chain, mask_thw
        )
        read.append((motion, tracks, frames_thw3, flow_check, flow_chain, mask_thw))
        return tracks

    track_queries = fit_tracks.track_queries
    # The stage reads its tracks through tracks.configured_tracks, which calls this.
    monkeypatch.setattr(fit_tracks, "track_queries", recorded)
    fit_cfg = dataclasses.replace(preset("test"), iters=10)
    settings = [
        ("gaussian", False, False, False, False),
        ("local_rigid", False, False, False, False),
        ("local_rigid", True, False, False, False),
        ("local_rigid", False, True, False, False),
        ("local_rigid", False, False, True, False),
        ("local_rigid", False, False, False, True),
    ]
    runs = [
        run_pipeline(
            artifacts,
            video,
            PipelineConfig(
                fit=dataclasses.replace(
                    fit_cfg,
                    track_motion=motion,
                    occlusion_from_frames=from_frames,
                    occlusion_from_flow_where_unmeasured=from_flow,
                    tracks_with_flow_chain=from_chain,
                    tracks_moving_by_mask=from_mask,
                ),
                track_grid=8,
            ),
        )
        for motion, from_frames, from_flow, from_chain, from_mask in settings
    ]
    assert len({run.fit.key for run in runs}) == 6  # the tracks are part of the fit's result
    assert [motion for motion, *_ in read] == [motion for motion, *_ in settings]
    # The frames, the flow check, the chain and the masks reach the readout only when their
    # flags ask.
    assert [frames is None for _, _, frames, *_ in read] == [True, True, False, True, True, True]
    np.testing.assert_array_equal(read[2][2], scene.frames_thw3)
    assert [check is None for *_, check, _, _ in read] == [True, True, True, False, True, True]
    flow_check = read[3][3]
    assert flow_check.flow_fwd_t1hw2.shape == (7, 48, 64, 2)
    assert flow_check.unmeasured_t.shape == (8,)
    assert [chain is None for *_, chain, _ in read] == [True, True, True, True, False, True]
    flow_chain = read[4][4]
    assert flow_chain.flow_bwd_t1hw2.shape == (7, 48, 64, 2)
    assert [mask is None for *_, mask in read] == [True, True, True, True, True, False]
    mask_thw = read[5][5]
    assert mask_thw.dtype == bool and mask_thw.shape == (8, 48, 64)
    for run, (_, tracks, *_) in zip(runs, read, strict=True):
        stored = {
            name: artifacts.get_array(artifact(run.fit, name, "fit"))
            for name in ("tracks_2d", "tracks_occluded", "tracks_3d", "tracks_3d_alive")
        }
        np.testing.assert_array_equal(stored["tracks_2d"], tracks.points_qt2)
        np.testing.assert_array_equal(stored["tracks_occluded"], tracks.occluded_qt)
        np.testing.assert_array_equal(stored["tracks_3d"], tracks.world_qt3)
        np.testing.assert_array_equal(stored["tracks_3d_alive"], tracks.alive_qt)
