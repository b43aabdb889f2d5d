"""DAVIS folder reader and J/F evaluation on a folder written here in the official layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgumentError, NotFoundError
from services.evaluation.davis import (
    DAVIS_2017_VAL,
    VOID_LABEL,
    evaluate_davis_masks,
    list_davis_videos,
    load_davis_video,
)
from services.synthetic.scene import SceneConfig, make_scene

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253)


def write_video(root: Path, name: str, frames_thw3: np.ndarray, labels_thw: np.ndarray) -> None:
    """Frames as JPEG and labels as palette PNGs, the way DAVIS ships them."""
    frame_dir = root / "DAVIS" / "JPEGImages" / "480p" / name
    ann_dir = root / "DAVIS" / "Annotations" / "480p" / name
    frame_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t, (frame, labels) in enumerate(zip(frames_thw3, labels_thw, strict=True)):
        Image.fromarray(frame).save(frame_dir / f"{t:05d}.jpg", quality=95)
        png = Image.fromarray(labels, mode="P")
        png.putpalette(PALETTE)
        png.save(ann_dir / f"{t:05d}.png")


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Two videos from synthetic scenes: labels = moving-object index + 1."""
    root = tmp_path_factory.mktemp("davis")
    labels = {}
    for seed, name in enumerate(("bmx-trees", "dog")):
        sc = make_scene(SceneConfig(seed=seed, n_frames=4, n_objects=2, n_tracks=0))
        labels[name] = (sc.object_thw + 1).astype(np.uint8)
        write_video(root, name, sc.frames_thw3, labels[name])
    # One annotation missing (DAVIS test-dev videos annotate only some frames).
    (root / "DAVIS" / "Annotations" / "480p" / "dog" / "00002.png").unlink()
    return root, labels


def test_reads_frames_palette_labels_and_missing_annotations(davis):
    root, labels = davis
    assert list_davis_videos(root) == ["bmx-trees", "dog"]
    video = load_davis_video(root / "DAVIS", "dog")  # the DAVIS folder itself works too
    assert video.frames_thw3.shape == (4, 48, 64, 3) and video.frames_thw3.dtype == np.uint8
    assert video.frame_names == ["00000", "00001", "00002", "00003"]
    np.testing.assert_array_equal(video.annotated_t, [True, True, False, True])
    np.testing.assert_array_equal(video.labels_thw[[0, 1, 3]], labels["dog"][[0, 1, 3]])
    assert not video.labels_thw[2].any()
    np.testing.assert_array_equal(video.foreground_thw[0], labels["dog"][0] > 0)


def test_grayscale_and_void_annotations(tmp_path):
    frame = np.zeros((1, 8, 8, 3), np.uint8)
    write_video(tmp_path, "camel", frame, np.zeros((1, 8, 8), np.uint8))
    ann = tmp_path / "DAVIS" / "Annotations" / "480p" / "camel" / "00000.png"
    gray = np.zeros((8, 8), np.uint8)
    gray[2:4, 2:4] = 255  # DAVIS 2016 style: 0 / 255 grayscale
    Image.fromarray(gray, mode="L").save(ann)
    video = load_davis_video(tmp_path, "camel")
    assert video.foreground_thw[0].sum() == 4 and not video.void_thw.any()
    palette = np.zeros((8, 8), np.uint8)
    palette[0, :] = VOID_LABEL
    palette[5, 5] = 1
    png = Image.fromarray(palette, mode="P")
    png.putpalette(PALETTE)
    png.save(ann)
    video = load_davis_video(tmp_path, "camel")
    assert video.void_thw[0].sum() == 8 and video.foreground_thw[0].sum() == 1


def test_evaluation_scores_present_videos_and_lists_missing(davis):
    root, labels = davis
    truth = {name: lab > 0 for name, lab in labels.items()}

    def by_content(frames_thw3):  # a perfect segmenter: recognise the video, return its truth
        for name in truth:
            if np.array_equal(frames_thw3, load_davis_video(root, name).frames_thw3):
                return truth[name]
        raise AssertionError("unknown video")

    report = evaluate_davis_masks(root, by_content)
    assert report.per_video.keys() == {"bmx-trees", "dog"}
    assert report.mean == {"J": 1.0, "F": 1.0, "JF": 1.0}
    assert len(report.missing) == len(DAVIS_2017_VAL) - 2 and "bmx-trees" not in report.missing
    empty = evaluate_davis_masks(root, lambda f: np.zeros(f.shape[:3], bool), videos=["dog"])
    assert empty.per_video["dog"]["J"] == 0.0 and empty.per_video["dog"]["F"] == 0.0
    with pytest.raises(InvalidArgumentError):
        evaluate_davis_masks(root, lambda f: np.zeros((1, 2, 2), bool), videos=["dog"])


def test_missing_folders(tmp_path):
    with pytest.raises(NotFoundError):
        list_davis_videos(tmp_path)
    (tmp_path / "DAVIS" / "JPEGImages").mkdir(parents=True)
    report = evaluate_davis_masks(tmp_path, lambda f: np.zeros(f.shape[:3], bool))
    assert report.per_video == {} and report.missing == list(DAVIS_2017_VAL)
    assert all(math.isnan(v) for v in report.mean.values())
    with pytest.raises(NotFoundError):
        load_davis_video(tmp_path, "dog")
