"""bench/compare_original.py against the original GFlow's own code: a tiny clip's priors written
into its folder layout come back exact through its readers (gflow/utils/read.py, conversion.py),
found by the same globs as its fit_video.py; our copy of its scripts/fit_video.sh flags is the
script's; and its per-frame outputs, in the form its trainer saves them, are read back exact.
The first two need the original's checkout: <repo>/.orig/GFlow (docs/fit.md) or the folder in
GFLOW_ORIGINAL_REPO; without it they skip."""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from bench.compare_original import (
    SCRIPT_FLAGS,
    CompareConfig,
    OriginalLayout,
    original_flags,
    read_original_outputs,
    table,
    write_original_layout,
    write_png,
)
from services.common.torchvision_ops import import_beside_cpu_torch
from services.evaluation.fit_suite import exact_priors
from services.synthetic.scene import SceneConfig, make_scene

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENV_VAR = "GFLOW_ORIGINAL_REPO"
# Its read_flow takes int() of 1-element arrays (gflow/utils/read.py:23), an error since NumPy 2.4
# (the device run gives its child NumPy 2.3); OpenCV's own .flo reader checks the file here then.
ORIGINAL_READS_FLO = tuple(int(v) for v in np.__version__.split(".")[:2]) < (2, 4)


@pytest.fixture(scope="module")
def gflow_repo() -> Path:
    repo = Path(os.environ.get(ENV_VAR, PROJECT_ROOT / ".orig" / "GFlow"))
    if not (repo / "gflow" / "fit_video.py").is_file():
        pytest.skip(f"no checkout of littlepure2333/GFlow at {repo}: set {ENV_VAR} to one")
    return repo


def load_original(repo: Path, relative: str) -> ModuleType:
    """One of the original's modules, loaded from its file (its package __init__ would import
    its renderer and geometry libraries, which its readers do not need)."""
    import_beside_cpu_torch("torchvision.transforms")  # its readers resize with torchvision
    path = repo / "gflow" / relative
    spec = importlib.util.spec_from_file_location(f"original_gflow_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_priors_round_trip_through_the_original_readers(gflow_repo, tmp_path):
    read = load_original(gflow_repo, "utils/read.py")
    conversion = load_original(gflow_repo, "utils/conversion.py")
    scene = make_scene(SceneConfig(width=40, height=24, n_frames=3, n_tracks=4, seed=0))
    priors = exact_priors(scene)
    layout = OriginalLayout(tmp_path / "clip" / "clip")
    write_original_layout(layout, priors, ~scene.valid_bwd_t1hw, scene.c2w_t44)
    T, H = 3, 24

    # The globs of fit_video.py:79-95, each folder sorted by name.
    seq = str(layout.sequence_dir)
    images = sorted(Path(seq).glob("*.png"))
    depths = sorted(Path(seq + "_depth_mast3r_s2").glob("*.npy"))
    occs = sorted(Path(seq + "_flow_unimatch").glob("*occ_bwd.png"))
    flows = sorted(Path(seq + "_flow_unimatch").glob("*pred.flo"))
    masks = sorted(Path(seq + "_epipolar").glob("*_open.png"))
    cameras = sorted(Path(seq + "_camera_mast3r_s2").glob("*.json"))
    assert [len(p) for p in (images, depths, occs, flows, masks, cameras)] == [T, T, 2, 2, T, T]
    assert not list(Path(seq).glob("*.jpg"))  # fit_video.py:79 would add those after the PNGs

    for t in range(T):  # read as fit_video.py reads them, with --resize at the clip height
        rgb = conversion.image_path_to_tensor(images[t], resize=H).numpy()
        np.testing.assert_array_equal(np.round(rgb * 255.0).astype(np.uint8), scene.frames_thw3[t])
        depth = read.read_depth(depths[t], resize=H, depth_scale=1.0, depth_offset=0.0).numpy()
        np.testing.assert_array_equal(depth, scene.depth_thw[t])
        moving = read.read_mask(masks[t], resize=H).numpy()
        np.testing.assert_array_equal(moving, scene.moving_thw[t])
    for t in range(T - 1):
        np.testing.assert_array_equal(cv2.readOpticalFlow(str(flows[t])), scene.flow_fwd_t1hw2[t])
        if ORIGINAL_READS_FLO:
            flow = read.read_flow(flows[t], resize=H).numpy()
            np.testing.assert_array_equal(flow, scene.flow_fwd_t1hw2[t])
        occ = conversion.image_path_to_tensor(occs[t], resize=H).numpy()
        assert occ.shape == (H, 40, 1)
        np.testing.assert_array_equal(occ[..., 0] > 0, ~scene.valid_bwd_t1hw[t])

    focal, pp, w2c_t34 = read.read_camera(cameras)
    K = scene.K_33
    assert focal == pytest.approx(K[0, 0], rel=1e-12)
    assert pp == [round(K[0, 2]), round(K[1, 2])]  # its reader keeps whole pixels only
    for t in range(T):
        np.testing.assert_allclose(w2c_t34[t] @ scene.c2w_t44[t], np.eye(4)[:3], atol=1e-9)


def test_script_flags_are_the_original_script(gflow_repo):
    script = (gflow_repo / "scripts" / "fit_video.sh").read_text()
    command = script.split("python gflow/fit_video.py", 1)[1].replace("\\\n", " ")
    words = shlex.split(command)
    at = words.index("--sequence_path")
    assert words[at + 1] == "$sequence_path"
    assert tuple(words[:at] + words[at + 2 :]) == tuple(SCRIPT_FLAGS)


def test_original_flags_fit_every_frame_at_the_clip_size():
    flags = original_flags(Path("/data/clip/clip"), frames=20, height=240)
    assert flags[flags.index("--frame_range") + 1] == "20"
    assert flags[flags.index("--resize") + 1] == "240"
    assert flags[-2:] == ["--sequence_path", "/data/clip/clip"]
    assert len(flags) == len(SCRIPT_FLAGS) + 2


def test_reads_back_what_the_original_writes_per_frame(tmp_path):
    """Its run folder as trainer.py:100-112, 252-272, 681 write it: images/img_NNNNN.png and
    ckpt/NNNNN.tar with the world-to-camera "extr"; a frame without both ends the read."""
    scene = make_scene(SceneConfig(width=40, height=24, n_frames=3, n_tracks=4, seed=0))
    layout = OriginalLayout(tmp_path / "clip" / "clip")
    run = layout.logs_dir / "2026_11_30-12_00_00"
    (run / "images").mkdir(parents=True)
    (run / "ckpt").mkdir()
    (layout.logs_dir / "0_latest").mkdir()
    for t in range(2):
        write_png(run / "images" / f"img_{t:05d}.png", scene.frames_thw3[t])
        w2c_34 = torch.from_numpy(np.linalg.inv(scene.c2w_t44[t])[:3]).requires_grad_()
        torch.save(
            {"extr": w2c_34, "move_seg": np.zeros((24, 40), np.uint8)},
            run / "ckpt" / f"{t:05d}.tar",
        )
    outputs = read_original_outputs(layout, frames=3)
    np.testing.assert_array_equal(outputs.renders_thw3, scene.frames_thw3[:2])
    np.testing.assert_allclose(outputs.c2w_t44, scene.c2w_t44[:2], atol=1e-12)
    assert outputs.written_t.shape == (2,)


def test_a_set_reaches_our_fits_and_the_table(tmp_path):
    """--set goes to fit_bench's config of our presets, and the table names it beside the
    preset, so a row of a changed preset is never read as the preset itself."""
    cfg = CompareConfig(gflow_repo=tmp_path, set=("lambda_isotropic=1",))
    assert cfg.bench_config().set == ("lambda_isotropic=1",)
    row = dict(
        system="ours",
        preset="fast",
        settings=["lambda_isotropic=1"],
        size="64x48x3",
        s_per_frame=0.5,
        peak_gpu_mib=10.0,
        psnr=30.0,
        aj=0.5,
        ate=0.001,
        ratio=2.0,
        missing={},
        status="ok",
        wall_seconds=float("nan"),
    )
    assert "| ours | fast lambda_isotropic=1 | 64x48x3 |" in table([row])
    assert "| ours | fast | 64x48x3 |" in table([dict(row, settings=[])])
