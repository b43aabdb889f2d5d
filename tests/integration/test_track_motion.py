"""The fit stage writes the tracks its config's `track_motion` asks for (docs/fit.md, "Tracks that
turn with the object"): a different fit key, the readout called with that motion, and what it
returned stored."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.artifacts import Artifacts
from services.common.stage import artifact
from services.common.video import store_frames
from services.fit import stage as fit_stage
from services.fit.config import preset
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import run_pipeline
from services.synthetic.scene import SceneConfig, make_scene


def test_the_fit_stage_writes_the_tracks_of_its_track_motion(local_store, monkeypatch):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())  # 64x48, 8 frames, moving camera and one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    read = []

    def recorded(result, queries_q3, motion):
        tracks = track_queries(result, queries_q3, motion)
        read.append((motion, tracks))
        return tracks

    track_queries = fit_stage.track_queries
    monkeypatch.setattr(fit_stage, "track_queries", recorded)
    fit_cfg = dataclasses.replace(preset("test"), iters=10)
    runs = [
        run_pipeline(
            artifacts,
            video,
            PipelineConfig(fit=dataclasses.replace(fit_cfg, track_motion=motion), track_grid=8),
        )
        for motion in ("gaussian", "local_rigid")
    ]
    assert runs[0].fit.key != runs[1].fit.key  # the tracks are part of the fit's result
    assert [motion for motion, _ in read] == ["gaussian", "local_rigid"]
    for run, (_, tracks) in zip(runs, read, strict=True):
        stored = {
            name: artifacts.get_array(artifact(run.fit, name, "fit"))
            for name in ("tracks_2d", "tracks_occluded", "tracks_3d", "tracks_3d_alive")
        }
        np.testing.assert_array_equal(stored["tracks_2d"], tracks.points_qt2)
        np.testing.assert_array_equal(stored["tracks_occluded"], tracks.occluded_qt)
        np.testing.assert_array_equal(stored["tracks_3d"], tracks.world_qt3)
        np.testing.assert_array_equal(stored["tracks_3d_alive"], tracks.alive_qt)
