"""What a fit takes: a clip and the priors of the earlier stages, checked before any work starts.

The engine, the checkpoint fingerprint and the videos all read this one type; `validate` names
the first field that cannot be used, so a bad request fails before the fit spends any time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.masks import widened_scores_thw
from services.depth.config import MEASURED_DEPTH_CONFIDENCE


@dataclass
class FitPriors:
    """A clip and the priors of the earlier stages (T frames of H x W pixels)."""

    frames_thw3: np.ndarray  # uint8 [T, H, W, 3] RGB
    depth_thw: np.ndarray  # float32 [T, H, W] camera z, one scale for the clip; <= 0 = unknown
    K_33: np.ndarray  # float64 intrinsics, pixel centres at integer coordinates
    flow_fwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] (dx, dy) from frame t to t+1
    flow_bwd_t1hw2: np.ndarray | None  # float32 [T-1, H, W, 2] from t+1 to t, or None
    moving_thw: np.ndarray  # float32 [T, H, W] moving score in [0, 1], or bool
    c2w_t44: np.ndarray | None = None  # float64 [T, 4, 4] initial poses from the depth stage
    depth_confidence_thw: np.ndarray | None = None  # float32 [T, H, W] in [0, 1]; None: measured

    def hard_moving_masks(self) -> np.ndarray | None:
        """Bool [T, H, W] moving masks where `moving_thw` is hard (every score 0 or 1: exact
        masks, or the user's), which then say which pixels belong to a moving object; None for
        soft scores (the segment stage's: an estimate, widened by its margin)."""
        moving_thw = np.asarray(self.moving_thw)
        if np.all((moving_thw == 0) | (moving_thw == 1)):
            return moving_thw == 1
        return None

    def depth_measured_hw(self, t: int) -> np.ndarray:
        """Bool [H, W]: pixels of frame t whose prior depth is known and measured
        (`MEASURED_DEPTH_CONFIDENCE`), not filled in or assumed."""
        known_hw = self.depth_thw[t] > 0
        if self.depth_confidence_thw is None:
            return known_hw
        return known_hw & (self.depth_confidence_thw[t] >= MEASURED_DEPTH_CONFIDENCE)

    def with_moving_widened(self, pixels: int) -> FitPriors:
        """The priors with each pixel's moving score raised to the highest within `pixels` of it
        (`widened_scores_thw`): every moving mask `pixels` wider on each side."""
        if pixels == 0:
            return self
        return dataclasses.replace(self, moving_thw=widened_scores_thw(self.moving_thw, pixels))

    def first_frames(self, n: int) -> FitPriors:
        """The clip's first n frames and their priors (a warm-up fit, a shorter study)."""
        flow_bwd = None if self.flow_bwd_t1hw2 is None else self.flow_bwd_t1hw2[: n - 1]
        return FitPriors(
            frames_thw3=self.frames_thw3[:n],
            depth_thw=self.depth_thw[:n],
            K_33=self.K_33,
            flow_fwd_t1hw2=self.flow_fwd_t1hw2[: n - 1],
            flow_bwd_t1hw2=flow_bwd,
            moving_thw=self.moving_thw[:n],
            c2w_t44=None if self.c2w_t44 is None else self.c2w_t44[:n],
            depth_confidence_thw=None
            if self.depth_confidence_thw is None
            else self.depth_confidence_thw[:n],
        )

    def validate(self) -> None:
        """Raises InvalidArgumentError naming the first field that cannot be used."""
        frames = self.frames_thw3
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InvalidArgumentError(
                "frames_thw3", f"need uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        T, H, W = frames.shape[:3]
        if T < 1 or H < 8 or W < 8:
            raise InvalidArgumentError("frames_thw3", f"need T >= 1 and H, W >= 8; got {T}x{H}x{W}")
        _check_array("depth_thw", self.depth_thw, (T, H, W))
        _check_array("flow_fwd_t1hw2", self.flow_fwd_t1hw2, (T - 1, H, W, 2))
        if self.flow_bwd_t1hw2 is not None:
            _check_array("flow_bwd_t1hw2", self.flow_bwd_t1hw2, (T - 1, H, W, 2))
        _check_array("moving_thw", self.moving_thw, (T, H, W))
        _check_unit_interval("moving_thw", np.asarray(self.moving_thw, np.float32), "scores")
        if self.depth_confidence_thw is not None:
            _check_array("depth_confidence_thw", self.depth_confidence_thw, (T, H, W))
            _check_unit_interval("depth_confidence_thw", self.depth_confidence_thw, "confidences")
        positive_t = (self.depth_thw > 0).reshape(T, -1).any(axis=1)
        if not positive_t.all():
            raise InvalidArgumentError(
                "depth_thw",
                f"frame {int(np.argmin(positive_t))} has no positive depth; "
                "re-run the depth stage (non-positive depth marks unknown pixels)",
            )
        _check_array("K_33", self.K_33, (3, 3))
        if not (self.K_33[0, 0] > 0 and self.K_33[1, 1] > 0):
            raise InvalidArgumentError("K_33", "focal lengths must be positive")
        if self.c2w_t44 is not None:
            _check_array("c2w_t44", self.c2w_t44, (T, 4, 4))
            if not np.allclose(self.c2w_t44[:, 3], [0.0, 0.0, 0.0, 1.0]):
                raise InvalidArgumentError("c2w_t44", "last rows must be [0, 0, 0, 1]")


def _check_unit_interval(field: str, array: np.ndarray, what: str) -> None:
    if array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
        raise InvalidArgumentError(field, f"{what} must lie in [0, 1]")


def _check_array(field: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray) or array.shape != shape:
        got = array.shape if isinstance(array, np.ndarray) else type(array).__name__
        raise InvalidArgumentError(field, f"expected shape {shape}, got {got}")
    if array.dtype != bool and not np.isfinite(array).all():
        raise InvalidArgumentError(field, "contains NaN or infinite values")
