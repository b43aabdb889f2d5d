"""The `gflow` command line: run, serve, lab, synth, eval, report, demo, view.

The application root: it only joins the packages' commands (pipeline, ops, evaluation) into one
subcommand table, so it is the one module outside services/evaluation/ that imports evaluation
(`gflow eval`, `gflow synth`, and the demo's generated clip). Subcommands are reached by their
plain names (`gflow eval tapvid --data FILE`; a parent's flags may follow its subcommand); a new
one is a dataclass in main()'s union with its handler.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from services.common.errors import GFlowError
from services.common.logs import setup_logging
from services.common.video import write_mp4
from services.evaluation.cli import EvalCommand, run_eval
from services.evaluation.synth import SceneConfig, SynthCommand, make_scene, run_synth
from services.ops.lab import LabCommand, run_lab
from services.ops.serve import ServeCommand, run_until_signalled, start_local_services
from services.pipeline.cli import (
    ReportCommand,
    RunCommand,
    report_command,
    run_command,
    view_command,
)
from services.pipeline.config import PipelineConfig
from services.pipeline.progress import console
from services.pipeline.viewer import ViewCommand


@dataclass
class DemoCommand:
    """Generate a small synthetic clip and run the whole embedded pipeline on it (CPU-friendly)."""

    # Where the clip, the outputs and the report go.
    out: Path = Path("gflow-demo")
    # Height of the synthetic clip in pixels.
    height: int = 96
    # Width of the synthetic clip in pixels.
    width: int = 128
    # Frames in the clip.
    n_frames: int = 10
    # Seed of the scene's layout, textures and motion.
    seed: int = 0


def demo_command(command: DemoCommand) -> Path:
    """Synthetic clip -> mp4 -> the whole embedded pipeline with the fast fit preset."""
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
    run_until_signalled(services)


def main(args: list[str] | None = None) -> None:
    """The `gflow` entry point; `args` replace sys.argv[1:] (tests)."""
    command = tyro.cli(
        Annotated[RunCommand, tyro.conf.subcommand("run")]
        | Annotated[ServeCommand, tyro.conf.subcommand("serve")]
        | Annotated[LabCommand, tyro.conf.subcommand("lab")]
        | Annotated[SynthCommand, tyro.conf.subcommand("synth")]
        | Annotated[EvalCommand, tyro.conf.subcommand("eval")]
        | Annotated[ReportCommand, tyro.conf.subcommand("report")]
        | Annotated[DemoCommand, tyro.conf.subcommand("demo")]
        | Annotated[ViewCommand, tyro.conf.subcommand("view")],
        description="GFlow: a 4D world (dynamic 3D Gaussians + cameras) from one monocular video.",
        args=args,
        config=(tyro.conf.OmitSubcommandPrefixes, tyro.conf.CascadeSubcommandArgs),
    )
    setup_logging(getattr(command, "log_level", "INFO"))
    handlers = {
        RunCommand: run_command,
        ServeCommand: serve_command,
        LabCommand: run_lab,
        SynthCommand: run_synth,
        EvalCommand: run_eval,
        ReportCommand: report_command,
        DemoCommand: demo_command,
        ViewCommand: view_command,
    }
    try:
        outcome = handlers[type(command)](command)
    except GFlowError as exc:
        console.print(f"[red]error[/red] ({exc.reason}): {exc}", soft_wrap=True)  # one line
        raise SystemExit(2) from exc
    if isinstance(outcome, Path):
        console.print(f"[green]done[/green]: {outcome}")
    elif outcome is not None:
        console.print(json.dumps(outcome, indent=1) if isinstance(outcome, dict) else outcome)


if __name__ == "__main__":
    main()
