"""Mask accuracy of the segment stage on the synthetic suite; prints a table per clip.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/segment_suite.py [--height 192] [--width 256] [--frames 10]

Clips: services/evaluation/mask_suite.py (every camera kind, 1-3 objects, a non-rigid one,
objects at and leaving the frame edge, occlusions). For each clip, mean DAVIS J and boundary F of
the unrefined flow masks ("naive") and of the masks refined by the frames, from the default
pipeline's priors (DIS flow, offline depth) and from the scene's exact flow and depth; the worst
clip is named. Then the real DAVIS frames in ../shared/data/davis-frames (no ground truth): the
moving share per frame, naive and refined, through DIS flow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tyro

from services.evaluation.mask_suite import clip_masks, edge_frames, mean_j_and_f, segment_suite
from services.flow.engine import FlowConfig, compute_flow
from services.segment.engine import SegmentConfig, segment_motion
from services.synthetic.scene import make_scene

DAVIS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis-frames"


@dataclass
class BenchConfig:
    """What to measure."""

    height: int = 192
    width: int = 256
    frames: int = 10
    """Frames per clip."""
    davis: bool = True
    """Also report the moving share on the DAVIS frames (854x480, about a minute on 2 cores)."""


def davis_shares() -> tuple[list[float], list[float], float]:
    """Moving share per frame on the DAVIS frames (naive, refined); seconds of the refined call."""
    paths = sorted(DAVIS_DIR.glob("*.jpg"))
    frames_thw3 = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    flow = compute_flow(frames_thw3, FlowConfig())
    fwd, bwd = flow.stacked()
    naive = segment_motion(fwd, bwd, SegmentConfig())
    started = time.perf_counter()
    refined = segment_motion(fwd, bwd, SegmentConfig(), frames_thw3=frames_thw3)
    seconds = time.perf_counter() - started
    return (
        [float(m.mean()) for m in naive.masks_thw],
        [float(m.mean()) for m in refined.masks_thw],
        seconds,
    )


def main() -> None:
    bench = tyro.cli(BenchConfig)
    logging.basicConfig(level=logging.WARNING)
    header = (
        f"{'clip':38s} {'edge':>4s} | {'DIS+offline depth':^27s} | {'exact flow+depth':^27s}\n"
        f"{'':38s} {'':>4s} | {'naive J':>7s} {'F':>5s} {'refined J':>9s} {'F':>4s}"
        f" | {'naive J':>7s} {'F':>5s} {'refined J':>9s} {'F':>4s}"
    )
    print(
        f"segment stage on the synthetic suite, {bench.width}x{bench.height}, {bench.frames} frames"
    )
    print(header)
    print("-" * 106)
    worst = None
    for clip in segment_suite(bench.height, bench.width, bench.frames):
        scene = make_scene(clip.scene)
        cells = []
        for source in ("pipeline", "exact"):
            masks = clip_masks(scene, source)
            naive_jf = mean_j_and_f(masks.naive_thw, masks.gt_thw)
            refined_jf = mean_j_and_f(masks.refined_thw, masks.gt_thw)
            cells.append(
                f"{naive_jf[0]:7.3f} {naive_jf[1]:5.3f} {refined_jf[0]:9.3f} {refined_jf[1]:4.3f}"
            )
            if source == "pipeline" and (worst is None or refined_jf[0] < worst[1]):
                worst = (clip.name, *refined_jf)
        print(f"{clip.name:38s} {edge_frames(scene.moving_thw):4d} | {cells[0]} | {cells[1]}")
    print(
        f"worst clip through DIS flow (refined J): {worst[0]}: J {worst[1]:.3f}, F {worst[2]:.3f}"
    )
    if bench.davis and DAVIS_DIR.is_dir():
        naive, refined, seconds = davis_shares()
        print(
            "DAVIS frames 854x480, DIS flow, moving share per frame: naive "
            + ", ".join(f"{s:.3f}" for s in naive)
            + "; refined "
            + ", ".join(f"{s:.3f}" for s in refined)
            + f" (segment + refine {seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
