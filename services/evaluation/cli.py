"""`gflow eval tapvid|davis`: the pipeline scored on TAP-Vid tracks or DAVIS masks.

Its own command line (`python -m services.evaluation.cli`, which `gflow eval` runs as a child
process), so that no module outside evaluation imports it.

Both evaluate the videos that are present and name the missing ones (users of the original had
incomplete downloads and got a crash). `tapvid` also scores a user's own clips stored in the
TAP-Vid layout; then no DAVIS video is expected.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from gflow.v1 import flow_pb2, segment_pb2
from services.common.artifacts import Artifacts
from services.common.config import to_json
from services.common.store import open_store
from services.common.video import store_frames
from services.evaluation.davis import evaluate_davis_masks
from services.evaluation.tapvid import evaluate_tapvid, load_tapvid_davis
from services.pipeline.config import FitPresetName, PipelineConfig, with_command_options
from services.pipeline.engine import PipelineProgress, call_stage, put_queries, run_pipeline
from services.pipeline.ingest import IngestConfig, prepare_frames
from services.pipeline.progress import run_subcommand, stage_progress

log = logging.getLogger(__name__)


@dataclass
class TapvidEval:
    """TAP-Vid: fit each video, track the benchmark's query points, score AJ/delta/OA."""

    # tapvid_davis.pkl, a folder of per-video pickles, or a pickle of your own clips in the
    # same layout (video name -> {'video', 'points', 'occluded'}).
    data: Path
    # Queries at each track's first visible point, or at every 5th frame where it is visible.
    query_mode: Literal["first", "strided"] = "first"


@dataclass
class DavisEval:
    """DAVIS 2017: moving-object masks (flow + segment stages) scored with J and F."""

    # The DAVIS folder (with JPEGImages/480p and Annotations/480p).
    data: Path
    # Videos to evaluate; empty = the DAVIS 2017 validation set.
    videos: list[str] = field(default_factory=list)


@dataclass
class EvalCommand:
    """Score the pipeline on a benchmark that is on disk (nothing is downloaded)."""

    benchmark: (
        Annotated[TapvidEval, tyro.conf.subcommand("tapvid")]
        | Annotated[DavisEval, tyro.conf.subcommand("davis")]
    )
    # Object store for the runs (cached: a repeated evaluation reuses every stage).
    store: str = "file://./gflow-eval-store"
    # Where the JSON report goes.
    out: Path = Path("gflow-eval.json")
    # Start the fit from a named preset (as `gflow run --fit-preset`); --pipeline.fit.* flags
    # that change a field from its default apply on top of it.
    fit_preset: FitPresetName | None = None
    # The defaults' tracking settings, Adam's kept moments and three rounds of the flow's polish
    # on smaller windows (as `gflow run --best-tracks`).
    best_tracks: bool = False
    # How every stage computes (the same flags as `gflow run`).
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def _frames_as_is(video_thw3: np.ndarray) -> np.ndarray:
    """Benchmark frames at their stored size, so query and ground-truth pixels stay valid."""
    return prepare_frames(list(video_thw3), IngestConfig(max_side=0))


def tapvid_tracker(artifacts: Artifacts, config: PipelineConfig, progress: PipelineProgress):
    """A TAP-Vid tracker made of the whole pipeline: fit, then follow each query's Gaussian;
    `progress` sees every stage event of every video."""

    def track(video_thw3: np.ndarray, queries_txy_q3: np.ndarray):
        video = store_frames(artifacts, _frames_as_is(video_thw3), fps=10.0)
        queries = put_queries(artifacts, queries_txy_q3[:, [0, 2, 1]])
        result = run_pipeline(artifacts, video, config, progress, track_queries=queries)
        names = {a.name: a.ref for a in result.fit.artifacts}
        points = artifacts.get_array(names["tracks_2d"], field="fit.tracks_2d")
        occluded = artifacts.get_array(names["tracks_occluded"], field="fit.tracks_occluded")
        return points, occluded

    return track


def davis_segmenter(artifacts: Artifacts, config: PipelineConfig, progress: PipelineProgress):
    """A DAVIS segmenter made of the flow and segment stages (the fit is not needed), run where
    `config.remote` puts them, as the pipeline runs them; `progress` sees their events."""

    def run(stage: str, request):
        stage_events = functools.partial(progress, stage)
        return call_stage(
            artifacts, stage, request, config.remote, stage_events, None, config.runtime
        )

    def segment(frames_thw3: np.ndarray) -> np.ndarray:
        video = store_frames(artifacts, _frames_as_is(frames_thw3), fps=24.0)
        flow = run(
            "flow", flow_pb2.ComputeFlowRequest(video=video, config_json=to_json(config.flow))
        )
        masks = run(
            "segment",
            segment_pb2.SegmentMotionRequest(
                video=video, flow=flow, config_json=to_json(config.segment)
            ),
        )
        ref = next(a.ref for a in masks.artifacts if a.name == "masks")
        return artifacts.get_array(ref, layout="THW", field="segment.masks")

    return segment


def _video_lines(done: int, total: int, message: str) -> None:
    """An evaluation's progress over its videos: one log line each (beside the stages' bars)."""
    log.info("video %d/%d: %s", done, total, message)


def run_eval(command: EvalCommand) -> dict:
    """Evaluate, write the JSON report to --out, and return it."""
    artifacts = Artifacts(open_store(command.store))
    config = with_command_options(command.pipeline, command.fit_preset, command.best_tracks)
    benchmark = command.benchmark
    if isinstance(benchmark, TapvidEval):
        data = load_tapvid_davis(benchmark.data)
        with stage_progress() as progress:
            tracker = tapvid_tracker(artifacts, config, progress)
            report = evaluate_tapvid(data, tracker, benchmark.query_mode, _video_lines)
        summary = {
            "benchmark": "tapvid",
            "query_mode": report.query_mode,
            "mean": report.mean,
            "per_video": report.per_video,
            "missing": report.missing,
            "unreadable": data.unreadable,
        }
    else:
        kwargs = {"videos": benchmark.videos} if benchmark.videos else {}
        with stage_progress() as progress:
            segmenter = davis_segmenter(artifacts, config, progress)
            report = evaluate_davis_masks(
                benchmark.data, segmenter, progress=_video_lines, **kwargs
            )
        summary = {
            "benchmark": "davis",
            "mean": report.mean,
            "per_video": report.per_video,
            "missing": report.missing,
        }
    if summary["missing"]:
        log.warning("not evaluated (missing): %s", ", ".join(summary["missing"]))
    command.out.write_text(json.dumps(summary, indent=1, sort_keys=True, default=float))
    return summary


def main(args: list[str] | None = None) -> None:
    """`gflow eval`'s entry point; `args` replace sys.argv[1:] (tests)."""
    command = tyro.cli(
        EvalCommand,
        prog="gflow eval",
        args=args,
        config=(tyro.conf.OmitSubcommandPrefixes, tyro.conf.CascadeSubcommandArgs),
    )
    run_subcommand(command, {EvalCommand: run_eval})


if __name__ == "__main__":
    main()
