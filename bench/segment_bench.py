"""Motion segmentation speed at 854x480 on the CPU (flow given); prints a table.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/segment_bench.py [--frames 10] [--repeats 3]

Rows: synthetic scenes (services/synthetic/scene.py) with their exact flow, one per camera
kind, so each model path is timed (moving: fundamental, rotation: homography, static: flow
length); the moving scene again with depth (adds the projective parallax fit) and without
temporal smoothing; and the real DAVIS frames in ../shared/data/davis-frames with DIS flow
(flow time not counted). Times are the median of `repeats` calls of `segment_motion`; J is the
mean IoU against the exact masks (synthetic rows only).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import tyro

from services.evaluation.metrics import mask_j
from services.flow.engine import FlowConfig, compute_flow
from services.segment.engine import SegmentConfig, segment_motion
from services.synthetic.scene import SceneConfig, make_scene

DAVIS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis-frames"


@dataclass
class BenchConfig:
    """What to measure."""

    frames: int = 10
    """Frames per synthetic scene."""
    height: int = 480
    width: int = 854
    repeats: int = 3
    """Timed calls per row."""
    seed: int = 0
    """Seed of the synthetic scenes."""


@dataclass
class Row:
    name: str
    frames: int
    seconds: float
    j: float | None
    moving_share: float
    models: str


def time_row(name, fwd, bwd, cfg, repeats, depth=None, gt_thw=None) -> Row:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = segment_motion(fwd, bwd, cfg, depth_thw=depth)
        seconds.append(time.perf_counter() - started)
    j = None
    if gt_thw is not None:
        j = float(np.mean([mask_j(p, g) for p, g in zip(result.masks_thw, gt_thw, strict=True)]))
    models = ",".join(sorted({s.motion_model for s in result.stats}))
    return Row(
        name,
        len(result.stats),
        statistics.median(seconds),
        j,
        float(result.masks_thw.mean()),
        models,
    )


def main() -> None:
    bench = tyro.cli(BenchConfig)
    cfg = SegmentConfig()
    rows = []
    for camera in ("moving", "rotation", "static"):
        scene = make_scene(
            SceneConfig(
                height=bench.height,
                width=bench.width,
                n_frames=bench.frames,
                camera=camera,
                seed=bench.seed,
                n_tracks=0,
            )
        )
        fwd, bwd, gt = scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, scene.moving_thw
        rows.append(time_row(f"synthetic {camera}", fwd, bwd, cfg, bench.repeats, gt_thw=gt))
        if camera == "moving":
            rows.append(
                time_row(
                    "synthetic moving + depth",
                    fwd,
                    bwd,
                    cfg,
                    bench.repeats,
                    depth=scene.depth_thw,
                    gt_thw=gt,
                )
            )
            rows.append(
                time_row(
                    "synthetic moving, no temporal",
                    fwd,
                    bwd,
                    replace(cfg, temporal_smoothing=False),
                    bench.repeats,
                    gt_thw=gt,
                )
            )
    paths = sorted(DAVIS_DIR.glob("*.jpg"))
    if paths:
        frames_thw3 = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
        flow = compute_flow(frames_thw3, FlowConfig(backend="dis"))
        fwd, bwd = flow.stacked()
        rows.append(time_row("DAVIS frames, DIS flow", fwd, bwd, cfg, bench.repeats))

    print(
        f"segment_motion on CPU, {bench.width}x{bench.height} (DAVIS: 854x480), "
        f"median of {bench.repeats}"
    )
    header = (
        f"{'case':32s} {'frames':>6s} {'seconds':>8s} {'frames/s':>9s} {'J':>6s} "
        f"{'moving':>7s}  models"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        j = "-" if r.j is None else f"{r.j:.3f}"
        print(
            f"{r.name:32s} {r.frames:6d} {r.seconds:8.2f} {r.frames / r.seconds:9.2f} {j:>6s} "
            f"{r.moving_share:7.3f}  {r.models}"
        )


if __name__ == "__main__":
    main()
