"""Depth engine benchmark: the offline backend's speed and peak memory on the CPU, and the
MASt3R memory planner's choices for common GPU budgets, printed as two tables.

    .venv/bin/python bench/depth_bench.py                       # 854 x 480, 16 frames
    .venv/bin/python bench/depth_bench.py --long-sides 512 854  # also at full resolution

Frames come from a synthetic moving-camera scene (services.synthetic.scene) at the asked size,
so the table also gives the abs-rel of that run after one median scale for the whole clip. The
flow the offline backend triangulates from is computed first, as the pipeline's flow stage
computes it (DIS at the frames' size); its seconds are a column of their own. Each offline case
runs in a fresh process, so its CPU peak (growth of the resident set at its
high-water mark, services.flow.memory) is not hidden by memory an earlier case freed. The
planner's figures are its estimates (services.depth.planner.CostModel), not measurements.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.common.errors import ResourceExhaustedError  # noqa: E402
from services.depth.config import needed_stride  # noqa: E402
from services.depth.engine import DepthConfig, estimate_depth  # noqa: E402
from services.depth.flows import from_flow_result  # noqa: E402
from services.depth.planner import CostModel, plan_memory  # noqa: E402
from services.evaluation.metrics import depth_metrics  # noqa: E402
from services.flow.engine import FlowConfig, compute_flow  # noqa: E402
from services.flow.memory import PeakMemory  # noqa: E402
from services.synthetic.scene import SceneConfig, make_scene  # noqa: E402


@dataclass
class BenchConfig:
    height: int = 480
    width: int = 854
    n_frames: int = 16
    """Frames of the synthetic clip the offline backend runs on."""
    long_sides: tuple[int, ...] = (512,)
    """offline_long_side values to time (the working resolution's long side)."""
    budgets_gb: tuple[float, ...] = (6.0, 8.0, 12.0, 24.0)
    """GPU budgets the planner is asked about."""
    video_frames: int = 300
    """Video length the planner plans for (it sets the number of windows)."""


def _offline_case(frames_thw3, depth_thw, long_side: int) -> dict:
    depth_cfg = DepthConfig(offline_long_side=long_side)
    started = time.perf_counter()
    stride = needed_stride(depth_cfg.flow_stride, len(frames_thw3))
    flow = from_flow_result(compute_flow(frames_thw3, FlowConfig(extra_stride=stride)))
    flow_seconds = time.perf_counter() - started
    meter = PeakMemory("cpu")
    meter.start()
    started = time.perf_counter()
    result = estimate_depth(frames_thw3, depth_cfg, flow=flow)
    seconds = time.perf_counter() - started
    return {
        "flow_seconds": flow_seconds,
        "seconds": seconds,
        "peak_mib": meter.stop() / 2**20,
        "memory_kind": meter.kind,
        "work_hw": result.work_hw,
        "abs_rel": depth_metrics(result.depth_thw, depth_thw)["abs_rel"],
        "artefact": result.quality.periodic_artefact,
        "prior_share": result.quality.prior_share,
    }


def main(cfg: BenchConfig) -> None:
    scene = make_scene(SceneConfig(height=cfg.height, width=cfg.width, n_frames=cfg.n_frames))
    context = multiprocessing.get_context("spawn")
    print(f"offline backend, CPU, {cfg.width}x{cfg.height}, {cfg.n_frames} synthetic frames")
    print(
        "| long side | work (w x h) | flow s | depth s | frames/s | peak MiB | abs-rel "
        "| artefact | prior |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for long_side in cfg.long_sides:
        with context.Pool(1) as pool:
            row = pool.apply(_offline_case, (scene.frames_thw3, scene.depth_thw, long_side))
        h, w = row["work_hw"]
        print(
            f"| {long_side} | {w} x {h} | {row['flow_seconds']:.1f} | {row['seconds']:.1f} | "
            f"{cfg.n_frames / row['seconds']:.2f} | {row['peak_mib']:.0f} | "
            f"{row['abs_rel']:.3f} | "
            f"{'—' if row['artefact'] is None else format(row['artefact'], '.2f')} | "
            f"{row['prior_share']:.2f} |"
        )
    print(f"(peak: {row['memory_kind']})\n")
    usable = CostModel().usable_fraction
    print(
        f"MASt3R memory plan at {cfg.width}x{cfg.height}, {cfg.video_frames}-frame video "
        f"(estimates; plans fill {usable:.0%} of the budget)"
    )
    print("| budget GB | work (w x h) | window | overlap | windows | est. GiB | uncapped window |")
    print("|---|---|---|---|---|---|---|")
    for gb in cfg.budgets_gb:
        budget = int(gb * 2**30)
        try:
            plan = plan_memory(cfg.height, cfg.width, cfg.video_frames, budget)
            free = plan_memory(cfg.height, cfg.width, cfg.video_frames, budget, max_window=10**4)
        except ResourceExhaustedError as exc:
            print(f"| {gb:g} | refused: {exc} | | | | | |")
            continue
        h, w = plan.work_hw
        print(
            f"| {gb:g} | {w} x {h} | {plan.window} | {plan.overlap} | {plan.n_windows} | "
            f"{plan.estimated_peak_bytes / 2**30:.2f} | {free.window} frames |"
        )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
