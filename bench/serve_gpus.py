"""`gflow serve` with the stages spread over GPUs: two clips at once with one fit worker on GPU 0
against two fit workers on GPUs 0 and 1 (docs/deploy.md, "Spreading stages over GPUs").

    python bench/serve_gpus.py                       # on a machine with two GPUs
    python bench/serve_gpus.py --layouts one --frames 6 --width 96 --height 64 --fit-preset test

Each layout gets a fresh `gflow serve` folder (no cache shared between layouts). While the clips
run, `nvidia-smi` is sampled every half second: which worker process (found by its port) held
memory on which GPU is the proof of placement, beside the wall time of both clips.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.common.runtime import DEFAULT_PORTS  # noqa: E402
from services.common.video import write_mp4  # noqa: E402
from services.ops.serve import plan_workers  # noqa: E402
from services.synthetic.scene import SceneConfig, make_scene  # noqa: E402

log = logging.getLogger("serve_gpus")

LAYOUTS = {
    "one": ["depth=0", "flow=0", "segment=0", "fit=0"],
    "two": ["depth=0", "flow=0", "segment=0", "fit=0,1"],
}
GFLOW = [sys.executable, "-m", "services.cli"]
# Both clips call every stage at once: the busy one answers RESOURCE_EXHAUSTED and the run
# retries, so give the retries minutes, not the default half minute.
RETRY_FLAGS = ["--pipeline.remote.retry-attempts", "60", "--pipeline.remote.retry-max-delay-s", "5"]


@dataclass
class ServeGpusBench:
    width: int = 480
    height: int = 272
    frames: int = 24
    clips: int = 2
    fit_preset: str = "default"
    layouts: tuple[str, ...] = ("one", "two")
    flow_backend: str = "dis"
    """unimatch: a randomly initialised UniMatch (the unimatch package on PYTHONPATH), so that
    the flow stage computes on its GPU too; its flow is noise, the timing is real."""
    out: Path = Path("bench/out/serve_gpus")


def _nvidia_smi(query: str) -> list[list[str]]:
    """Rows of an nvidia-smi CSV query (none without a GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True
    ).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.strip().splitlines()]


def _worker_of(pid: int, names_by_port: dict[int, str]) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid} (gone)"
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in (b"--port", b"--server.port") and int(value) in names_by_port:
            return names_by_port[int(value)]
    return f"pid {pid}"


def _sample(stop: threading.Event, names_by_port: dict[int, str], seen: dict) -> None:
    """Until `stop`: the most memory each worker held on each GPU index."""
    index_of = {uuid: int(index) for index, uuid in _nvidia_smi("--query-gpu=index,uuid")}
    while not stop.wait(0.5):
        for pid, uuid, mib in _nvidia_smi("--query-compute-apps=pid,gpu_uuid,used_memory"):
            key = (_worker_of(int(pid), names_by_port), index_of.get(uuid, -1))
            seen[key] = max(seen.get(key, 0), int(mib))


def _run_layout(bench: ServeGpusBench, layout: str, clips: list[Path]) -> dict:
    folder = (bench.out / layout).resolve()
    gpus = LAYOUTS[layout]
    names_by_port = {p.port: p.name for p in plan_workers(DEFAULT_PORTS, gpus)}
    names_by_port[DEFAULT_PORTS["pipeline"]] = "pipeline"
    endpoints = folder / "endpoints.yaml"
    endpoints.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    serve_log = open(folder / "serve.log", "w")
    serve = subprocess.Popen(
        [*GFLOW, "serve", "--dir", str(folder), "--gpus", *gpus],
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
    started = time.monotonic()
    while not endpoints.exists():
        if serve.poll() is not None or time.monotonic() - started > 300:
            raise RuntimeError(f"gflow serve did not come up; see {folder / 'serve.log'}")
        time.sleep(0.5)
    log.info("%s: serving after %.0f s", layout, time.monotonic() - started)
    seen: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop, names_by_port, seen), daemon=True)
    sampler.start()

    def run(clip: Path) -> float:
        begin = time.monotonic()
        argv = [*GFLOW, "run", str(clip), "--remote-config", str(endpoints)]
        argv += ["--out", str(folder / clip.stem), "--fit-preset", bench.fit_preset, *RETRY_FLAGS]
        argv += ["--pipeline.flow.backend", bench.flow_backend]
        with open(folder / f"{clip.stem}.log", "w") as out:
            subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)
        return time.monotonic() - begin

    begin = time.monotonic()
    with ThreadPoolExecutor(len(clips)) as pool:
        per_clip = list(pool.map(run, clips))
    wall = time.monotonic() - begin
    stop.set()
    sampler.join()
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=120)
    serve_log.close()
    placement = sorted(f"{name} -> GPU {gpu} ({mib} MiB)" for (name, gpu), mib in seen.items())
    return {"layout": layout, "gpus": gpus, "wall_s": wall, "clip_s": per_clip, "seen": placement}


def _random_unimatch(folder: Path) -> Path:
    """A gmflow-scale2-regrefine6 checkpoint with random weights, in UniMatch's format."""
    import torch

    from services.flow.backends import unimatch

    torch.manual_seed(0)
    model = unimatch.import_unimatch_class()(**unimatch.model_kwargs())
    path = (folder / "gmflow-random.pth").resolve()
    torch.save({"model": model.state_dict()}, path)
    return path


def main(bench: ServeGpusBench) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bench.out.mkdir(parents=True, exist_ok=True)
    if bench.flow_backend == "unimatch":
        # The flow workers read it from their environment (services/flow/stage.py).
        os.environ["GFLOW_UNIMATCH_CHECKPOINT"] = str(_random_unimatch(bench.out))
    clips = []
    for i in range(bench.clips):
        scene = make_scene(
            SceneConfig(width=bench.width, height=bench.height, n_frames=bench.frames, seed=i)
        )
        path = (bench.out / f"clip{i}.mp4").resolve()
        path.write_bytes(write_mp4(scene.frames_thw3, 24.0))
        clips.append(path)
    rows = [_run_layout(bench, layout, clips) for layout in bench.layouts]
    (bench.out / "serve_gpus.json").write_text(json.dumps(rows, indent=1))
    print("| fit workers | --gpus | wall s (both clips) | s per clip | seen on GPUs (nvidia-smi) |")
    print("|---|---|---|---|---|")
    for row in rows:
        clip_s = ", ".join(f"{s:.0f}" for s in row["clip_s"])
        print(
            f"| {row['layout']} | {' '.join(row['gpus'])} | {row['wall_s']:.0f} | {clip_s} | "
            f"{'; '.join(row['seen']) or 'none'} |"
        )


if __name__ == "__main__":
    main(tyro.cli(ServeGpusBench))
