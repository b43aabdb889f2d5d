"""TAP-Vid DAVIS: read the official pickle (or per-video pickles) and evaluate a point tracker.

Users of the original often had incomplete downloads, so reading never fails on a missing or
broken video: what is present is evaluated and the report names what is missing or unreadable.
Pickles are unpickled with an allow-list (numpy arrays and plain containers only), so a
tampered file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.common.errors import NotFoundError, ProgressFn, no_progress
from services.evaluation.davis import DAVIS_2017_VAL
from services.evaluation.metrics import TAPVID_KEYS, QueryMode, sample_queries, tapvid_metrics

logger = logging.getLogger(__name__)

TAPVID_DAVIS_VIDEOS = DAVIS_2017_VAL  # TAP-Vid DAVIS annotates the 30 DAVIS 2017 val videos
OFFICIAL_PICKLE = "tapvid_davis.pkl"

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only; anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TAP-Vid pickle")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> object:
    with path.open("rb") as f:  # streamed: the official pickle is large
        return _ArrayUnpickler(f).load()


@dataclass
class TapvidVideo:
    """One annotated video, as stored: points normalised to [0, 1] as (x, y)."""

    name: str
    video_thw3: np.ndarray  # uint8 [T, H, W, 3]
    points_nt2: np.ndarray  # float32 [N, T, 2] (x, y) in [0, 1]
    occluded_nt: np.ndarray  # bool [N, T]

    @property
    def tracks_nt2(self) -> np.ndarray:
        """Points in pixels of this video: (x * W, y * H)."""
        h, w = self.video_thw3.shape[1:3]
        return (self.points_nt2 * np.array([w, h], np.float32)).astype(np.float32)


@dataclass
class TapvidDataset:
    """What could be read; `missing` and `unreadable` say what could not."""

    videos: dict[str, TapvidVideo] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # expected videos found nowhere
    unreadable: dict[str, str] = field(default_factory=dict)  # file or video -> reason


def _parse_video(name: str, entry: object) -> TapvidVideo:
    if not isinstance(entry, dict) or not {"video", "points", "occluded"} <= entry.keys():
        raise ValueError("not a dict with 'video', 'points' and 'occluded'")
    video = np.asarray(entry["video"])
    points = np.asarray(entry["points"], np.float32)
    occluded = np.asarray(entry["occluded"]).astype(bool)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
    n_frames = video.shape[0]
    if points.ndim != 3 or points.shape[1:] != (n_frames, 2):
        raise ValueError(f"points must be [N, {n_frames}, 2], got {points.shape}")
    if occluded.shape != points.shape[:2]:
        raise ValueError(f"occluded must be {points.shape[:2]}, got {occluded.shape}")
    return TapvidVideo(name, video, points, occluded)


def load_tapvid_davis(path: Path, expected: Sequence[str] | None = None) -> TapvidDataset:
    """Reads `tapvid_davis.pkl` (video name -> {'video', 'points', 'occluded'}), or a folder of
    per-video pickles (`<video>.pkl` holding that dict, or a one-entry name -> dict mapping,
    optionally beside the official pickle).

    Raises NotFoundError only when `path` does not exist; a broken file or entry goes to
    `unreadable`, and every name of `expected` not read goes to `missing`. `expected` None: the
    TAP-Vid DAVIS videos, unless videos were read and none of them is one (a user's own clips
    in the TAP-Vid layout, where no list is expected).
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(
            f"{path} does not exist: give the TAP-Vid DAVIS pickle ({OFFICIAL_PICKLE}, from the "
            "tapnet repository's TAP-Vid download) or a folder of per-video .pkl files"
        )
    files = sorted(path.glob("*.pkl")) if path.is_dir() else [path]
    data = TapvidDataset()
    for file in files:
        try:
            content = _load_pickle(file)
        except Exception as exc:  # a truncated download raises EOFError, UnpicklingError, ...
            data.unreadable[file.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("skipping %s: %s", file, data.unreadable[file.name])
            continue
        if isinstance(content, dict) and "video" not in content:
            entries = content  # name -> video dict, as in the official pickle
        else:
            entries = {file.stem: content}  # one video per file, named by the file
        for name, entry in entries.items():
            try:
                data.videos[str(name)] = _parse_video(str(name), entry)
            except ValueError as exc:
                data.unreadable[str(name)] = str(exc)
                logger.warning("skipping video %s in %s: %s", name, file, exc)
    if expected is None:
        own_clips = data.videos and not set(data.videos) & set(TAPVID_DAVIS_VIDEOS)
        expected = [] if own_clips else TAPVID_DAVIS_VIDEOS
    data.missing = [name for name in expected if name not in data.videos]
    return data


# (video_thw3 uint8, queries_q3 float32 rows (t, x, y) in pixels) -> (tracks_qt2 px, occluded_qt)
Tracker = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class TapvidReport:
    """Per-video metrics, their mean over evaluated videos, and what was not evaluated."""

    query_mode: str
    per_video: dict[str, dict[str, float]]
    mean: dict[str, float]  # NaN-skipping mean over videos; NaN when no video was evaluated
    missing: list[str]
    unreadable: dict[str, str]


def evaluate_tapvid(
    data: TapvidDataset,
    tracker: Tracker,
    query_mode: QueryMode = "first",
    progress: ProgressFn = no_progress,
) -> TapvidReport:
    """Runs `tracker` on every video read and scores it (coordinates rescaled to 256x256).

    The tracker sees each video at its stored resolution with TAP-Vid's queries in pixels
    (first visible point per track, or every 5th frame for "strided"); the metrics rescale both
    tracks to 256x256 as the TAP-Vid benchmark does.
    """
    per_video: dict[str, dict[str, float]] = {}
    names = sorted(data.videos)
    for i, name in enumerate(names):
        video = data.videos[name]
        queries = sample_queries(video.tracks_nt2, video.occluded_nt, query_mode)
        queries_q3 = np.concatenate(
            [queries.query_t_q[:, None].astype(np.float32), queries.query_xy_q2], axis=1
        )
        pred_tracks_qt2, pred_occluded_qt = tracker(video.video_thw3, queries_q3)
        per_video[name] = tapvid_metrics(
            queries.query_t_q,
            queries.gt_tracks_qt2,
            queries.gt_occluded_qt,
            np.asarray(pred_tracks_qt2, np.float32),
            np.asarray(pred_occluded_qt, bool),
            image_hw=video.video_thw3.shape[1:3],
            query_mode=query_mode,
        )
        progress(i + 1, len(names), f"tracked {name}")
    mean = {}
    for key in TAPVID_KEYS:
        values = np.array([m[key] for m in per_video.values()], np.float64)
        finite = values[np.isfinite(values)]
        mean[key] = float(finite.mean()) if finite.size else float("nan")
    return TapvidReport(query_mode, per_video, mean, list(data.missing), dict(data.unreadable))
