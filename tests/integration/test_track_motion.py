"""The fit stage writes the tracks its config's `track_motion` asks for: the same fit read out
with `local_rigid` keeps every flag and moves the moving points (docs/fit.md, "Tracks that turn
with the object")."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.artifacts import Artifacts
from services.common.stage import artifact
from services.common.video import store_frames
from services.fit.config import preset
from services.pipeline.config import PipelineConfig
from services.pipeline.engine import run_pipeline
from services.synthetic.scene import SceneConfig, make_scene


def test_the_fit_stage_writes_the_tracks_of_its_track_motion(local_store):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig())  # 64x48, 8 frames, moving camera and one moving object
    video = store_frames(artifacts, scene.frames_thw3, 10.0)
    fit_cfg = preset("test")
    carried = run_pipeline(artifacts, video, PipelineConfig(fit=fit_cfg, track_grid=8))
    rigid_cfg = dataclasses.replace(fit_cfg, track_motion="local_rigid")
    rigid = run_pipeline(artifacts, video, PipelineConfig(fit=rigid_cfg, track_grid=8))
    assert rigid.fit.key != carried.fit.key  # the tracks are part of the fit's result

    def fit_array(result, name: str) -> np.ndarray:
        return artifacts.get_array(artifact(result.fit, name, "fit"))

    # The same fit (CPU), the same flags; only the points of moving queries move.
    for name in ("c2w", "depth", "tracks_occluded", "tracks_3d_alive"):
        np.testing.assert_array_equal(fit_array(rigid, name), fit_array(carried, name))
    moved_qt = np.abs(fit_array(rigid, "tracks_2d") - fit_array(carried, "tracks_2d")).max(-1)
    assert moved_qt[:, 0].max() < 1e-4  # the grid's queries are on frame 0: they start as asked
    assert moved_qt.max() > 0.01
