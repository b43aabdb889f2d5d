"""Tracks carried by the optical flow alone, no 3D at all: the accuracy suite's floor, and the
evidence the fit's track readout checks its occlusion flags against (`tracks.FlowChain`).

A query pixel is carried frame to frame by the forward flow (and, before its query frame, by the
backward flow), read bilinearly at its sub-pixel position. It is reported occluded where the flow
pair disagrees (forward then backward does not come back within `fb_tolerance_px`) or where it
has left the image. A 4D model whose tracks do not beat this is not using its 3D. The fit's
readout may read the flow of some queries from inside a mask only (`inside_thw`): at an object's
outline a bilinear read blends the object's flow with the background's.
"""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgumentError
from services.fit.motion import FB_TOLERANCE_PX, flow_round_trip, inside_image


def chained_flow_tracks(
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    queries_q3: np.ndarray,
    fb_tolerance_px: float = FB_TOLERANCE_PX,
    inside_thw: np.ndarray | None = None,
    reads_inside_q: np.ndarray | None = None,
    extrapolate_inside: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Tracks of query rows (t, y, x): (points float32 [Q, T, 2] as (x, y), occluded bool [Q, T]).

    A step whose flows disagree marks the point occluded in the frame it reaches; the position is
    still carried on by the flow there, as a tracker without re-detection would. Given masks
    `inside_thw` (bool [T, H, W]) and `reads_inside_q` (bool [Q]), those queries read both flows
    of each step from pixels inside the mask of the frame each is read in (a point with no such
    pixel around it reads them plainly); with `extrapolate_inside` their moves read the flow on
    the mask's outline to first order (`sample_extrapolated`: the object's own flow carried on to
    the point, not its nearest inside pixel's), their round trips as before."""
    queries_q3 = np.asarray(queries_q3, np.float64)
    if queries_q3.ndim != 2 or queries_q3.shape[1] != 3:
        raise InvalidArgumentError(
            "queries_q3", f"need [Q, 3] rows of (t, y, x), got {queries_q3.shape}"
        )
    T = len(flow_fwd_t1hw2) + 1
    H, W = flow_fwd_t1hw2.shape[1:3]
    Q = len(queries_q3)
    points_qt2 = np.zeros((Q, T, 2), np.float64)
    occluded_qt = np.ones((Q, T), bool)
    t_q = queries_q3[:, 0].astype(np.int64)
    if Q and (t_q.min() < 0 or t_q.max() >= T):
        raise InvalidArgumentError("queries_q3", f"query frames must lie in 0..{T - 1}")
    if (inside_thw is None) != (reads_inside_q is None):
        raise InvalidArgumentError(
            "inside_thw", "give the masks and the queries that read inside them together"
        )
    if inside_thw is not None and (inside_thw.shape != (T, H, W) or reads_inside_q.shape != (Q,)):
        raise InvalidArgumentError(
            "inside_thw",
            f"shapes {inside_thw.shape} and {reads_inside_q.shape}: "
            f"need ({T}, {H}, {W}) and ({Q},)",
        )
    inside_q = np.zeros(Q, bool) if reads_inside_q is None else np.asarray(reads_inside_q, bool)
    for t0 in np.unique(t_q):
        rows = np.flatnonzero(t_q == t0)
        inside_r = inside_q[rows]
        start_r2 = queries_q3[rows][:, [2, 1]]
        points_qt2[rows, t0] = start_r2
        occluded_qt[rows, t0] = False
        for direction, frames in ((1, range(t0, T - 1)), (-1, range(t0, 0, -1))):
            xy_r2, agree_r = start_r2.copy(), np.ones(len(rows), bool)
            for t in frames:
                if direction == 1:
                    flow, back, nxt = flow_fwd_t1hw2[t], flow_bwd_t1hw2[t], t + 1
                else:
                    flow, back, nxt = flow_bwd_t1hw2[t - 1], flow_fwd_t1hw2[t - 1], t - 1
                plain = ~inside_r
                xy_r2[plain], agree_r[plain] = flow_round_trip(
                    flow, back, xy_r2[plain], fb_tolerance_px
                )
                if inside_r.any():
                    xy_r2[inside_r], agree_r[inside_r] = flow_round_trip(
                        flow,
                        back,
                        xy_r2[inside_r],
                        fb_tolerance_px,
                        inside_thw[t],
                        inside_thw[nxt],
                        extrapolate_inside,
                    )
                points_qt2[rows, nxt] = xy_r2
                occluded_qt[rows, nxt] = ~(agree_r & inside_image(xy_r2, H, W))
    return points_qt2.astype(np.float32), occluded_qt
