"""The `gflow` command line: run, serve, lab, synth, eval, report, demo, view.

The application root: it only joins the packages' commands (pipeline, ops, synthetic) into one
subcommand table. `gflow eval ARGS` is forwarded, git-style, to evaluation's own command line in
a child process (`eval_command`), so that evaluation stays a leaf no other module imports.
Subcommands are reached by their plain names (`gflow run VIDEO --fit-preset fast`; a parent's
flags may follow its subcommand); a new one is a dataclass in main()'s union with its handler.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from services.common.video import write_mp4
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
from services.pipeline.progress import console, run_subcommand
from services.pipeline.viewer import ViewCommand
from services.synthetic.scene import SceneConfig, SynthCommand, make_scene, run_synth

DESCRIPTION = (
    "GFlow: a 4D world (dynamic 3D Gaussians + cameras) from one monocular video.\n\n"
    "gflow eval tapvid|davis --data PATH ...: scores the pipeline against a benchmark's ground"
    " truth (gflow eval --help)."
)


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


def eval_command(args: list[str]) -> None:
    """`gflow eval ARGS`: evaluation's own command line in a child process (stdin, stdout and
    stderr are this one's); exits with its status."""
    done = subprocess.run([sys.executable, "-m", "services.evaluation.cli", *args])
    raise SystemExit(done.returncode)


def main(args: list[str] | None = None) -> None:
    """The `gflow` entry point; `args` replace sys.argv[1:] (tests)."""
    args = sys.argv[1:] if args is None else args
    if args[:1] == ["eval"]:
        eval_command(args[1:])
    command = tyro.cli(
        Annotated[RunCommand, tyro.conf.subcommand("run")]
        | Annotated[ServeCommand, tyro.conf.subcommand("serve")]
        | Annotated[LabCommand, tyro.conf.subcommand("lab")]
        | Annotated[SynthCommand, tyro.conf.subcommand("synth")]
        | Annotated[ReportCommand, tyro.conf.subcommand("report")]
        | Annotated[DemoCommand, tyro.conf.subcommand("demo")]
        | Annotated[ViewCommand, tyro.conf.subcommand("view")],
        description=DESCRIPTION,
        args=args,
        config=(tyro.conf.OmitSubcommandPrefixes, tyro.conf.CascadeSubcommandArgs),
    )
    handlers = {
        RunCommand: run_command,
        ServeCommand: serve_command,
        LabCommand: run_lab,
        SynthCommand: run_synth,
        ReportCommand: report_command,
        DemoCommand: demo_command,
        ViewCommand: view_command,
    }
    run_subcommand(command, handlers)


if __name__ == "__main__":
    main()
