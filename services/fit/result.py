"""What a fit gives: the outputs recorded per finished frame, and the result handed back.

`FitOutputs` grows frame by frame inside the engine (and is what a checkpoint carries besides the
model); `FitResult` is the same record as arrays, plus the run's timing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from services.common.image_metrics import psnr
from services.fit.gaussians import FrameGaussians
from services.fit.losses import TERMS


@dataclass
class FitResult:
    """What a fit recovers, per frame (T frames of H x W pixels)."""

    c2w_t44: np.ndarray  # float64 [T, 4, 4] camera-to-world, OpenCV axes, frame 0's world
    K_33: np.ndarray  # float64 intrinsics (as given)
    frames: list[FrameGaussians]  # the Gaussians at each frame
    psnr_t: np.ndarray  # float64 [T] reconstruction PSNR (dB) of each frame
    moving_share_t: np.ndarray  # float64 [T] share of the Gaussians in the moving set
    # float64 [T] factor each frame's depth prior was scaled by to meet the model (1 on frame 0
    # and for a prior consistent with it; clipped to camera.DEPTH_SCALE_RANGE): a drifting prior
    # shows here
    depth_scale_t: np.ndarray
    depth_thw: np.ndarray  # float32 [T, H, W] rendered depth (0 where nothing is rendered)
    # bool [T, H, W] pixels the moving set dominates (within the priors' moving masks where those
    # are hard: `FitPriors.hard_moving_masks`)
    moving_mask_thw: np.ndarray
    # int64 [T] pixels densification wanted and `max_points` refused (0 where the cap did not
    # bite): new content on those frames stayed uncovered
    held_back_t: np.ndarray
    seconds: float  # fitting time summed over every run that contributed (resumes included)
    resumed_from: int | None = None  # last frame of the checkpoint this run resumed from
    # the fitting time split by phase (camera_refine, optimise, densify, ...)
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # losses.TERMS name -> float64 [T]: the unweighted term at each frame's last optimisation
    # step; NaN where it was not in the frame's loss (still and flow on frame 0)
    loss_terms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def height(self) -> int:
        return self.depth_thw.shape[1]

    @property
    def width(self) -> int:
        return self.depth_thw.shape[2]


@dataclass
class FitOutputs:
    """Everything recorded per finished frame (one entry per frame in each list)."""

    c2w: list[np.ndarray] = dataclasses.field(default_factory=list)  # float64 [4, 4]
    frames: list[FrameGaussians] = dataclasses.field(default_factory=list)
    psnr: list[float] = dataclasses.field(default_factory=list)
    moving_share: list[float] = dataclasses.field(default_factory=list)
    depth_scale: list[float] = dataclasses.field(default_factory=list)
    depth: list[np.ndarray] = dataclasses.field(default_factory=list)  # float32 [H, W]
    moving_mask: list[np.ndarray] = dataclasses.field(default_factory=list)  # bool [H, W]
    # pixels densification wanted and `max_points` refused, summed over the frame's passes
    held_back: list[int] = dataclasses.field(default_factory=list)
    # each of losses.TERMS at the frame's last optimisation step; NaN where it was not in the loss
    loss_terms: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {name: [] for name in TERMS}
    )

    def add_frame(
        self,
        c2w_44: np.ndarray,
        frame: FrameGaussians,
        moving_share: float,
        rgb_hw3: np.ndarray,
        target_hw3: np.ndarray,
        depth_hw: np.ndarray,
        moving_mask_hw: np.ndarray,
        held_back: int,
    ) -> None:
        """Records a finished frame: its pose, Gaussians and their moving share, its render
        (float [0, 1]) scored against the input frame (uint8), rendered depth and moving mask,
        and the pixels the Gaussian cap kept from densification."""
        self.c2w.append(c2w_44)
        self.frames.append(frame)
        self.psnr.append(psnr(rgb_hw3, target_hw3 / 255.0, max_value=1.0))
        self.moving_share.append(moving_share)
        self.depth.append(depth_hw)
        self.moving_mask.append(moving_mask_hw)
        self.held_back.append(held_back)

    def add_loss_terms(self, values: dict[str, float]) -> None:
        """Records a frame's loss terms (NaN for those not in its loss)."""
        for name in TERMS:
            self.loss_terms[name].append(values.get(name, math.nan))

    def since(self, first: int) -> FitOutputs:
        """The record of frames `first` onwards (what a checkpoint adds to the ones before)."""
        return FitOutputs(
            **{
                f.name: getattr(self, f.name)[first:]
                for f in dataclasses.fields(self)
                if f.name != "loss_terms"
            },
            loss_terms={name: values[first:] for name, values in self.loss_terms.items()},
        )

    def extend(self, later: FitOutputs) -> None:
        """Appends the record of the frames that follow these (`since`'s inverse)."""
        for f in dataclasses.fields(self):
            if f.name != "loss_terms":
                getattr(self, f.name).extend(getattr(later, f.name))
        for name, values in later.loss_terms.items():
            self.loss_terms[name].extend(values)

    def to_result(
        self,
        K_33: np.ndarray,
        seconds: float,
        phase_seconds: dict[str, float],
        resumed_from: int | None,
    ) -> FitResult:
        return FitResult(
            c2w_t44=np.stack(self.c2w),
            K_33=K_33.copy(),
            frames=self.frames,
            psnr_t=np.array(self.psnr),
            moving_share_t=np.array(self.moving_share),
            depth_scale_t=np.array(self.depth_scale, np.float64),
            depth_thw=np.stack(self.depth),
            moving_mask_thw=np.stack(self.moving_mask),
            held_back_t=np.array(self.held_back, np.int64),
            seconds=seconds,
            phase_seconds=dict(phase_seconds),
            resumed_from=resumed_from,
            loss_terms={k: np.array(v, np.float64) for k, v in self.loss_terms.items()},
        )
