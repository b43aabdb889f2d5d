"""What a depth backend returns for one window of frames, and how it says that it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.common.errors import GFlowError


class AlignmentFailedError(GFlowError):
    """The backend's alignment of one window broke (e.g. MASt3R's `core_depth > 0` assertion).

    The engine catches it and re-runs the window with safer settings; it never reaches a client.
    """

    reason = "DEPTH_ALIGNMENT_FAILED"


@dataclass
class WindowDepth:
    """Depth of one window at the backend's working resolution (h, w), before repair."""

    depth_thw: np.ndarray  # float32 [n, h, w]; may hold non-positive or non-finite values
    confidence_thw: np.ndarray  # float32 [n, h, w] in [0, 1]
    K_33: np.ndarray  # float64 intrinsics at the working resolution (shared by all frames)
    c2w_t44: np.ndarray | None = None  # float64 [n, 4, 4] camera-to-world, OpenCV axes
    prior_t: np.ndarray | None = None  # bool [n]: the frame's depth is the smooth prior
    flow_fwd_t1hw2: np.ndarray | None = None  # float32 [n-1, h, w, 2] if the backend made flow
    notes: list[str] = field(default_factory=list)  # what the backend decided, for `repairs`


class WindowBackend(Protocol):
    """A loaded model that estimates one window (MASt3R; see backends.mast3r.Mast3rBackend)."""

    def run_window(self, frames_thw3: np.ndarray, settings: Any) -> WindowDepth:
        """Depth of uint8 frames at the working size; raises AlignmentFailedError or
        ResourceExhaustedError (out of memory) instead of crashing."""
        ...
