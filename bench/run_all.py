"""Every benchmark in one go (`make bench`): each script in its own process, its table kept.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/run_all.py                 # the documented sizes (854x480 and more)
    .venv/bin/python bench/run_all.py --quick         # small sizes: a smoke run in minutes
    .venv/bin/python bench/run_all.py --only flow fit # a subset

Each benchmark's output goes to OUT/<name>.log (default bench/out/<UTC time>/); a summary table
(benchmark, exit status, wall seconds, log) is printed and written to OUT/summary.md. The fit
benchmark uses CUDA when it is there; on a CPU-only machine it runs at a small size instead of
854x480x50, which would take hours. Exit status 1 when any benchmark failed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
import tyro

log = logging.getLogger("bench.run_all")

Name = Literal["synth", "flow", "depth", "segment", "render", "fit", "suite"]
BENCH_DIR = Path(__file__).resolve().parent
CPU_FIT_ARGS = ["--width", "160", "--height", "96", "--frames", "8"]


@dataclass
class RunAll:
    """Which benchmarks, at which sizes, and where their tables go."""

    quick: bool = False
    """Small sizes and few repeats: checks that every benchmark runs, not how fast."""
    only: list[Name] = field(default_factory=list)
    """Run just these (default: all, in the order synth flow depth segment render fit suite)."""
    out: Path | None = None
    """Folder for the logs and summary (default: bench/out/<UTC time>)."""


def bench_args(quick: bool, cuda: bool) -> dict[str, list[str]]:
    """Each benchmark's command-line arguments."""
    if quick:
        small = ["--width", "160", "--height", "96"]
        return {
            "synth": ["--no-large", "--repeats", "1"],
            "flow": [*small, "--n-frames", "3"],
            "depth": [*small, "--n-frames", "6", "--long-sides", "160"],
            "segment": [*small, "--frames", "4", "--repeats", "1"],
            "render": ["--sizes", "2000x64x48", "--repeats", "2"],
            "fit": ["--width", "64", "--height", "48", "--frames", "4", "--presets", "test"],
            "suite": [
                *("--width", "64", "--height", "48", "--frames", "4", "--presets", "test"),
                *("--clips", "orbit", "--tracks", "32"),
            ],
        }
    flow_args = ["--raft-random-weights"] if cuda else []
    return {
        "synth": [],
        "flow": flow_args,
        "depth": [],
        "segment": [],
        "render": [],
        "fit": [] if cuda else [*CPU_FIT_ARGS, "--presets", "test", "fast"],
        "suite": (
            ["--device", "cuda", "--jobs", "8"] if cuda else ["--presets", "fast", "--jobs", "2"]
        ),
    }


@dataclass
class Outcome:
    name: str
    returncode: int
    seconds: float
    log_path: Path


def run_one(name: str, args: list[str], out: Path) -> Outcome:
    """One benchmark in a fresh process; its output is echoed and kept in OUT/<name>.log."""
    command = [sys.executable, str(BENCH_DIR / f"{name}_bench.py"), *args]
    log_path = out / f"{name}.log"
    log.info("%s: %s", name, " ".join(command[1:]))
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log_file.write(line)
        returncode = process.wait()
    return Outcome(name, returncode, time.perf_counter() - started, log_path)


def summary(outcomes: list[Outcome]) -> str:
    rows = ["| benchmark | status | wall s | log |", "|---|---|---|---|"]
    for o in outcomes:
        status = "ok" if o.returncode == 0 else f"FAILED (exit {o.returncode})"
        rows.append(f"| {o.name} | {status} | {o.seconds:.1f} | {o.log_path} |")
    return "\n".join(rows)


def main(cfg: RunAll) -> int:
    cuda = torch.cuda.is_available()
    args = bench_args(cfg.quick, cuda)
    names = cfg.only or list(args)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = cfg.out or BENCH_DIR / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "%d benchmark(s), %s sizes, %s; logs in %s",
        len(names),
        "quick" if cfg.quick else "documented",
        "CUDA" if cuda else "CPU only",
        out,
    )
    outcomes = [run_one(name, args[name], out) for name in names]
    table = summary(outcomes)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(main(tyro.cli(RunAll)))
