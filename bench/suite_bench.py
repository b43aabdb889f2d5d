"""The tracking and pose suite (services/evaluation/fit_suite.py): one row per clip, prior source
and preset, with the naive floor (chained flow + forward-backward occlusion) beside each row.

Run from the project root (after `make setup`):
    .venv/bin/python bench/suite_bench.py                               # 256x192x24, all clips
    .venv/bin/python bench/suite_bench.py --width 96 --height 72 --frames 12 --presets fast \
        --clips orbit pan --jobs 2                                      # a CPU smoke run

Rows run in parallel processes (`--jobs`), each single-threaded on the CPU, so a many-core machine
fills its cores; on a GPU machine use `--device cuda` (the fits then share the GPU).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import tyro

from services.common.config import with_settings
from services.common.describe import package_versions
from services.common.errors import InvalidArgumentError
from services.depth.config import DepthConfig
from services.evaluation.fit_suite import (
    SUITE,
    PriorSource,
    TrackReadout,
    configured_readout,
    load_readout,
    run_clip,
    suite_clip,
)
from services.fit.config import FitConfig, FitRuntime, TrackMotion, preset_with
from services.flow.config import DisPreset, FlowConfig
from services.pipeline.config import PipelineConfig, PipelineRuntime, with_best_tracks
from services.segment.config import SegmentConfig

T = TypeVar("T")


@dataclass
class SuiteBench:
    """What to run."""

    width: int = 256
    height: int = 192
    frames: int = 24
    clips: tuple[str, ...] = tuple(c.name for c in SUITE)
    """Clips of the suite to run (names from services/evaluation/fit_suite.py)."""
    sources: tuple[PriorSource, ...] = ("exact", "pipeline")
    """exact: the scene's own priors; pipeline: DIS flow, offline depth and segmentation."""
    presets: tuple[str, ...] = ("default", "fast")
    tracks: int = 128
    """Ground-truth tracks per clip (queries at each track's first visible frame)."""
    dis_preset: DisPreset = FlowConfig().dis_preset
    """The flow stage's DIS preset for the pipeline rows (docs/flow.md, "DIS presets")."""
    seed: int = 0
    """The fit's seed (every random choice of the fit; the clips stay the same)."""
    set: tuple[str, ...] = ()
    """FitConfig fields to change in every preset, as name=value (e.g. keep_adam_state=true), to
    measure a change before it is made; the rows record them."""
    flow_set: tuple[str, ...] = ()
    """FlowConfig fields to change for the pipeline rows, as name=value (e.g. dis_polish=true);
    the rows record them."""
    depth_set: tuple[str, ...] = ()
    """DepthConfig fields to change for the pipeline rows, as name=value (e.g.
    offline_bundle_adjust=true); the rows record them."""
    segment_set: tuple[str, ...] = ()
    """SegmentConfig fields to change for the pipeline rows, as name=value (e.g.
    measured_depth_only=true); the rows record them."""
    two_pass_depth: bool = PipelineConfig().two_pass_depth
    """The pipeline rows run depth a second time with the segment masks (the pipeline's
    --pipeline.two-pass-depth, on by default; --no-two-pass-depth: once); the rows record it."""
    best_tracks: bool = False
    """Every opt-in of `gflow run --best-tracks` (`with_best_tracks`,
    services/pipeline/config.py) on top of the settings above: the pipeline rows' stages and
    every row's fit; the rows record it."""
    device: Literal["cpu", "cuda"] = "cpu"
    jobs: int = 1
    """Rows fitted at once, each in its own process."""
    json_out: Path | None = None
    """Also write the rows as JSON here."""
    other_tracks: Path | None = None
    """A tracks.py of another version of services/fit (e.g. from `git archive`): each row also
    scores its tracks on the same fit (its configured_tracks with the row's config and priors, or
    in versions without one its track_2d; other_aj, other_delta_avg, other_oa; a column "other
    AJ"), so a change of the track readout is measured apart from the fit's run-to-run
    differences on a GPU."""
    other_motion: TrackMotion | None = None
    """Score each row's fit also with this `track_motion` (other_aj, ... as --other-tracks): the
    track readout's motion measured on the same fits."""


def second_readout(bench: SuiteBench) -> TrackReadout | None:
    """The second readout --other-tracks or --other-motion asks for (not both), if any."""
    if bench.other_tracks is not None and bench.other_motion is not None:
        raise InvalidArgumentError(
            "other_motion", "give --other-tracks or --other-motion, not both"
        )
    if bench.other_tracks is not None:
        return load_readout(bench.other_tracks)
    if bench.other_motion is not None:
        return configured_readout(bench.other_motion)
    return None


def pipeline_config(bench: SuiteBench, runtime: PipelineRuntime, fit: FitConfig) -> PipelineConfig:
    """The rows' stages: the defaults with --dis-preset, --flow-set, --depth-set, --segment-set
    and --two-pass-depth (the pipeline rows'), `fit` (every row's), then --best-tracks."""
    config = PipelineConfig(
        flow=with_settings(FlowConfig(dis_preset=bench.dis_preset), bench.flow_set, "flow_set"),
        depth=with_settings(DepthConfig(), bench.depth_set, "depth_set"),
        segment=with_settings(SegmentConfig(), bench.segment_set, "segment_set"),
        fit=fit,
        runtime=runtime,
        two_pass_depth=bench.two_pass_depth,
    )
    return with_best_tracks(config) if bench.best_tracks else config


def _row(job: tuple[SuiteBench, str, str, str]) -> dict:
    bench, clip, source, preset_name = job
    if bench.device == "cpu":
        import torch

        torch.set_num_threads(1)
    runtime = PipelineRuntime(fit=FitRuntime(device=bench.device))
    pipeline = pipeline_config(bench, runtime, preset_with(preset_name, bench.set, bench.seed))
    row = run_clip(
        suite_clip(clip),
        source,
        pipeline.fit_config(),
        width=bench.width,
        height=bench.height,
        n_frames=bench.frames,
        n_tracks=bench.tracks,
        pipeline=pipeline,
        other_readout=second_readout(bench),
    )
    row.update(
        preset=preset_name,
        dis_preset=bench.dis_preset,
        seed=bench.seed,
        settings=list(bench.set),
        flow_settings=list(bench.flow_set),
        depth_settings=list(bench.depth_set),
        segment_settings=list(bench.segment_set),
        two_pass_depth=bench.two_pass_depth,
        best_tracks=bench.best_tracks,
        # CPU figures move with library versions and OpenBLAS's kernels (docs/fit.md)
        versions=package_versions(),
        openblas_env={k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
    )
    return row


def map_jobs(row: Callable[[T], dict], jobs: list[T], n_processes: int) -> list[dict]:
    """`row` of every job, in order: in `n_processes` parallel processes (OpenMP at one thread
    each, the cores being theirs) when more than one, else here."""
    if n_processes <= 1:
        return [row(job) for job in jobs]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(n_processes) as pool:
        return list(pool.map(row, jobs))


def _pct(value: float) -> str:
    return "—" if value != value else f"{100 * value:.2f} %"


def table(rows: list[dict]) -> str:
    """Markdown: one row per fit, then the floor beside it."""
    header = (
        "clip",
        "priors",
        "preset",
        "AJ",
        "δavg",
        "OA",
        "floor AJ",
        "floor δavg",
        "floor OA",
        "ATE / path",
        "ATE / depth",
        "RPE rot °",
        "depth abs-rel",
        "mask J",
        "PSNR dB",
    )
    other = any("other_aj" in r for r in rows)
    header += ("other AJ", "other δavg", "other OA") if other else ()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (
            r["clip"],
            r["source"],
            r["preset"],
            f"{r['aj']:.3f}",
            f"{r['delta_avg']:.3f}",
            f"{r['oa']:.3f}",
            f"{r['naive_aj']:.3f}",
            f"{r['naive_delta_avg']:.3f}",
            f"{r['naive_oa']:.3f}",
            _pct(r["ate_share"]),
            _pct(r["ate_depths"]),
            f"{r['rpe_rot_deg']:.3f}",
            f"{r['depth_abs_rel']:.3f}",
            f"{r['mask_j']:.3f}",
            f"{r['psnr']:.1f}",
        )
        if other:
            cells += tuple(
                f"{r.get(k, float('nan')):.3f}" for k in ("other_aj", "other_delta_avg", "other_oa")
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    bench = tyro.cli(SuiteBench)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # A wrong --set, --flow-set, --depth-set or --segment-set fails here, before any fit.
    for name in bench.presets:
        pipeline_config(bench, PipelineRuntime(), preset_with(name, bench.set, bench.seed))
    second_readout(bench)  # and a wrong --other-tracks or --other-motion
    jobs = [
        (bench, clip, source, name)
        for clip in bench.clips
        for source in bench.sources
        for name in bench.presets
    ]
    rows = map_jobs(_row, jobs, bench.jobs)
    print(f"suite at {bench.width}x{bench.height}x{bench.frames}, {bench.tracks} tracks per clip")
    if bench.set:
        print(f"every preset with {' '.join(bench.set)}")
    if bench.depth_set:
        print(f"the pipeline's depth stage with {' '.join(bench.depth_set)}")
    if bench.segment_set:
        print(f"the pipeline's segment stage with {' '.join(bench.segment_set)}")
    print(table(rows))
    if bench.json_out is not None:
        bench.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
