"""The `gflow` command line: run, serve, synth, eval, report, demo."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from services.common.artifacts import Artifacts
from services.common.config import from_dict, to_json
from services.common.errors import GFlowError
from services.common.logs import setup_logging
from services.common.media import write_mp4
from services.common.store import S3Settings, StoreConfig, open_store
from services.fit.config import preset
from services.pipeline.config import PipelineConfig, RemoteConfig
from services.pipeline.engine import STAGES, run_pipeline
from services.pipeline.export import export_run, load_run
from services.pipeline.ingest import ingest
from services.pipeline.local_services import ServeCommand, start_local_services
from services.pipeline.report import render_report_html

log = logging.getLogger(__name__)
console = Console(stderr=True)


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
    # Start the fit from a named preset (default = the original's settings, fast, test); it
    # replaces every --pipeline.fit.* flag.
    fit_preset: Literal["default", "fast", "test"] | None = None
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    log_level: str = "INFO"


@dataclass
class ReportCommand:
    """Render the HTML report of a finished run folder again (e.g. after an upgrade)."""

    run_dir: tyro.conf.Positional[Path]


@dataclass
class DemoCommand:
    """Generate a small synthetic clip and run the whole embedded pipeline on it (CPU-friendly)."""

    out: Path = Path("gflow-demo")
    height: int = 96
    width: int = 128
    n_frames: int = 10
    seed: int = 0


def _store_and_remote(command: RunCommand) -> tuple[StoreConfig, RemoteConfig]:
    if command.remote_config is None:
        return StoreConfig(url=command.store or (command.out / "store").resolve().as_uri()), (
            command.pipeline.remote
        )
    endpoints = yaml.safe_load(command.remote_config.read_text())
    # The file's keys win; flags give the rest (e.g. --pipeline.remote.retry-attempts).
    flags = json.loads(to_json(command.pipeline.remote))
    remote = from_dict(RemoteConfig, flags | endpoints["remote"], "remote_config.remote")
    store = endpoints["store"]
    settings = S3Settings(
        endpoint=store["endpoint"],
        access_key=Path(store["access_key_file"]).read_text().strip(),
        secret_key=Path(store["secret_key_file"]).read_text().strip(),
    )
    return StoreConfig(url=store["url"], s3=settings), remote


class StageBars:
    """One rich progress bar per stage, fed by the pipeline's progress callback."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks = {s: progress.add_task(s, total=None) for s in [*STAGES, "report"]}

    def __call__(self, stage: str, done: int, total: int, message: str) -> None:
        task = self.tasks.get(stage)
        if task is not None:
            self.progress.update(
                task, completed=done, total=max(total, 1), description=f"{stage}: {message}"[:60]
            )


def run_command(command: RunCommand) -> Path:
    """Run the pipeline and export its outputs; returns the report's path."""
    store_config, remote = _store_and_remote(command)
    config = dataclasses.replace(command.pipeline, remote=remote)
    if command.fit_preset is not None:
        config = dataclasses.replace(config, fit=preset(command.fit_preset))
    artifacts = Artifacts(open_store(store_config))
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        video = ingest(artifacts, command.video, config.ingest)
        result = run_pipeline(artifacts, video, config, StageBars(bars))
    report = export_run(artifacts, result, command.out, store_config)
    log.info("finished in %.1f s", time.monotonic() - started)
    return report


def report_command(command: ReportCommand) -> Path:
    store_config, result = load_run(command.run_dir)
    page = render_report_html(Artifacts(open_store(store_config)), result)
    path = command.run_dir / "report.html"
    path.write_text(page)
    return path


def demo_command(command: DemoCommand) -> Path:
    """Synthetic clip -> mp4 -> the whole embedded pipeline with the fast fit preset."""
    from services.evaluation.synth import SceneConfig, make_scene

    command.out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(
        SceneConfig(
            height=command.height, width=command.width, n_frames=command.n_frames, seed=command.seed
        )
    )
    clip = command.out / "clip.mp4"
    clip.write_bytes(write_mp4(scene.frames_thw3, fps=10.0))
    pipeline = PipelineConfig()
    pipeline.ingest.max_side = max(command.height, command.width)
    started = time.monotonic()
    report = run_command(
        RunCommand(video=clip, out=command.out, fit_preset="fast", pipeline=pipeline)
    )
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")
    return report


def serve_command(command: ServeCommand) -> None:
    services = start_local_services(command)
    console.print(f"serving; endpoints in {services.endpoints_file}")
    console.print(f"run a video on them: gflow run VIDEO --remote-config {services.endpoints_file}")
    try:
        while all(p.poll() is None for p in services.processes.values()):
            time.sleep(1)
        failed = [s for s, p in services.processes.items() if p.poll() is not None]
        console.print(f"[red]stopped: {failed} exited; see {command.dir}/logs[/red]")
    except KeyboardInterrupt:
        console.print("draining ...")
    finally:
        services.stop()


def main() -> None:
    from services.evaluation.cli import EvalCommand, run_eval
    from services.evaluation.synth import SynthCommand, run_synth

    command = tyro.cli(
        Annotated[RunCommand, tyro.conf.subcommand("run")]
        | Annotated[ServeCommand, tyro.conf.subcommand("serve")]
        | Annotated[SynthCommand, tyro.conf.subcommand("synth")]
        | Annotated[EvalCommand, tyro.conf.subcommand("eval")]
        | Annotated[ReportCommand, tyro.conf.subcommand("report")]
        | Annotated[DemoCommand, tyro.conf.subcommand("demo")],
        description="GFlow: a 4D world (dynamic 3D Gaussians + cameras) from one monocular video.",
    )
    setup_logging(getattr(command, "log_level", "INFO"))
    handlers = {
        RunCommand: run_command,
        ServeCommand: serve_command,
        SynthCommand: run_synth,
        EvalCommand: run_eval,
        ReportCommand: report_command,
        DemoCommand: demo_command,
    }
    try:
        outcome = handlers[type(command)](command)
    except GFlowError as exc:
        console.print(f"[red]error[/red] ({exc.reason}): {exc}")
        raise SystemExit(2) from exc
    if isinstance(outcome, Path):
        console.print(f"[green]done[/green]: {outcome}")
    elif outcome is not None:
        console.print(json.dumps(outcome, indent=1) if isinstance(outcome, dict) else outcome)
