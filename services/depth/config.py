"""How the depth stage computes: its configuration, apart from the engine and its backends so a
caller that only names a depth run (the pipeline, a remote-only `gflow run`) loads neither.

`DepthConfig` is what is computed (the content key takes all of it); `DepthRuntime` is how (the
device, the memory budget): never in the key, chosen by whoever runs the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.common.config import check_choices, check_device, check_positive
from services.common.errors import InvalidArgumentError
from services.depth.planner import MIN_WINDOW

MIN_SIDE_PX = 16  # smallest frame side (and offline working long side) depth works at
MEASURED_DEPTH_CONFIDENCE = 0.1
"""Depth-prior confidence from which a pixel's depth counts as measured. The offline depth
backend gives pixels it filled from their surroundings 0.05 (every moving object among them: it
has no parallax to measure there) and frames on its smooth prior 0.02; MASt3R's confidence
(1 - 1/conf) passes from a raw confidence of 1.11 up."""


@dataclass
class DepthConfig:
    """How to estimate depth. Every field has a default; `offline` needs no weights."""

    backend: Literal["offline", "mast3r"] = "offline"
    """offline: motion parallax from optical flow, no weights; mast3r: MASt3R from a checkpoint."""
    mast3r_checkpoint: Path | None = None
    """MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth (see the MASt3R README)."""
    mast3r_trust_checkpoint: bool = False
    """Allow a full unpickle when the checkpoint does not load with weights_only=True."""
    focal_px: float | None = None
    """offline: focal length in pixels at the frames' resolution; None: from fov_deg."""
    fov_deg: float = 60.0
    """offline: assumed horizontal field of view when focal_px is not given."""
    window: int = 16
    """Most frames per window (mast3r: the memory plan may choose fewer)."""
    overlap: int = 4
    """Frames shared by consecutive windows (their scale is fitted there)."""
    subsample: int = 8
    """mast3r: anchor spacing of the sparse alignment (px); the artefact score checks it."""
    mast3r_scene_graph: Literal["logwin", "swin"] = "logwin"
    """mast3r pair graph: logwin pairs offsets 1, 2, 4, ...; swin the next frames."""
    mast3r_winsize: int = 3
    """mast3r: neighbours per side in the pair graph."""
    mast3r_niter: int = 300
    """mast3r: iterations of each of the two alignment phases (MASt3R's demo: 300 each)."""
    mast3r_long_side: int = 512
    """mast3r: largest working long side (px, a multiple of 16; the model was trained at 512);
    the memory plan may choose a smaller one. Lower is faster and less detailed."""
    offline_long_side: int = 512
    """offline: frames are processed with at most this long side, then upsampled edge-aware."""
    flow_stride: int = 3
    """offline: also triangulate frames this far apart (a wider baseline); the flow stage
    computes their flow (its extra_stride: the pipeline asks for it)."""
    min_parallax_deg: float = 0.5
    """offline: median ray angle (deg) a partner frame needs to triangulate against."""
    min_parallax_px: float = 1.0
    """offline: median flow that no pure rotation explains, likewise, in px at a 512-px long
    side (scaled with the working size, never below 0.5 px); a frame with no such partner (the
    camera barely translates) gets the smooth prior."""
    offline_bundle_adjust: bool = True
    """offline: refine every camera of a window and a sample of still points together on the
    flow of all its frame pairs (Levenberg-Marquardt; points left far off, e.g. on moving
    objects, dropped), then triangulate each frame again with those poses; a window with a frame
    on the prior skips it. The depth stage's cameras come out 6-23x closer to the truth and,
    kept by the fit (its `camera_from_prior_poses`), the accuracy suite's moving cameras within
    0.4 % of their path (docs/depth.md, "Bundle adjustment"). False: the chained poses alone."""
    max_fill_share: float = 0.3
    """A frame with more bad depths than this share is re-run rather than filled."""
    stitch_shift: bool = False
    """Fit a depth shift as well as a scale between windows (breaks pose consistency)."""

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field."""
        check_choices(self)
        check_positive("focal_px", self.focal_px)
        check_positive("min_parallax_deg", self.min_parallax_deg)
        check_positive("min_parallax_px", self.min_parallax_px)
        if not 10.0 <= self.fov_deg <= 150.0:
            raise InvalidArgumentError("fov_deg", f"{self.fov_deg} is outside 10..150 degrees")
        if self.window < MIN_WINDOW:
            raise InvalidArgumentError("window", f"{self.window} must be >= {MIN_WINDOW}")
        if not 1 <= self.overlap < self.window:
            raise InvalidArgumentError(
                "overlap", f"{self.overlap}: needs 1 <= overlap < window ({self.window})"
            )
        if self.subsample not in (2, 4, 8, 16):
            raise InvalidArgumentError("subsample", f"{self.subsample}: use 2, 4, 8 or 16")
        for name in ("mast3r_niter", "mast3r_winsize", "flow_stride"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(name, f"{getattr(self, name)} must be >= 1")
        if self.offline_long_side < MIN_SIDE_PX:
            raise InvalidArgumentError(
                "offline_long_side", f"{self.offline_long_side} must be >= {MIN_SIDE_PX}"
            )
        if not 0.0 < self.max_fill_share < 1.0:
            raise InvalidArgumentError("max_fill_share", f"{self.max_fill_share} must be in (0, 1)")


@dataclass(frozen=True)
class DepthRuntime:
    """Where and within what memory depth is estimated. Never in the content key (a budget of
    None already means whatever the device has free at the time); under a tighter budget
    MASt3R's memory plan may choose shorter windows or a smaller working size, and the stage's
    report records the plan it used."""

    device: str = "auto"
    """mast3r: auto (CUDA when present), cpu, cuda or cuda:N; offline always runs on the CPU."""
    memory_budget_gb: float | None = None
    """GPU memory MASt3R may plan for (GiB); None: the free memory of the device now."""

    def __post_init__(self) -> None:
        check_device(self.device)
        check_positive("memory_budget_gb", self.memory_budget_gb)


def needed_stride(flow_stride: int, n_frames: int) -> int:
    """The flow stage's `extra_stride` that gives the offline backend its wide-baseline pairs on a
    clip of `n_frames`; 0 where none fit (a stride of 1, or a clip no longer than the stride)."""
    return flow_stride if 2 <= flow_stride < n_frames else 0


WEIGHTS_FIELD = {"mast3r": "mast3r_checkpoint"}
"""The weights field of each backend that reads one (offline reads none)."""

# Request fields that only the server's operator may set, and the variables that set them.
SERVER_FIELDS = {
    "mast3r_checkpoint": "GFLOW_MAST3R_CHECKPOINT",
    "mast3r_trust_checkpoint": "GFLOW_MAST3R_TRUST_CHECKPOINT",
}
