"""DAVIS folder reader and mask evaluation (J and F) for moving-object segmentation.

Layout (as downloaded): DAVIS/JPEGImages/480p/<video>/00000.jpg ... and
DAVIS/Annotations/480p/<video>/00000.png, palette PNGs whose index is the object id (0 is
background). Videos or annotations that are absent are listed, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.errors import InvalidArgumentError, NotFoundError, ProgressFn, no_progress
from services.evaluation.metrics import mask_f, mask_j

logger = logging.getLogger(__name__)

# DAVIS 2017 validation videos (also the 30 videos of TAP-Vid DAVIS).
DAVIS_2017_VAL = (
    "bike-packing", "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout",
    "car-shadow", "cows", "dance-twirl", "dog", "dogs-jump", "drift-chicane", "drift-straight",
    "goat", "gold-fish", "horsejump-high", "india", "judo", "kite-surf", "lab-coat", "libby",
    "loading", "mbike-trick", "motocross-jump", "paragliding-launch", "parkour", "pigs",
    "scooter-black", "shooting", "soapbox",
)  # fmt: skip
VOID_LABEL = 255  # palette index DAVIS uses for "do not evaluate"


@dataclass
class DavisVideo:
    """Frames and per-pixel object ids of one DAVIS video."""

    name: str
    frames_thw3: np.ndarray  # uint8 [T, H, W, 3] RGB
    labels_thw: np.ndarray  # uint8 [T, H, W]: 0 background, 1..K objects, 255 void
    annotated_t: np.ndarray  # bool [T]: frame has an annotation PNG (else its labels are 0)
    frame_names: list[str]  # file stems, e.g. "00000"

    @property
    def foreground_thw(self) -> np.ndarray:
        """Union of all objects: the moving-object mask DAVIS 2016 evaluates."""
        return (self.labels_thw > 0) & (self.labels_thw != VOID_LABEL)

    @property
    def void_thw(self) -> np.ndarray:
        return self.labels_thw == VOID_LABEL


def davis_root(root: Path) -> Path:
    """Accepts the DAVIS folder itself or the folder that holds it."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "DAVIS" / "JPEGImages").is_dir():
        return root / "DAVIS"
    raise NotFoundError(
        f"no DAVIS/JPEGImages under {root}: give the folder of the DAVIS 2017 download (with "
        "JPEGImages/480p and Annotations/480p)"
    )


def list_davis_videos(root: Path, resolution: str = "480p") -> list[str]:
    """Names of the videos whose frame folder exists."""
    folder = davis_root(root) / "JPEGImages" / resolution
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode == "P":
            return np.array(img, np.uint8)  # palette index = object id
        # Grayscale (DAVIS 2016 style, 0 / 255): any non-zero pixel is the one object.
        return (np.array(img.convert("L")) > 0).astype(np.uint8)


def load_davis_video(root: Path, name: str, resolution: str = "480p") -> DavisVideo:
    """Reads one video; frames without an annotation PNG get `annotated_t` False."""
    base = davis_root(root)
    frame_dir = base / "JPEGImages" / resolution / name
    paths = sorted(frame_dir.glob("*.jpg"))
    if not paths:
        raise NotFoundError(f"no frames in {frame_dir}")
    frames = []
    for p in paths:
        with Image.open(p) as img:
            frames.append(np.array(img.convert("RGB")))
    frames_thw3 = np.stack(frames)
    labels_thw = np.zeros(frames_thw3.shape[:3], np.uint8)
    annotated_t = np.zeros(len(paths), bool)
    for t, p in enumerate(paths):
        ann = base / "Annotations" / resolution / name / f"{p.stem}.png"
        if not ann.exists():
            continue
        labels = _read_labels(ann)
        if labels.shape != labels_thw.shape[1:]:
            raise InvalidArgumentError(
                "root",
                f"{ann} is {labels.shape[1]}x{labels.shape[0]} but its frame is "
                f"{labels_thw.shape[2]}x{labels_thw.shape[1]}",
            )
        labels_thw[t], annotated_t[t] = labels, True
    return DavisVideo(name, frames_thw3, labels_thw, annotated_t, [p.stem for p in paths])


# frames_thw3 uint8 -> predicted moving-object masks, bool [T, H, W]
Segmenter = Callable[[np.ndarray], np.ndarray]


@dataclass
class DavisReport:
    """Mean J, F and J&F per video over annotated frames, their mean, and missing videos."""

    per_video: dict[str, dict[str, float]]
    mean: dict[str, float]  # NaN when no video was evaluated
    missing: list[str]


def evaluate_davis_masks(
    root: Path,
    segmenter: Segmenter,
    videos: Sequence[str] = DAVIS_2017_VAL,
    resolution: str = "480p",
    progress: ProgressFn = no_progress,
) -> DavisReport:
    """Scores binary moving-object masks against the union of annotated objects.

    Every annotated frame counts (void pixels excluded); videos absent from `root` are listed in
    `missing` and skipped.
    """
    present = set(list_davis_videos(root, resolution))
    missing = [v for v in videos if v not in present]
    todo = [v for v in videos if v in present]
    per_video: dict[str, dict[str, float]] = {}
    for i, name in enumerate(todo):
        video = load_davis_video(root, name, resolution)
        pred_thw = np.asarray(segmenter(video.frames_thw3), bool)
        if pred_thw.shape != video.labels_thw.shape:
            raise InvalidArgumentError(
                "segmenter",
                f"returned masks of shape {pred_thw.shape} for {name}, expected "
                f"{video.labels_thw.shape}",
            )
        frames = np.flatnonzero(video.annotated_t)
        js = [mask_j(pred_thw[t], video.foreground_thw[t], video.void_thw[t]) for t in frames]
        fs = [mask_f(pred_thw[t], video.foreground_thw[t], video.void_thw[t]) for t in frames]
        j = float(np.mean(js)) if js else float("nan")
        f = float(np.mean(fs)) if fs else float("nan")
        per_video[name] = {"J": j, "F": f, "JF": (j + f) / 2.0}
        progress(i + 1, len(todo), f"scored {name}")
    mean = {}
    for key in ("J", "F", "JF"):
        values = np.array([m[key] for m in per_video.values()], np.float64)
        finite = values[np.isfinite(values)]
        mean[key] = float(finite.mean()) if finite.size else float("nan")
    if missing:
        logger.warning("DAVIS: %d videos missing under %s: %s", len(missing), root, missing)
    return DavisReport(per_video, mean, missing)
