"""Synthetic scene generator: run time and ground-truth self-consistency; prints a table.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/synth_bench.py [--no-large] [--repeats 5]

Rows: 64x48x8 clips for each camera (2 moving objects, one non-rigid; the unit-test size) and,
unless --no-large, an 854x480x50 clip (3 moving objects, one non-rigid; the benchmark size).
Columns: generation time (median and best of `repeats` for the small clips, one run for the large
one), peak memory of the arrays, the warp error of frame t by the ground-truth backward flow
against frame t+1 on visible pixels (mean / median / 95th percentile, 8-bit levels) beside the
no-flow baseline, the reprojection error of depth + poses against the flow on static pixels
(max, pixels), the share of pixels visible in the next frame, and median object / background
motion per frame in pixels.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import tyro

from services.evaluation.synth_check import consistency_figures
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene


@dataclass
class BenchConfig:
    """What to measure."""

    large: bool = True
    """Include the 854x480x50 clip (about half a minute on two shared cores)."""
    repeats: int = 5
    """Timed runs of each small clip."""
    seed: int = 0
    """Scene seed."""


def timed(cfg: SceneConfig, repeats: int) -> tuple[SyntheticScene, list[float]]:
    times, scene = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        scene = make_scene(cfg)
        times.append(time.perf_counter() - start)
    return scene, times


def main() -> None:
    bench = tyro.cli(BenchConfig)
    rows = [
        (SceneConfig(camera=c, n_objects=2, nonrigid=True, seed=bench.seed), bench.repeats)
        for c in ("moving", "rotation", "static")
    ]
    if bench.large:
        big = SceneConfig(
            height=480, width=854, n_frames=50, n_objects=3, nonrigid=True, seed=bench.seed
        )
        rows.append((big, 1))
    header = (
        f"{'size':>10} {'camera':>8} {'time s (med/best)':>18} {'MB':>6} "
        f"{'warp mean/med/p95':>18} {'no-flow':>8} {'reproj max px':>13} {'visible':>8} "
        f"{'obj/bg px/frame':>16}"
    )
    print(header)
    print("-" * len(header))
    for cfg, repeats in rows:
        scene, times = timed(cfg, repeats)
        fig = consistency_figures(scene)
        megabytes = sum(v.nbytes for v in scene.__dict__.values() if hasattr(v, "nbytes")) / 2**20
        size = f"{cfg.width}x{cfg.height}x{cfg.n_frames}"
        print(
            f"{size:>10} {cfg.camera:>8} "
            f"{statistics.median(times):>9.3f}/{min(times):<8.3f} {megabytes:>6.1f} "
            f"{fig.warp_err_mean:>6.2f}/{fig.warp_err_median:.2f}/{fig.warp_err_p95:<5.2f} "
            f"{fig.still_err_mean:>8.2f} {fig.reproj_err_max_px:>13.2e} {fig.valid_fraction:>8.3f} "
            f"{fig.object_speed_median_px:>7.2f}/{fig.camera_speed_median_px:<8.2f}"
        )


if __name__ == "__main__":
    main()
