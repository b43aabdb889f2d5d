"""Side by side with the original GFlow: its `fit_video.py` and our fit on one clip, same priors.

Needs a checkout of littlepure2333/GFlow (`--gflow-repo`) and MSplat (pointrix-project/msplat,
with g-truc/glm as its submodule) built into the environment: CUDA only (docs/fit.md, "Side by
side with the original GFlow"; bench/device_compare_original.sh does it all on the GPU machine):
    python bench/compare_original.py --gflow-repo .orig/GFlow --frames 20 --json-out cmp.json

One synthetic clip with exact ground truth, the one bench/fit_bench.py fits (same flags and
defaults), is written with its exact priors into the original's folder layout, in the formats its
readers take (`write_original_layout`). The original runs in a child process at the settings of
its scripts/fit_video.sh (`SCRIPT_FLAGS`), over all the clip's frames; then our fit runs each
preset (bench/fit_bench.py's `measure_presets`). One table: seconds per frame, peak GPU memory,
PSNR, TAP-Vid AJ and camera ATE (Sim(3)), and the original's seconds per frame over each row's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from bench.fit_bench import BenchConfig, make_clip, measure_presets  # noqa: E402
from services.evaluation import metrics  # noqa: E402
from services.evaluation.fit_suite import exact_priors  # noqa: E402
from services.fit.priors import FitPriors  # noqa: E402
from services.synthetic.scene import SyntheticScene  # noqa: E402

log = logging.getLogger("compare_original")

RUNNER = Path(__file__).resolve().with_name("original_gflow_runner.py")
# The flags of the original's scripts/fit_video.sh (littlepure2333/GFlow at 83d5587), but
# `--sequence_path`, which `original_flags` adds. Its README's "Fit a video" block shows older
# values (60k points, lambda_depth 1e-4, ...) and points to this script as the example to run.
# The script also sets CUDA_LAUNCH_BLOCKING=1, a debugging switch that serialises every kernel
# launch: it is left off here, which can only make the original faster.
SCRIPT_FLAGS = (
    "--num_points 50000 --resize 480 --lr 4e-3 --lr_camera 0.00 --iterations_first 500"
    " --lr_after 4e-3 --iterations_after 300 --camera_first --lr_camera_after 1e-3"
    " --iterations_camera 150 --no_load_extr --densify_interval 150 --densify_times 2"
    " --densify_occ_percent .5 --densify_interval_after 100 --densify_times_after 2"
    " --densify_err_thre 1e-2 --densify_err_percent 1. --lambda_rgb 1. --lambda_depth 0.1"
    " --lambda_var 50. --lambda_still 0. --lambda_flow 0.01 --lambda_scale 0. --background black"
    " --frame_range -1 --frame_start 0 --skip_interval 1 --traj_num 100 --traj_offset 2"
    " --no_common_logs --logs_suffix logs_cam_init_only"
).split()
LOGS_SUFFIX = "logs_cam_init_only"
FLO_MAGIC = np.float32(202021.25)  # Middlebury .flo tag, checked by gflow/utils/read.py:16
TOTAL_TIME = re.compile(r"Total time: ([0-9.eE+-]+) mins")  # fit_video.py:394, its fit timer


@dataclass
class CompareConfig:
    """What to compare (the clip flags are bench/fit_bench.py's, with its defaults)."""

    gflow_repo: Path
    """Checkout of littlepure2333/GFlow (the folder holding gflow/fit_video.py)."""
    width: int = 854
    """Clip width in pixels."""
    height: int = 480
    """Clip height in pixels."""
    frames: int = 50
    """Clip length: both systems fit every frame."""
    camera: Literal["moving", "rotation", "static"] = "moving"
    """Camera motion of the synthetic clip."""
    objects: int = 1
    """Moving objects in the clip (0 to 3)."""
    tracks: int = 256
    """Ground-truth tracks sampled for the TAP-Vid figures."""
    seed: int = 0
    """Seed of the clip and of our fits."""
    presets: tuple[str, ...] = ("default", "fast")
    """Our fit presets to run."""
    set: tuple[str, ...] = ()
    """FitConfig fields to change in each of our presets, as name=value (bench/fit_bench.py's
    --set, e.g. lambda_isotropic=1): a change measured beside the original in one run; the rows
    and the table's preset column say so."""
    compile: bool = False
    """Fuse our loss code with torch.compile (the fit runtime's `compile`)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where our fits run (the original always runs on CUDA)."""
    original: bool = True
    """Run the original (--no-original: ours only, e.g. to check the rest on a CPU)."""
    original_pythonpath: tuple[Path, ...] = ()
    """Folders put first on the original's PYTHONPATH: packages only it needs, in the versions
    its code runs with (bench/device_compare_original.sh: NumPy 2.3 there)."""
    original_timeout_s: float = 480.0
    """Seconds the original's fit may take before it is stopped and reported as timed out."""
    workdir: Path | None = None
    """Where the original's folder layout, its logs and outputs go (default: a new temporary
    folder, kept for inspection)."""
    json_out: Path | None = None
    """Also write the rows as JSON here (rewritten after each system, so a stopped run keeps
    what finished)."""

    def bench_config(self) -> BenchConfig:
        """The clip (and our presets) as bench/fit_bench.py's config."""
        return BenchConfig(
            width=self.width,
            height=self.height,
            frames=self.frames,
            presets=self.presets,
            set=self.set,
            device=self.device,
            camera=self.camera,
            objects=self.objects,
            tracks=self.tracks,
            seed=self.seed,
            compile=self.compile,
        )


@dataclass(frozen=True)
class OriginalLayout:
    """Where the original's readers look for a clip at `sequence_dir` (fit_video.py:79-95)."""

    sequence_dir: Path

    def sibling(self, suffix: str) -> Path:
        return self.sequence_dir.parent / f"{self.sequence_dir.name}{suffix}"

    @property
    def depth_dir(self) -> Path:
        return self.sibling("_depth_mast3r_s2")

    @property
    def flow_dir(self) -> Path:
        return self.sibling("_flow_unimatch")

    @property
    def mask_dir(self) -> Path:
        return self.sibling("_epipolar")

    @property
    def camera_dir(self) -> Path:
        return self.sibling("_camera_mast3r_s2")

    @property
    def logs_dir(self) -> Path:
        return self.sibling(f"_{LOGS_SUFFIX}")


def write_flo(path: Path, flow_hw2: np.ndarray) -> None:
    """Middlebury .flo: float32 tag, int32 width and height, then float32 (dx, dy) row-major,
    little-endian (what gflow/utils/read.py:7-37 reads and unimatch's writeFlow writes)."""
    height, width = flow_hw2.shape[:2]
    with open(path, "wb") as f:
        f.write(FLO_MAGIC.astype("<f4").tobytes())
        f.write(np.array([width, height], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow_hw2, "<f4").tobytes())


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB uint8 [H, W, 3] or grey uint8 [H, W] PNG."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")


def write_original_layout(
    layout: OriginalLayout,
    priors: FitPriors,
    occluded_bwd_t1hw: np.ndarray,
    c2w_t44: np.ndarray,
) -> None:
    """The clip and its priors as the original's data-prep scripts leave them for fit_video.py.

    Frame t is named f"{t:05d}"; the original sorts each folder by name (fit_video.py:79-95).
    - frames: SEQ/NNNNN.png, RGB (its scripts/organize_davis.sh layout; read by
      utils/conversion.py image_path_to_tensor).
    - depth: SEQ_depth_mast3r_s2/NNNNN.npy, float32 [H, W] camera z (utility/depth_mast3r.py:149
      writes it; utils/read.py read_depth reads it).
    - flow: SEQ_flow_unimatch/NNNNN_pred.flo for t = 0..T-2, the forward flow t -> t+1 on frame
      t's pixels (unimatch's `_pred.flo`; fit_video.py:248 hands flow_paths[i] to frame i+1 and
      trainer.py:355,525 samples it at frame i's positions). The backward flow enters only as
      SEQ_flow_unimatch/NNNNN_occ_bwd.png: 255 where a pixel of frame t+1 is not seen in frame t
      (unimatch's fwd-bwd check, written 0/255; fit_video.py:247, trainer.py:564 densifies there).
      Here it is the clip's exact visibility, not a consistency check.
    - moving masks: SEQ_epipolar/NNNNN_open.png, 0/255 (utility/move_seg.py:247; read_mask > 0).
    - cameras: SEQ_camera_mast3r_s2/NNNNN.json {"focal", "pp", "pose": world-to-camera 4x4}
      (utility/depth_mast3r.py:166-185; utils/read.py read_camera averages focal and rounds pp to
      whole pixels). The pose is written but not used: the script runs with --no_load_extr.
    """
    frames_thw3, depth_thw = priors.frames_thw3, priors.depth_thw
    T = len(frames_thw3)
    for folder in (
        layout.sequence_dir,
        layout.depth_dir,
        layout.flow_dir,
        layout.mask_dir,
        layout.camera_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    K_33 = priors.K_33
    for t in range(T):
        name = f"{t:05d}"
        write_png(layout.sequence_dir / f"{name}.png", frames_thw3[t])
        np.save(layout.depth_dir / f"{name}.npy", depth_thw[t].astype(np.float32))
        moving_hw = np.asarray(priors.moving_thw[t], np.float32) > 0.5
        write_png(layout.mask_dir / f"{name}_open.png", moving_hw.astype(np.uint8) * 255)
        camera = dict(
            focal=float(K_33[0, 0]),
            pp=[float(K_33[0, 2]), float(K_33[1, 2])],
            pose=np.linalg.inv(c2w_t44[t]).tolist(),
        )
        (layout.camera_dir / f"{name}.json").write_text(json.dumps(camera, indent=4))
        if t < T - 1:
            write_flo(layout.flow_dir / f"{name}_pred.flo", priors.flow_fwd_t1hw2[t])
            occluded_hw = occluded_bwd_t1hw[t].astype(np.uint8) * 255
            write_png(layout.flow_dir / f"{name}_occ_bwd.png", occluded_hw)


def original_flags(sequence_dir: Path, frames: int, height: int) -> list[str]:
    """SCRIPT_FLAGS for this clip: every frame (the script's --frame_range -1 fits all but the
    last, fit_video.py:80-81), resized to the clip's own height (the script's 480 is DAVIS's
    480p: the identity for a 480-line clip), and the sequence path."""
    flags = list(SCRIPT_FLAGS)
    flags[flags.index("--frame_range") + 1] = str(frames)
    flags[flags.index("--resize") + 1] = str(height)
    return [*flags, "--sequence_path", str(sequence_dir)]


def run_original(cfg: CompareConfig, layout: OriginalLayout) -> dict:
    """Runs fit_video.py in a child (bench/original_gflow_runner.py) from the original's root:
    its report (finished, wall_seconds, peak_gpu_mib), its fit timer, and its log's path."""
    workdir = layout.sequence_dir.parent.resolve()  # the child runs in the original's root
    report_path, log_path = workdir / "original_report.json", workdir / "original_fit_video.log"
    command = [
        sys.executable,
        str(RUNNER),
        str(report_path),
        str(cfg.gflow_repo.resolve() / "gflow" / "fit_video.py"),
        *original_flags(layout.sequence_dir.resolve(), cfg.frames, cfg.height),
    ]
    log.info("original: %s (log %s)", " ".join(command), log_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*(str(p.resolve()) for p in cfg.original_pythonpath), env.get("PYTHONPATH", "")]
    )
    status = "ok"
    with open(log_path, "w") as log_file:
        try:
            done = subprocess.run(
                command,
                cwd=cfg.gflow_repo,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=cfg.original_timeout_s,
            )
            if done.returncode != 0:
                status = f"failed (exit {done.returncode}, see {log_path.name})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {cfg.original_timeout_s:.0f} s"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    total = TOTAL_TIME.findall(log_path.read_text(errors="replace"))
    return dict(
        status=status,
        fit_seconds=float(total[-1]) * 60.0 if total else math.nan,
        wall_seconds=report.get("wall_seconds", math.nan),
        peak_gpu_mib=report.get("peak_gpu_mib", math.nan),
        log=str(log_path),
    )


def run_dir(layout: OriginalLayout) -> Path:
    """The original's output folder of its (only) run: LOGS/<date-time>/ (trainer.py:100-112)."""
    runs = sorted(d for d in layout.logs_dir.glob("*") if d.is_dir() and d.name != "0_latest")
    if not runs:
        raise FileNotFoundError(f"no run folder under {layout.logs_dir}")
    return runs[-1]


@dataclass
class OriginalOutputs:
    """What the original wrote for its first frames, one entry per frame."""

    renders_thw3: np.ndarray  # uint8 [T, H, W, 3]
    c2w_t44: np.ndarray  # float64 [T, 4, 4]
    written_t: np.ndarray  # float64 [T] time its checkpoint was last written (s since epoch)


def read_original_outputs(layout: OriginalLayout, frames: int) -> OriginalOutputs:
    """Its rendered frames (images/img_NNNNN.png; trainer.py:681) and cameras (ckpt/NNNNN.tar
    "extr", world-to-camera 3x4; trainer.py:252-272), each the last write for its frame (after
    the joint step), for the frames 0, 1, ... it wrote both for (all of them after a full run)."""
    out = run_dir(layout)
    renders, c2w, written = [], [], []
    for t in range(frames):
        image_path, ckpt_path = out / "images" / f"img_{t:05d}.png", out / "ckpt" / f"{t:05d}.tar"
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None or not ckpt_path.exists():
            break
        renders.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        # Its own checkpoint: tensors plus numpy masks, so not loadable with weights_only.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        w2c_44 = np.eye(4)
        w2c_44[:3] = checkpoint["extr"].detach().numpy()
        c2w.append(np.linalg.inv(w2c_44))
        written.append(ckpt_path.stat().st_mtime)
    if not renders:
        raise FileNotFoundError(f"no images/img_00000.png and ckpt/00000.tar under {out}")
    return OriginalOutputs(np.stack(renders), np.stack(c2w), np.array(written))


AJ_MISSING = (
    "the original tracks Gaussians it picks itself (a grid on its first frame, fit_video.py:"
    "168-215) and takes no query points (its tap_vid branch, fit_video.py:217-223, is switched "
    "off in the code), so its tracks have no ground truth in the clip"
)


def original_row(cfg: CompareConfig, scene: SyntheticScene, layout: OriginalLayout) -> dict:
    """The original's row: timing and memory from its run, PSNR and ATE from its outputs.

    A run stopped early (timeout, crash) still gives figures over the frames it finished (its
    last frame dropped: it may have stopped inside it), each so marked in `status`."""
    run = run_original(cfg, layout)
    row = dict(
        system="original GFlow",
        preset="scripts/fit_video.sh",
        size=f"{cfg.width}x{cfg.height}x{cfg.frames}",
        s_per_frame=run["fit_seconds"] / cfg.frames,
        wall_seconds=run["wall_seconds"],
        peak_gpu_mib=run["peak_gpu_mib"],
        psnr=math.nan,
        aj=math.nan,
        ate=math.nan,
        status=run["status"],
        missing={"aj": AJ_MISSING},
        log=run["log"],
    )
    try:
        outputs = read_original_outputs(layout, cfg.frames)
    except FileNotFoundError as exc:
        row["status"] += f"; outputs: {exc}"
        return row
    n = len(outputs.renders_thw3)
    if n < cfg.frames:
        n = max(n - 1, 1)
        row["status"] += f"; PSNR and ATE over its first {n} of {cfg.frames} frames"
    if not math.isfinite(row["s_per_frame"]):  # it prints its fit timer last, after its videos
        if n >= 2:
            row["s_per_frame"] = (outputs.written_t[n - 1] - outputs.written_t[0]) / (n - 1)
            row["status"] += f"; no fit timer: s/frame from its checkpoint times, frames 1-{n - 1}"
        else:
            row["s_per_frame"] = run["wall_seconds"] / cfg.frames
            row["status"] += "; no fit timer: s/frame from the whole child process"
    row["psnr"] = float(
        metrics.psnr_per_frame(outputs.renders_thw3[:n], scene.frames_thw3[:n]).mean()
    )
    row["ate"] = metrics.ate_rpe(outputs.c2w_t44[:n], scene.c2w_t44[:n])["ate"]
    return row


def our_rows(cfg: CompareConfig, scene: SyntheticScene) -> list[dict]:
    """Our presets through bench/fit_bench.py's measurement, in this table's columns."""
    rows = measure_presets(cfg.bench_config(), scene)
    return [
        dict(row, system="ours", wall_seconds=math.nan, status="ok", missing={}) for row in rows
    ]


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row with `ratio`: the original's seconds per frame over the row's."""
    original = [r["s_per_frame"] for r in rows if r["system"] == "original GFlow"]
    reference = original[0] if original else math.nan
    return [dict(r, ratio=reference / r["s_per_frame"]) for r in rows]


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows, then a line for each figure that is missing and why."""
    header = (
        "system",
        "preset",
        "size",
        "s/frame",
        "peak GPU MiB",
        "PSNR dB",
        "AJ",
        "ATE m",
        "original s/frame ÷ this",
    )

    def cell(row: dict, key: str, fmt: str) -> str:
        return "missing" if key in row["missing"] else format(row[key], fmt)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (
            r["system"],
            " ".join([r["preset"], *r.get("settings", ())]),
            r["size"],
            f"{r['s_per_frame']:.3f}",
            f"{r['peak_gpu_mib']:.0f}",
            cell(r, "psnr", ".2f"),
            cell(r, "aj", ".3f"),
            cell(r, "ate", ".4f"),
            f"{r['ratio']:.2f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        for key, why in r["missing"].items():
            lines.append(f"\n{r['system']} {key} missing: {why}.")
        if r["status"] != "ok":
            lines.append(f"\n{r['system']} {r['preset']}: {r['status']}.")
        if math.isfinite(r["wall_seconds"]):
            lines.append(
                f"\n{r['system']}: whole child process {r['wall_seconds']:.1f} s (imports, reading,"
                " fitting, its videos); its s/frame is its own fit timer (fit_video.py:105-355)."
            )
    return "\n".join(lines)


def write_json(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        path.write_text(json.dumps(with_ratios(rows), indent=2))


def check_paths(cfg: CompareConfig) -> None:
    """Clear errors for a missing checkout or renderer, before any work."""
    fit_video = cfg.gflow_repo / "gflow" / "fit_video.py"
    if not fit_video.is_file():
        raise SystemExit(
            f"--gflow-repo {cfg.gflow_repo}: no gflow/fit_video.py there; pass a checkout of "
            "littlepure2333/GFlow (docs/fit.md, 'Side by side with the original GFlow')"
        )
    if importlib.util.find_spec("msplat") is None:
        raise SystemExit(
            "msplat (the original's renderer) is not importable: build pointrix-project/msplat "
            "with its third_party/glm submodule into this environment, or pass --no-original"
        )


def compare(cfg: CompareConfig) -> list[dict]:
    """The original's row (when asked for), then one per preset of ours, with ratios."""
    if cfg.original:
        check_paths(cfg)
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="compare_original_"))
    scene = make_clip(cfg.bench_config())
    rows: list[dict] = []
    if cfg.original:
        layout = OriginalLayout(workdir / "clip" / "clip")
        write_original_layout(layout, exact_priors(scene), ~scene.valid_bwd_t1hw, scene.c2w_t44)
        log.info("clip written in the original's layout under %s", layout.sequence_dir.parent)
        rows.append(original_row(cfg, scene, layout))
        write_json(cfg.json_out, rows)
    rows += our_rows(cfg, scene)
    write_json(cfg.json_out, rows)
    return with_ratios(rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = tyro.cli(CompareConfig)
    rows = compare(cfg)
    log.info("side by side on %dx%dx%d:\n%s", cfg.width, cfg.height, cfg.frames, table(rows))


if __name__ == "__main__":
    main()
