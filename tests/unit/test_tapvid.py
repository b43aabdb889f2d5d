"""TAP-Vid DAVIS reader and evaluation on pickles written here in the official structure."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest

from services.common.errors import NotFoundError
from services.evaluation.metrics import TAPVID_KEYS
from services.evaluation.tapvid import (
    OFFICIAL_PICKLE,
    TAPVID_DAVIS_VIDEOS,
    evaluate_tapvid,
    load_tapvid_davis,
)
from services.synthetic.scene import SceneConfig, make_scene


def synthetic_entry(seed: int) -> dict:
    """A synthetic clip with exact tracks, stored the way tapvid_davis.pkl stores a video."""
    sc = make_scene(SceneConfig(seed=seed, n_frames=6, n_objects=2, n_tracks=40))
    h, w = sc.frames_thw3.shape[1:3]
    return {
        "video": sc.frames_thw3,
        "points": sc.tracks_nt2 / np.array([w, h], np.float32),
        "occluded": sc.occluded_nt,
    }


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    return {"blackswan": synthetic_entry(0), "dog": synthetic_entry(1)}


def oracle(entries: dict[str, dict]):
    """A perfect tracker: looks the video up and answers each query with its true track."""

    def track(video_thw3, queries_q3):
        entry = next(e for e in entries.values() if np.array_equal(e["video"], video_thw3))
        h, w = video_thw3.shape[1:3]
        tracks_nt2 = entry["points"] * np.array([w, h], np.float32)
        out_tracks, out_occ = [], []
        for t, x, y in queries_q3:
            n = int(np.argmin(np.linalg.norm(tracks_nt2[:, int(t)] - (x, y), axis=1)))
            out_tracks.append(tracks_nt2[n])
            out_occ.append(entry["occluded"][n])
        return np.array(out_tracks).reshape(-1, len(video_thw3), 2), np.array(out_occ)

    return track


def frozen(video_thw3, queries_q3):
    """A tracker that never moves the query point and always calls it visible."""
    tracks = np.repeat(queries_q3[:, None, 1:], len(video_thw3), axis=1)
    return tracks, np.zeros(tracks.shape[:2], bool)


def test_official_pickle_reads_and_lists_missing_videos(tmp_path, entries):
    path = tmp_path / OFFICIAL_PICKLE
    path.write_bytes(pickle.dumps(entries))
    data = load_tapvid_davis(path)
    assert sorted(data.videos) == ["blackswan", "dog"]
    assert len(data.missing) == 28 and "blackswan" not in data.missing and "camel" in data.missing
    video = data.videos["dog"]
    np.testing.assert_array_equal(video.video_thw3, entries["dog"]["video"])
    np.testing.assert_allclose(
        video.tracks_nt2, entries["dog"]["points"] * np.array([64, 48]), rtol=1e-6
    )
    report = evaluate_tapvid(data, oracle(entries), "first")
    for name in ("blackswan", "dog"):
        assert report.per_video[name]["average_jaccard"] == 1.0
        assert report.per_video[name]["occlusion_accuracy"] == 1.0
    assert report.mean["average_pts_within_thresh"] == 1.0
    assert report.missing == data.missing
    worse = evaluate_tapvid(data, frozen, "strided")
    assert worse.mean["average_jaccard"] < 0.9 and worse.query_mode == "strided"


def test_per_video_pickles_with_truncated_and_malformed_files(tmp_path, entries):
    (tmp_path / "blackswan.pkl").write_bytes(pickle.dumps(entries["blackswan"]))
    (tmp_path / "dog.pkl").write_bytes(pickle.dumps(entries["dog"])[:1000])  # cut download
    bad = dict(entries["blackswan"], points=np.zeros((3, 2, 2), np.float32))
    (tmp_path / "cows.pkl").write_bytes(pickle.dumps({"cows": bad}))  # wrong shapes
    (tmp_path / "notes.pkl").write_bytes(pickle.dumps(["not", "a", "video"]))
    data = load_tapvid_davis(tmp_path)
    assert list(data.videos) == ["blackswan"]
    assert set(data.unreadable) == {"dog.pkl", "cows", "notes"}
    assert "points" in data.unreadable["cows"]
    assert "dog" in data.missing and "cows" in data.missing
    report = evaluate_tapvid(data, oracle(entries), "strided")
    assert list(report.per_video) == ["blackswan"]
    assert report.per_video["blackswan"]["average_jaccard"] == 1.0
    assert report.unreadable == data.unreadable


def test_own_clips_in_the_tapvid_layout_expect_no_davis_video(tmp_path, entries):
    path = tmp_path / "my_clips.pkl"
    path.write_bytes(pickle.dumps({"street": entries["dog"], "garden": entries["blackswan"]}))
    data = load_tapvid_davis(path)
    assert sorted(data.videos) == ["garden", "street"] and data.missing == []
    report = evaluate_tapvid(data, oracle(entries), "first")
    assert report.missing == [] and report.mean["average_jaccard"] == 1.0
    # Given explicitly, an expected list is still checked.
    assert load_tapvid_davis(path, expected=["street", "alley"]).missing == ["alley"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickles_that_would_run_code_are_refused(tmp_path):
    (tmp_path / "blackswan.pkl").write_bytes(pickle.dumps(_RunsCode()))
    data = load_tapvid_davis(tmp_path)
    assert not data.videos
    assert "refusing" in data.unreadable["blackswan.pkl"]


def test_pickles_from_numpy_1_load(tmp_path, entries):
    # numpy 1.x pickles name numpy.core.multiarray; numpy 2 writes numpy._core.
    raw = pickle.dumps({"dog": entries["dog"]}, protocol=2).replace(b"numpy._core", b"numpy.core")
    (tmp_path / OFFICIAL_PICKLE).write_bytes(raw)
    data = load_tapvid_davis(tmp_path / OFFICIAL_PICKLE)
    np.testing.assert_array_equal(data.videos["dog"].occluded_nt, entries["dog"]["occluded"])


def test_nothing_present(tmp_path):
    with pytest.raises(NotFoundError):
        load_tapvid_davis(tmp_path / "absent.pkl")
    data = load_tapvid_davis(tmp_path)  # an empty folder: everything missing, nothing fails
    assert data.missing == list(TAPVID_DAVIS_VIDEOS)
    report = evaluate_tapvid(data, frozen)
    assert report.per_video == {} and all(math.isnan(report.mean[k]) for k in TAPVID_KEYS)
