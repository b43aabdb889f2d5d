"""How the flow stage computes: its configuration, apart from the engine and its backends so a
caller that only names a flow run (the pipeline, a remote-only `gflow run`) loads neither.

`FlowConfig` is what is computed (the content key takes all of it); `FlowRuntime` is how (the
device, the memory budget): never in the key, chosen by whoever runs the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.common.config import check_choices, check_device, check_positive
from services.common.errors import InvalidArgumentError

DisPreset = Literal["ultrafast", "fast", "medium", "fine"]


@dataclass
class FlowConfig:
    """How to compute flow. Every field has a default; `dis` needs no weights."""

    backend: Literal["dis", "raft", "unimatch"] = "dis"
    """dis: OpenCV DIS on the CPU; raft: torchvision RAFT; unimatch: UniMatch GMFlow."""
    dis_preset: DisPreset = "medium"
    """DIS quality preset (slower is better): OpenCV's three, and fine (medium's search carried
    on to full resolution: 25-44 % lower end-point error for about twice the time; not yet the
    default, see docs/flow.md, "DIS presets")."""
    variational_refinement: bool = True
    """DIS: 5 variational refinement iterations after the patch search (False: none)."""
    dis_polish: bool = True
    """DIS: then 3 Lucas-Kanade steps on the colour frames and another 5 refinement iterations
    (services/flow/polish.py), which take out DIS's lag on small moving objects (docs/flow.md,
    "Polish"). False: DIS's field as it is (faster; the accuracy suite's tracks lose by it)."""
    dis_polish_rounds: int = 1
    """DIS polish: how many times the Lucas-Kanade steps and the refinement run, each round
    started from the last. The refinement pulls a small object's flow part of the way back
    towards its surroundings, the next round's steps take part of that back: with 3 the
    accuracy suite's moving EPE falls 6-11 % and its floor AJ rises 0.015-0.033 at 256x192x24,
    for 2.5 times the flow stage's time; in `--best-tracks` (docs/flow.md, "Polish rounds and
    windows")."""
    dis_polish_window_px: float = 1.5
    """DIS polish: sigma (pixels) of the Gaussian window over which each pixel's Lucas-Kanade
    step is fitted. Smaller windows mix less of the surroundings into a small object's motion
    and more noise; 1 gave lower EPE and a higher floor AJ on every clip of the accuracy suite at
    96x72x12 and 256x192x24, and with 3 rounds higher AJ through the pipeline on every CPU row;
    in `--best-tracks` (docs/flow.md, "Polish rounds and windows")."""
    dis_neighbour_px: int = 0
    """DIS: last, each pixel may take the flow of a neighbour up to this many pixels away (8
    directions) where that flow maps the pixel's small window onto the next frame with less
    colour error, so that pixels along a moving object's outline move with their own side
    instead of a blend of both (services/flow/polish.py, `take_neighbour_flow`). 0: off, the
    default: 4 raises the tracks through the pipeline but moves the offline depth stage's
    cameras (docs/flow.md, "Flow taken from a neighbour at motion boundaries")."""
    raft_model: Literal["small", "large"] = "small"
    """Which torchvision RAFT; the weights file must be for this one."""
    raft_weights: Path | None = None
    """RAFT state dict (.pth) from torchvision's model zoo, e.g. raft_small_C_T_V2-01064c6d.pth."""
    raft_iterations: int = 12
    """RAFT recurrent refinement updates per pair."""
    unimatch_checkpoint: Path | None = None
    """UniMatch checkpoint, e.g. gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth."""
    extra_stride: int = 0
    """Also compute pairs (t, t + k) for this k >= 2; 0 = consecutive pairs only. A pipeline run
    sets it to depth.flow_stride (the offline depth triangulates from those pairs)."""
    fb_threshold_px: float = 1.0
    """A pixel is consistent when its forward-backward round trip misses by less than this."""

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field (the engine checks extra_stride
        against the clip's length)."""
        check_choices(self)
        if self.extra_stride != 0 and self.extra_stride < 2:
            raise InvalidArgumentError(
                "extra_stride", f"{self.extra_stride}: use 0 (none) or a stride of 2 or more"
            )
        check_positive("fb_threshold_px", self.fb_threshold_px)
        check_positive("dis_polish_window_px", self.dis_polish_window_px)
        if self.dis_polish_rounds < 1:
            raise InvalidArgumentError(
                "dis_polish_rounds",
                f"{self.dis_polish_rounds} must be >= 1 (no polish: dis_polish=false)",
            )
        if self.dis_neighbour_px < 0:
            raise InvalidArgumentError(
                "dis_neighbour_px", f"{self.dis_neighbour_px} must be >= 0 (0: off)"
            )
        if self.raft_iterations < 1:
            raise InvalidArgumentError("raft_iterations", f"{self.raft_iterations} must be >= 1")


@dataclass(frozen=True)
class FlowRuntime:
    """Where and within what memory flow is computed. Never in the content key: another device
    or batch size changes the flow by floating-point differences only."""

    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N; dis always runs on the CPU."""
    memory_budget_gb: float = 6.0
    """Memory one batch may use on the device (GiB); the default fits a 6 GB card."""

    def __post_init__(self) -> None:
        check_device(self.device)
        check_positive("memory_budget_gb", self.memory_budget_gb)


# Request fields that only the server's operator may set, and the variables that set them.
SERVER_FIELDS = {
    "raft_weights": "GFLOW_RAFT_WEIGHTS",
    "unimatch_checkpoint": "GFLOW_UNIMATCH_CHECKPOINT",
}
WEIGHTS_FIELD = {"raft": "raft_weights", "unimatch": "unimatch_checkpoint"}
"""The weights field of each backend that reads one (dis reads none)."""
