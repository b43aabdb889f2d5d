"""`gflow run` and `gflow eval tapvid` as a user calls them, on one small synthetic clip stored as
a TAP-Vid-format pickle of the user's own (not a DAVIS video).

`gflow run --queries` gets the benchmark's query points, so the evaluation that follows finds the
fit in the store: one fit serves both, and the eval's figures are checked against the metric
functions applied to the tracks `gflow run` wrote. Output is not a terminal here, so progress
must come as one line per stage event.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from services.evaluation.metrics import TAPVID_KEYS, TapvidQueries, sample_queries, tapvid_metrics
from services.evaluation.tapvid import load_tapvid_davis
from services.pipeline.engine import STAGES
from services.synthetic.scene import SceneConfig, make_scene
from tests.unit.test_davis import write_video

CLIP = "my_clip"  # a user's own clip: no DAVIS video may be reported missing


@dataclass
class Outputs:
    out: Path
    stderr: str
    queries: TapvidQueries
    image_hw: tuple[int, int]
    eval_report: dict
    eval_log: str


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Outputs:
    root = tmp_path_factory.mktemp("cli")
    scene = make_scene(SceneConfig(n_frames=4, n_objects=1, n_tracks=30, seed=3))
    T, H, W = scene.frames_thw3.shape[:3]
    pickle_path = root / "own_clips.pkl"
    entry = {
        "video": scene.frames_thw3,
        "points": scene.tracks_nt2 / np.array([W, H], np.float32),
        "occluded": scene.occluded_nt,
    }
    pickle_path.write_bytes(pickle.dumps({CLIP: entry}))
    # The same frames and queries the evaluation will use, as a user's folder and CSV.
    video = load_tapvid_davis(pickle_path).videos[CLIP]
    queries = sample_queries(video.tracks_nt2, video.occluded_nt, "first")
    frames = root / "frames"
    frames.mkdir()
    for t, frame_hw3 in enumerate(video.video_thw3):
        cv2.imwrite(str(frames / f"{t:03d}.png"), cv2.cvtColor(frame_hw3, cv2.COLOR_RGB2BGR))
    csv = root / "queries.csv"
    xy_q2 = queries.query_xy_q2.tolist()
    rows = [f"{t},{x!r},{y!r}" for t, (x, y) in zip(queries.query_t_q, xy_q2, strict=True)]
    csv.write_text("t,x,y\n" + "\n".join(rows) + "\n")
    store = (root / "store").as_uri()
    common = ["--fit-preset", "test", "--store", store]
    run = _gflow("run", str(frames), "--out", str(root / "out"), "--queries", str(csv), *common)
    evaluated = _gflow(
        "eval", "tapvid", "--data", str(pickle_path), "--out", str(root / "eval.json"), *common
    )
    return Outputs(
        out=root / "out",
        stderr=run.stderr,
        queries=queries,
        image_hw=(H, W),
        eval_report=json.loads((root / "eval.json").read_text()),
        eval_log=evaluated.stderr,
    )


def _gflow(*args: str) -> subprocess.CompletedProcess:
    """The installed `gflow` in a subprocess, its output captured (so not a terminal)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "gflow"), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_run_writes_the_tracks_of_the_queries(outputs: Outputs):
    fit = outputs.out / "fit"
    points_qt2 = np.load(fit / "tracks_2d.npy")
    occluded_qt = np.load(fit / "tracks_occluded.npy")
    world_qt3 = np.load(fit / "tracks_3d.npy")
    Q, T = len(outputs.queries.query_t_q), outputs.queries.gt_tracks_qt2.shape[1]
    assert points_qt2.shape == (Q, T, 2) and points_qt2.dtype == np.float32
    assert occluded_qt.shape == (Q, T) and occluded_qt.dtype == bool
    assert world_qt3.shape == (Q, T, 3) and np.isfinite(world_qt3).all()
    # At its query frame a track starts where it was asked to (lifted, then projected back).
    at_query_q2 = points_qt2[np.arange(Q), outputs.queries.query_t_q]
    np.testing.assert_allclose(at_query_q2, outputs.queries.query_xy_q2, atol=0.05)
    trajectories = iio.imread(fit / "video_trajectories.mp4", extension=".mp4")
    assert trajectories.shape[:3] == (T, *outputs.image_hw)


def test_progress_is_one_line_per_stage_event_without_ffmpeg_noise(outputs: Outputs):
    assert "pix_fmt" not in outputs.stderr and "ffmpeg" not in outputs.stderr.lower()
    for stage in (*STAGES, "report"):
        line = rf"INFO services\.pipeline\.progress .* {stage} 1/1: (done|cached)$"
        assert re.search(line, outputs.stderr, re.M), stage
    fit_lines = re.findall(r"fit (\d+)/4: frame", outputs.stderr)
    assert fit_lines == ["1", "2", "3", "4"]  # the fit's per-frame events, each on its own line
    assert "━" not in outputs.stderr  # no progress bars drawn into a log


def test_eval_of_own_clips_scores_the_run_tracks_without_missing_videos(outputs: Outputs):
    report = outputs.eval_report
    assert report["benchmark"] == "tapvid" and report["missing"] == []
    assert "not evaluated (missing)" not in outputs.eval_log  # run_eval's warning
    assert "blackswan" not in outputs.eval_log  # no DAVIS name listed anywhere
    assert "fit: answered from the store" in outputs.eval_log  # the run's fit, reused
    assert re.search(r" fit 1/1: cached$", outputs.eval_log, re.M)  # eval shows progress too
    assert re.search(rf" video 1/1: tracked {CLIP}$", outputs.eval_log, re.M)
    q = outputs.queries
    expected = tapvid_metrics(
        q.query_t_q,
        q.gt_tracks_qt2,
        q.gt_occluded_qt,
        np.load(outputs.out / "fit" / "tracks_2d.npy"),
        np.load(outputs.out / "fit" / "tracks_occluded.npy"),
        image_hw=outputs.image_hw,
        query_mode="first",
    )
    assert list(report["per_video"]) == [CLIP]
    for key in TAPVID_KEYS:
        assert report["per_video"][CLIP][key] == pytest.approx(expected[key], abs=1e-12), key
        assert report["mean"][key] == pytest.approx(expected[key], abs=1e-12), key


def test_eval_davis_scores_a_folder_with_progress_per_stage_and_video(tmp_path):
    """`gflow eval davis` on one video in the DAVIS layout: the object found (J 0.29 and F 0.33
    when written), nothing missing for the videos asked, and a log line per flow/segment event
    and per video."""
    scene = make_scene(SceneConfig(height=96, width=128, n_frames=6, n_objects=1, seed=5))
    write_video(tmp_path / "data", "dog", scene.frames_thw3, (scene.object_thw + 1).astype("u1"))
    report_path = tmp_path / "davis.json"
    store = (tmp_path / "store").as_uri()
    data = str(tmp_path / "data")
    done = _gflow(
        "eval",
        "davis",
        "--data",
        data,
        "--videos",
        "dog",
        "--store",
        store,
        "--out",
        str(report_path),
    )
    report = json.loads(report_path.read_text())
    assert report["benchmark"] == "davis" and report["missing"] == []
    assert 0.1 < report["per_video"]["dog"]["J"] <= 1.0
    assert 0.1 < report["per_video"]["dog"]["F"] <= 1.0
    assert re.search(r" flow \d+/\d+: ", done.stderr) and re.search(
        r" segment \d+/\d+: ", done.stderr
    )
    assert re.search(r" video 1/1: scored dog$", done.stderr, re.M)
