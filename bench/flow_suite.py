"""Flow accuracy per DIS preset, without and with the polish, on the accuracy suite's clips
(services/evaluation/fit_suite.py): mean end-point error against the scene's exact flow (all
pixels, and the moving objects' alone), how far the flow falls short of the objects' motion (mean
signed error along it, px per frame), and the AJ of the floor tracker (chained flow from each
query, services/fit/flow_tracks.py) on that flow, beside its AJ on the exact flow. Speed
is bench/flow_bench.py's job.

    .venv/bin/python bench/flow_suite.py                                  # 256x192x24
    .venv/bin/python bench/flow_suite.py --width 96 --height 72 --frames 12
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.evaluation import metrics  # noqa: E402
from services.evaluation.fit_suite import SUITE, floor_row  # noqa: E402
from services.flow.config import FlowConfig  # noqa: E402
from services.flow.engine import compute_flow  # noqa: E402
from services.synthetic.scene import make_scene  # noqa: E402


@dataclass
class FlowSuite:
    """Which clips, at which size, with which DIS presets."""

    width: int = 256
    height: int = 192
    frames: int = 24
    presets: tuple[str, ...] = ("medium", "fine")
    polish_rounds: tuple[int, ...] = (0, 1, 3)
    """Each preset with these rounds of `dis_polish` (services/flow/polish.py; 0: without)."""
    tracks: int = 128


def main(bench: FlowSuite) -> None:
    image_hw = (bench.height, bench.width)
    print(f"DIS on the suite's clips, {bench.width}x{bench.height}x{bench.frames}")
    print(
        "clip | preset | polish rounds | EPE fwd px | EPE moving | bias moving | floor AJ "
        "| exact flow's"
    )
    for clip in SUITE:
        scene = make_scene(clip.scene_config(bench.width, bench.height, bench.frames, bench.tracks))
        queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
        exact = floor_row(queries, scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, image_hw)["aj"]
        for preset, rounds in itertools.product(bench.presets, bench.polish_rounds):
            config = FlowConfig(
                dis_preset=preset, dis_polish=rounds > 0, dis_polish_rounds=max(rounds, 1)
            )
            flow = compute_flow(scene.frames_thw3, config)
            fwd_t1hw2, bwd_t1hw2 = flow.stacked()
            epe = metrics.flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2)
            moving_thw = scene.moving_thw[:-1]
            epe_moving = metrics.flow_epe(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw)
            bias = metrics.flow_speed_bias(fwd_t1hw2, scene.flow_fwd_t1hw2, moving_thw)
            aj = floor_row(queries, fwd_t1hw2, bwd_t1hw2, image_hw)["aj"]
            print(
                f"{clip.name} | {preset} | {rounds} | {epe:.3f} | {epe_moving:.3f} | {bias:+.3f} "
                f"| {aj:.3f} | {exact:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main(tyro.cli(FlowSuite))
