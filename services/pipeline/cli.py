"""The pipeline's commands of `gflow`: run, report, view (the entry point and the subcommand
table are services/cli.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tyro
import yaml

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.config import from_dict, to_json
from services.common.errors import InvalidArgumentError
from services.common.store import S3Settings, StoreConfig, open_store
from services.pipeline.config import (
    FitPresetName,
    PipelineConfig,
    RemoteConfig,
    with_command_options,
)
from services.pipeline.engine import put_queries, run_pipeline
from services.pipeline.export import export_run, load_run
from services.pipeline.ingest import ingest
from services.pipeline.progress import console, stage_progress
from services.pipeline.report import render_report_html, run_verdict
from services.pipeline.viewer import ViewCommand, serve_viewer, stored_pipeline_result

log = logging.getLogger(__name__)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass
class RunCommand:
    """Reconstruct a video: ingest, flow, depth, segment, fit; write outputs and a report."""

    # An mp4 (or other video file) or a folder of frames.
    video: tyro.conf.Positional[Path]
    # Where outputs and the report go.
    out: Path = Path("gflow-out")
    # Object store URL; empty = a folder `store` inside --out.
    store: str = ""
    # Endpoints file written by `gflow serve`: run every stage on those services and their store.
    remote_config: Path | None = None
    # Start the fit from a named preset (default = the original's settings, fast, test);
    # --pipeline.fit.* flags that change a field from its default apply on top of it.
    fit_preset: FitPresetName | None = None
    # The defaults' tracking settings (the flow's polish, depth twice with the segment masks
    # and bundle adjustment, the fit keeping those cameras, occlusion read with the frames, the
    # flow and the flow chained from the query), whatever --pipeline.* flags turned off, with
    # Adam's moments kept across frames (higher PSNR on the accuracy suite) and three rounds of
    # the flow's polish on smaller windows (higher AJ through the pipeline), though some of its
    # other figures drop (docs/fit.md, "Adam's first steps from fresh moments"; docs/flow.md,
    # "Polish rounds and windows").
    best_tracks: bool = False
    # Points to track instead of the --track-grid grid: a CSV (optional header line) or .npy
    # file of rows t,x,y in the frames and pixels of the ingested video (fit/tracks_*.npy).
    queries: Path | None = None
    # What every stage computes (--pipeline.<stage>.*), how the stages that run here compute
    # (--pipeline.runtime.*: device, memory budgets, renderer), and the grid the fit tracks.
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # Log messages of this level and above are shown.
    log_level: LogLevel = "INFO"


@dataclass
class ReportCommand:
    """Render the HTML report of a finished run folder again (e.g. after an upgrade)."""

    # The folder a `gflow run` wrote (its --out).
    run_dir: tyro.conf.Positional[Path]


def _store_and_remote(command: RunCommand) -> tuple[StoreConfig, RemoteConfig]:
    if command.remote_config is None:
        return StoreConfig(url=command.store or (command.out / "store").resolve().as_uri()), (
            command.pipeline.remote
        )
    endpoints = yaml.safe_load(command.remote_config.read_text())
    # The file's keys win; flags give the rest (e.g. --pipeline.remote.retry-attempts).
    flags = json.loads(to_json(command.pipeline.remote))
    remote = from_dict(RemoteConfig, flags | endpoints["remote"], "remote_config.remote")
    return _endpoints_store(endpoints), remote


def _endpoints_store(endpoints: dict) -> StoreConfig:
    """The object store named in an endpoints file (`gflow serve`), keys read from their files."""
    store = endpoints["store"]
    settings = S3Settings(
        endpoint=store["endpoint"],
        access_key=Path(store["access_key_file"]).read_text().strip(),
        secret_key=Path(store["secret_key_file"]).read_text().strip(),
    )
    return StoreConfig(url=store["url"], s3=settings)


def read_queries(path: Path, video: common_pb2.VideoRef) -> np.ndarray:
    """Query rows t,x,y of a CSV or .npy file as the fit's float32 (t, y, x) rows, checked
    against the ingested video (frames 0..T-1, pixels of its working size)."""
    if path.suffix == ".npy":
        rows = np.load(path, allow_pickle=False)
    else:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        header = 1 if lines and any(c.isalpha() for c in lines[0]) else 0
        rows = np.loadtxt(lines[header:], delimiter=",", ndmin=2) if lines[header:] else []
    rows = np.asarray(rows, np.float64)
    if rows.size == 0:
        rows = rows.reshape(0, 3)  # no queries: empty tracks
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise InvalidArgumentError("queries", f"{path}: need rows t,x,y; got shape {rows.shape}")
    t_q, x_q, y_q = rows.T
    T, H, W = video.frame_count, video.height, video.width
    inside = (t_q == np.round(t_q)) & (t_q >= 0) & (t_q < T)
    inside &= (x_q >= 0) & (x_q <= W - 1) & (y_q >= 0) & (y_q <= H - 1)
    if not inside.all():
        bad = int(np.flatnonzero(~inside)[0])
        raise InvalidArgumentError(
            "queries",
            f"{path} row {bad} {rows[bad].tolist()}: t must be a frame 0..{T - 1} and x, y "
            f"pixels of the ingested {W}x{H} video (see --pipeline.ingest.max-side)",
        )
    return rows[:, [0, 2, 1]].astype(np.float32)


def run_config(command: RunCommand, remote: RemoteConfig) -> PipelineConfig:
    """What the run computes: the --pipeline.* flags, where each stage runs, the fit preset and
    then --best-tracks."""
    config = dataclasses.replace(command.pipeline, remote=remote)
    return with_command_options(config, command.fit_preset, command.best_tracks)


def run_command(command: RunCommand) -> Path:
    """Run the pipeline and export its outputs; returns the report's path."""
    store_config, remote = _store_and_remote(command)
    config = run_config(command, remote)
    artifacts = Artifacts(open_store(store_config))
    started = time.monotonic()
    with stage_progress() as progress:
        video = ingest(artifacts, command.video, config.ingest)
        queries = None
        if command.queries is not None:
            queries = put_queries(artifacts, read_queries(command.queries, video))
        result = run_pipeline(artifacts, video, config, progress, track_queries=queries)
    report = export_run(artifacts, result, command.out, store_config)
    log.info("finished in %.1f s", time.monotonic() - started)
    # Verdicts never change the exit status: the run ran; they say whether to trust its output.
    verdict = run_verdict(artifacts, result)
    colour = {"pass": "green", "warn": "yellow", "fail": "red"}[verdict.level]
    for line in verdict.lines():
        console.print(line, style=colour, markup=False, highlight=False, soft_wrap=True)
    return report


def report_command(command: ReportCommand) -> Path:
    store_config, result = load_run(command.run_dir)
    page = render_report_html(Artifacts(open_store(store_config)), result)
    path = command.run_dir / "report.html"
    path.write_text(page)
    return path


def view_command(command: ViewCommand) -> None:
    """A run folder, or with --remote-config a report key in that store, in the 4D viewer."""
    if command.remote_config is None:
        store_config, result = load_run(Path(command.run))
        artifacts = Artifacts(open_store(store_config))
    else:
        endpoints = yaml.safe_load(command.remote_config.read_text())
        artifacts = Artifacts(open_store(_endpoints_store(endpoints)))
        result = stored_pipeline_result(artifacts, command.run)
    serve_viewer(artifacts, result, command)
