"""OpenCV's DIS optical flow: no weights, CPU only, the default backend."""

from __future__ import annotations

import cv2
import numpy as np

from services.flow.polish import polish_flow

# Our preset name -> (OpenCV preset, the pyramid level the patch search ends at; None: the
# preset's own). OpenCV's medium stops at level 1, half resolution; "fine" is medium carried on
# to full resolution: 2-4x medium's time, and on the accuracy suite's clips 25-44 % lower
# end-point error (docs/flow.md).
PRESETS: dict[str, tuple[int, int | None]] = {
    "ultrafast": (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, None),
    "fast": (cv2.DISOPTICAL_FLOW_PRESET_FAST, None),
    "medium": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, None),
    "fine": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 0),
}
# OpenCV's own count for the fast and medium presets; ultrafast has refinement off.
REFINEMENT_ITERATIONS = 5
# A pyramid of grey images and flow fields per frame: a generous bound, in bytes per pixel.
_BYTES_PER_PIXEL = 64
# The polish's float images, gradients and sums: measured 222 bytes per pixel at 854x480.
_POLISH_BYTES_PER_PIXEL = 256


def availability() -> tuple[bool, str]:
    return True, f"OpenCV {cv2.__version__} DIS, CPU; presets {', '.join(PRESETS)}"


class DisBackend:
    """Dense Inverse Search on grey images, one directed pair at a time."""

    name = "dis"
    device = "cpu"
    model_bytes = 0

    def __init__(
        self,
        preset: str,
        variational_refinement: bool,
        polish_rounds: int,
        polish_window_px: float,
    ):
        """polish_rounds: rounds of `polish.polish_flow` after DIS (0: none), with Lucas-Kanade
        windows of sigma `polish_window_px`."""
        opencv_preset, finest_scale = PRESETS[preset]
        self._dis = cv2.DISOpticalFlow_create(opencv_preset)
        if finest_scale is not None:
            self._dis.setFinestScale(finest_scale)
        self._dis.setVariationalRefinementIterations(
            REFINEMENT_ITERATIONS if variational_refinement else 0
        )
        self._polish_rounds = polish_rounds
        self._polish_window_px = polish_window_px

    def item_bytes(self, height: int, width: int) -> int:
        per_pixel = _BYTES_PER_PIXEL + (_POLISH_BYTES_PER_PIXEL if self._polish_rounds else 0)
        return per_pixel * height * width

    def flow(self, src_bhw3: np.ndarray, dst_bhw3: np.ndarray) -> np.ndarray:
        flows = []
        for src_hw3, dst_hw3 in zip(src_bhw3, dst_bhw3, strict=True):
            src_hw = cv2.cvtColor(src_hw3, cv2.COLOR_RGB2GRAY)
            dst_hw = cv2.cvtColor(dst_hw3, cv2.COLOR_RGB2GRAY)
            flow_hw2 = self._dis.calc(src_hw, dst_hw, None)
            if self._polish_rounds:
                flow_hw2 = polish_flow(
                    src_hw3, dst_hw3, flow_hw2, self._polish_rounds, self._polish_window_px
                )
            flows.append(flow_hw2)
        return np.stack(flows).astype(np.float32, copy=False)
