"""OpenCV's DIS optical flow: no weights, CPU only, the default backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from services.common.cpus import usable_cpus
from services.flow.polish import polish_flow, take_neighbour_flow

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
# take_neighbour_flow's float images, grids, candidate flow and errors: counted, not measured.
_NEIGHBOUR_BYTES_PER_PIXEL = 96


def availability() -> tuple[bool, str]:
    return True, f"OpenCV {cv2.__version__} DIS, CPU; presets {', '.join(PRESETS)}"


class DisBackend:
    """Dense Inverse Search on grey images, the directed pairs of a batch on a pool of threads
    (OpenCV and NumPy release the GIL; a DIS instance of its own per pair)."""

    name = "dis"
    device = "cpu"
    model_bytes = 0

    def __init__(
        self,
        preset: str,
        variational_refinement: bool,
        polish_rounds: int,
        polish_window_px: float,
        neighbour_px: int,
    ):
        """polish_rounds: rounds of `polish.polish_flow` after DIS (0: none), with Lucas-Kanade
        windows of sigma `polish_window_px`; then `polish.take_neighbour_flow` from neighbours
        up to `neighbour_px` away (0: not)."""
        self._opencv_preset, self._finest_scale = PRESETS[preset]
        self._refinement_iterations = REFINEMENT_ITERATIONS if variational_refinement else 0
        self._polish_rounds = polish_rounds
        self._polish_window_px = polish_window_px
        self._neighbour_px = neighbour_px

    def item_bytes(self, height: int, width: int) -> int:
        per_pixel = _BYTES_PER_PIXEL + (_POLISH_BYTES_PER_PIXEL if self._polish_rounds else 0)
        per_pixel += _NEIGHBOUR_BYTES_PER_PIXEL if self._neighbour_px else 0
        return per_pixel * height * width

    def flow(self, src_bhw3: np.ndarray, dst_bhw3: np.ndarray) -> np.ndarray:
        """The engine sizes a batch so that all its pairs fit the memory budget at once."""
        if len(src_bhw3) != len(dst_bhw3):
            raise ValueError(f"{len(src_bhw3)} sources for {len(dst_bhw3)} targets")
        workers = max(1, min(len(src_bhw3), usable_cpus()))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gflow-dis") as pool:
            flows = list(pool.map(self._pair_flow, src_bhw3, dst_bhw3))
        return np.stack(flows).astype(np.float32, copy=False)

    def _pair_flow(self, src_hw3: np.ndarray, dst_hw3: np.ndarray) -> np.ndarray:
        src_hw = cv2.cvtColor(src_hw3, cv2.COLOR_RGB2GRAY)
        dst_hw = cv2.cvtColor(dst_hw3, cv2.COLOR_RGB2GRAY)
        flow_hw2 = self._new_dis().calc(src_hw, dst_hw, None)
        if self._polish_rounds:
            flow_hw2 = polish_flow(
                src_hw3, dst_hw3, flow_hw2, self._polish_rounds, self._polish_window_px
            )
        if self._neighbour_px:
            flow_hw2 = take_neighbour_flow(src_hw3, dst_hw3, flow_hw2, self._neighbour_px)
        return flow_hw2

    def _new_dis(self) -> cv2.DISOpticalFlow:
        """A DIS instance configured as asked: an OpenCV algorithm object is not safe to share
        between threads, and making one takes about 7 microseconds."""
        dis = cv2.DISOpticalFlow_create(self._opencv_preset)
        if self._finest_scale is not None:
            dis.setFinestScale(self._finest_scale)
        dis.setVariationalRefinementIterations(self._refinement_iterations)
        return dis
