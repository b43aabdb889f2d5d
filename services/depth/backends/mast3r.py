"""MASt3R (naver/mast3r) as a depth backend: a thin adapter over the package's own API.

Per window: frames are written as PNGs at the planned working size (multiples of 16, not
square, so `load_images` neither resizes nor crops them), loaded with `load_images`, paired by
`make_pairs` (log-window or sliding-window graph, not cyclic: a video has no loop), and aligned by
`sparse_global_alignment` with shared intrinsics and the principal point kept at the image centre
(as DUSt3R's own aligner does by default: weak matches cannot drag it off, and it keeps the
frame's orientation visible in the intrinsics). Depth is NOT taken from the package's dense
output (one depth per anchor block times an offset, which makes stripes at the subsample period):
the optimised anchor depths are reshaped to their (rows, columns) grid and turned dense by
`upsample_anchor_depth` against the network's own dense canonical depth map. The package's
`core_depth > 0` assertion, NaN losses and CUDA out-of-memory become AlignmentFailedError or
ResourceExhaustedError, which the engine turns into a re-run, never a crash.

The package is imported only when this backend loads; it cannot run without its checkpoint.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.common.errors import FailedPreconditionError, ResourceExhaustedError
from services.common.torchvision_ops import import_beside_cpu_torch
from services.depth.backends.base import AlignmentFailedError, WindowDepth
from services.depth.quality import bad_depth_mask
from services.depth.upsample import anchor_pixels, guide_from_rgb, upsample_anchor_depth

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend mast3r needs the mast3r package: git clone --recursive "
    "https://github.com/naver/mast3r, pip install -r requirements.txt -r dust3r/requirements.txt "
    "inside the clone (keep the installed torch), and add the clone's root folder to PYTHONPATH"
)
WEIGHTS_HINT = (
    "download MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth (MASt3R README, section "
    "Checkpoints), e.g. into checkpoints/, and pass its path as mast3r_checkpoint; nothing is "
    "downloaded at run time"
)
MODEL_CLASS = "AsymmetricMASt3R"
_NAMES = {"inf": float("inf"), "True": True, "False": False, "None": None}


@dataclass(frozen=True)
class Mast3rSettings:
    """Arguments of one alignment run; defaults are those of MASt3R's own demo."""

    scene_graph: str = "logwin"  # swin: the next `winsize` frames; logwin: offsets 1, 2, 4, ...
    winsize: int = 3
    subsample: int = 8  # anchor spacing (px) of the sparse alignment
    lr1: float = 0.07  # coarse alignment (3D matching) learning rate and iterations
    niter1: int = 300
    lr2: float = 0.01  # refinement (2D reprojection) learning rate and iterations
    niter2: int = 300
    matching_conf_thr: float = 0.0
    opt_depth: bool = True  # also refine the anchor depths (the demo's "refine+depth")

    def describe(self) -> str:
        return (
            f"graph {scene_graph_name(self)}, subsample {self.subsample}, "
            f"depth {'optimised' if self.opt_depth else 'kept from the network'}"
        )


def scene_graph_name(settings: Mast3rSettings) -> str:
    """`make_pairs`'s scene_graph string, e.g. "logwin-3-noncyclic"."""
    return f"{settings.scene_graph}-{settings.winsize}-noncyclic"


def settings_ladder(settings: Mast3rSettings) -> list[Mast3rSettings]:
    """The configured settings, then safer ones for a window whose alignment broke.

    The assertion fires when a canonical depth map averaged over several pairs has a
    non-positive anchor, so first pair each frame with its direct neighbours only (fewer maps
    averaged); then also double the anchor spacing and keep the network's anchor depths
    instead of optimising them (the optimisation can push them through zero).
    """
    neighbours = replace(settings, scene_graph="swin", winsize=1)
    coarse = replace(neighbours, subsample=2 * settings.subsample, opt_depth=False)
    ladder = [settings]
    for step in (neighbours, coarse):
        if step not in ladder:
            ladder.append(step)
    return ladder


def availability() -> tuple[bool, str]:
    if importlib.util.find_spec("mast3r") is None:
        return False, INSTALL_HINT
    return True, "MASt3R sparse global alignment; needs a checkpoint (mast3r_checkpoint)"


def _literal(node: ast.AST) -> Any:
    """Value of a literal argument: constants, tuples, lists, unary minus and inf/True/False."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Tuple | ast.List):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    raise ValueError(f"not a literal: {ast.dump(node)}")


def parse_model_spec(spec: str) -> dict[str, Any]:
    """Keyword arguments of the `AsymmetricMASt3R(...)` call a checkpoint stores in args.model.

    Parsed, never evaluated: only literal arguments are accepted. As in MASt3R's own loader,
    the training-time patch embedding is swapped for the inference one and landscape_only is
    turned off (portrait frames are then handled without transposition).
    """
    try:
        call = ast.parse(spec.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            raise ValueError("not a call")
        if call.func.id != MODEL_CLASS or call.args:
            raise ValueError(f"expected {MODEL_CLASS}(keyword=value, ...)")
        kwargs = {kw.arg: _literal(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as exc:
        raise FailedPreconditionError(
            f"mast3r_checkpoint: its model description {spec!r} is not a plain "
            f"{MODEL_CLASS}(...) call ({exc}); {WEIGHTS_HINT}",
            reason="WEIGHTS_UNREADABLE",
        ) from exc
    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False
    return kwargs


def load_checkpoint(path: Path | None, trust: bool = False) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True (its argparse.Namespace allowed).

    `trust` falls back to a full unpickle for files that need it: only for files you trust.
    """
    import torch

    if path is None:
        raise FailedPreconditionError(
            f"mast3r_checkpoint is not set: {WEIGHTS_HINT}", reason="WEIGHTS_MISSING"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise FailedPreconditionError(
            f"mast3r_checkpoint: no file at {path}: {WEIGHTS_HINT}", reason="WEIGHTS_MISSING"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files it will not load safely
        if not trust:
            raise FailedPreconditionError(
                f"mast3r_checkpoint: {path} does not load with weights_only=True "
                f"({type(exc).__name__}: {exc}); if you trust this file, set "
                "mast3r_trust_checkpoint=True",
                reason="WEIGHTS_UNREADABLE",
            ) from exc
    log.warning("loading %s with weights_only=False (mast3r_trust_checkpoint)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def anchor_grid(flat: np.ndarray, height: int, width: int, subsample: int) -> np.ndarray:
    """One depth per anchor, reshaped to [rows, columns] of the anchor grid.

    The alignment stores anchors row-major (y outer, x inner); rows come from the height.
    Reshaping with the sides swapped is what wrote transposed depth maps in the original
    pipeline, so the size is checked against both sides.
    """
    rows, cols = len(anchor_pixels(height, subsample)), len(anchor_pixels(width, subsample))
    flat = np.asarray(flat, np.float32).ravel()
    if flat.size != rows * cols:
        raise ValueError(
            f"{flat.size} anchor depths, expected {rows}x{cols} for a {width}x{height} image "
            f"with subsample {subsample}"
        )
    return flat.reshape(rows, cols)


def nearest_anchor_mask(
    grid_mask: np.ndarray, height: int, width: int, subsample: int
) -> np.ndarray:
    """bool [height, width]: the pixel's anchor block (MASt3R's `y // subsample`, `x // ...`)
    is set in `grid_mask` [rows, columns]."""
    rows, cols = grid_mask.shape
    block_y = np.minimum(np.arange(height) // subsample, rows - 1)
    block_x = np.minimum(np.arange(width) // subsample, cols - 1)
    return grid_mask[np.ix_(block_y, block_x)]


def confidence_from_mast3r(conf_hw: np.ndarray) -> np.ndarray:
    """MASt3R's confidence is 1 + exp(x) >= 1; map it to [0, 1) as 1 - 1/conf."""
    conf = np.asarray(conf_hw, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - 1.0 / np.maximum(conf, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def _import(module: str) -> Any:
    """A module of the mast3r/dust3r packages (DUSt3R imports torchvision: see torchvision_ops)."""
    try:
        return import_beside_cpu_torch(module)
    except ImportError as exc:
        raise FailedPreconditionError(
            f"could not import {module} ({exc}); {INSTALL_HINT}", reason="PACKAGE_MISSING"
        ) from exc


def _import_sparse_ga() -> Any:
    """mast3r.cloud_opt.sparse_ga; it calls `scipy.cluster.hierarchy.distance.squareform`, a
    re-export newer SciPy releases dropped, so the module it named is put back there."""
    hierarchy = importlib.import_module("scipy.cluster.hierarchy")
    if not hasattr(hierarchy, "distance"):
        hierarchy.distance = importlib.import_module("scipy.spatial.distance")
    return _import("mast3r.cloud_opt.sparse_ga")


class Mast3rBackend:
    """A loaded MASt3R model; `run_window` aligns one window of frames."""

    name = "mast3r"

    def __init__(self, checkpoint: Path | None, device: str, trust: bool = False):
        import torch

        available, detail = availability()
        if not available:
            raise FailedPreconditionError(detail, reason="PACKAGE_MISSING")
        model_class = getattr(_import("mast3r.model"), MODEL_CLASS)
        state = load_checkpoint(checkpoint, trust)
        args = state.get("args")
        spec = getattr(args, "model", None)
        if not isinstance(spec, str) or "model" not in state:
            raise FailedPreconditionError(
                f"mast3r_checkpoint: {checkpoint} has no 'args.model' and 'model' entries; "
                + WEIGHTS_HINT,
                reason="WEIGHTS_UNREADABLE",
            )
        net = model_class(**parse_model_spec(spec))
        missing, _unexpected = net.load_state_dict(state["model"], strict=False)
        if missing:
            raise FailedPreconditionError(
                f"mast3r_checkpoint: {checkpoint} lacks {len(missing)} tensors of the model "
                f"(first: {missing[0]}); " + WEIGHTS_HINT,
                reason="WEIGHTS_UNREADABLE",
            )
        self.device = device
        self.model = net.to(device).eval()
        self._torch = torch

    def dense_depth(self, frame_hw3: np.ndarray) -> np.ndarray:
        """The network's own dense depth of one uint8 frame (paired with itself, MASt3R's input
        normalisation): float32 [H, W]. A diagnostic: a periodic pattern here is the network's,
        so the stage's periodic_artefact is judged against it (docs/depth.md)."""
        torch = self._torch
        image = torch.from_numpy(frame_hw3).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        view = {
            "img": image.to(self.device),
            "true_shape": torch.tensor([frame_hw3.shape[:2]]),
            "idx": [0],
            "instance": ["0"],
        }
        with torch.no_grad():
            pred, _ = self.model(view, view)
        return pred["pts3d"][0, ..., 2].float().cpu().numpy()

    def run_window(self, frames_thw3: np.ndarray, settings: Mast3rSettings) -> WindowDepth:
        """Aligns uint8 frames already at the working size (multiples of 16, not square)."""
        torch = self._torch
        load_images = _import("dust3r.utils.image").load_images
        make_pairs = _import("mast3r.image_pairs").make_pairs
        sparse_global_alignment = _import_sparse_ga().sparse_global_alignment
        n, height, width = frames_thw3.shape[:3]
        with tempfile.TemporaryDirectory(prefix="gflow-mast3r-") as tmp:
            paths = []
            for t, frame in enumerate(frames_thw3):
                path = str(Path(tmp) / f"{t:05d}.png")
                cv2.imwrite(path, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                paths.append(path)
            images = load_images(paths, size=max(height, width), verbose=False)
            for image in images:
                if tuple(int(v) for v in image["true_shape"][0]) != (height, width):
                    raise ValueError(
                        f"load_images changed the frame size to {image['true_shape'][0]}; "
                        f"expected {(height, width)} (the planner's working size)"
                    )
            pairs = make_pairs(
                images, scene_graph=scene_graph_name(settings), prefilter=None, symmetrize=True
            )
            try:
                scene = sparse_global_alignment(
                    paths,
                    pairs,
                    str(Path(tmp) / "cache"),
                    self.model,
                    subsample=settings.subsample,
                    device=self.device,
                    lr1=settings.lr1,
                    niter1=settings.niter1,
                    lr2=settings.lr2,
                    niter2=settings.niter2,
                    opt_depth=settings.opt_depth,
                    shared_intrinsics=True,
                    opt_pp=False,
                    matching_conf_thr=settings.matching_conf_thr,
                )
                return self._window_depth(scene, frames_thw3, settings.subsample)
            except AssertionError as exc:
                raise AlignmentFailedError(
                    f"sparse global alignment stopped on an assertion ({exc or 'core_depth > 0'})"
                ) from exc
            except torch.cuda.OutOfMemoryError as exc:
                raise ResourceExhaustedError(
                    f"CUDA out of memory aligning {n} frames at {width}x{height}",
                    reason="DEPTH_OUT_OF_MEMORY",
                ) from exc

    def _window_depth(self, scene: Any, frames_thw3: np.ndarray, subsample: int) -> WindowDepth:
        """Anchor depths -> dense depth against the canonical depth maps; poses; intrinsics."""
        torch = self._torch
        n, height, width = frames_thw3.shape[:3]
        depth = np.zeros((n, height, width), np.float32)
        conf = np.zeros((n, height, width), np.float32)
        coarse = [d.detach().cpu().numpy() for d in scene.get_depthmaps()]
        for t in range(n):
            (canon, _canon2, canon_conf), _focal = torch.load(
                scene.canonical_paths[t], map_location="cpu", weights_only=True
            )
            prior_hw = canon[..., 2].numpy()
            if prior_hw.shape != (height, width):
                raise ValueError(f"canonical map {prior_hw.shape} is not {(height, width)}")
            grid = anchor_grid(coarse[t], height, width, subsample)
            guide = guide_from_rgb(frames_thw3[t])
            bad = bad_depth_mask(grid)
            if bad.all():
                depth[t] = np.nan  # nothing usable: left to the repair step
            else:
                depth[t] = upsample_anchor_depth(grid, height, width, subsample, guide, prior_hw)
                # Keep the alignment's failures visible to the repair step and quality figures.
                depth[t][nearest_anchor_mask(bad, height, width, subsample)] = np.nan
            conf[t] = confidence_from_mast3r(canon_conf.numpy())
        K_33 = scene.intrinsics[0].detach().cpu().numpy().astype(np.float64)
        c2w = scene.get_im_poses().detach().cpu().numpy().astype(np.float64)
        return WindowDepth(depth, conf, K_33, c2w_t44=c2w)
