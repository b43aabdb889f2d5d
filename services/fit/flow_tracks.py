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
from services.fit.motion import FB_TOLERANCE_PX, comes_back, flow_round_trip, inside_image

CARRY_RADIUS_PX = 24.0  # pixels around a hidden point whose flow may stand for its object's
CARRY_MIN_PIXELS = 6  # fewer such pixels: the point keeps its last step
CARRY_SPEED_SHARE = 0.3  # a pixel moves with the point where its flow is within this share of
# the point's last step (at least FB_TOLERANCE_PX)
CARRY_MAX_CONDITION = 1e3  # a worse-conditioned affine fit (a sliver of pixels): their mean flow


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


def carried_through_occlusion(
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    inside_thw: np.ndarray,
    xy_2: np.ndarray,
    step_2: np.ndarray,
    t_start: int,
    direction: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A moving point carried on from frame `t_start`, where it is seen and has just moved by
    `step_2`, to the clip's end (`direction` 1) or start (-1), by its object's motion while it is
    hidden: (points float64 [T, 2], hidden bool [T]), both set only in the frames carried to.

    A seen point moves by its own flow, read inside the masks `inside_thw` (first order on their
    outline). A hidden one (behind another object, or outside the image) moves by the flow of
    the pixels inside the masks within `CARRY_RADIUS_PX` that move like its last step and hold
    their own round trip (its object's visible part; the occluder moves otherwise), fitted by
    one weighted affine map and read at the point; with fewer than `CARRY_MIN_PIXELS` of them it
    repeats its last step. It is seen again where it lies in the image and the flow back from
    there returns it to where it came from (within `FB_TOLERANCE_PX` of that while it was seen,
    within `CARRY_SPEED_SHARE` of its step while hidden)."""
    T, H, W = inside_thw.shape
    points_t2 = np.zeros((T, 2), np.float64)
    hidden_t = np.zeros(T, bool)
    xy_2 = np.asarray(xy_2, np.float64).copy()
    step_2 = np.asarray(step_2, np.float64).copy()
    seen = True
    frames = range(t_start, T - 1) if direction == 1 else range(t_start, 0, -1)
    for t in frames:
        if direction == 1:
            flow, back, nxt = flow_fwd_t1hw2[t], flow_bwd_t1hw2[t], t + 1
        else:
            flow, back, nxt = flow_bwd_t1hw2[t - 1], flow_fwd_t1hw2[t - 1], t - 1
        if seen:
            moved_12, returns_1 = flow_round_trip(
                flow, back, xy_2[None], FB_TOLERANCE_PX, inside_thw[t], inside_thw[nxt], True
            )
        else:
            step_2 = _object_step(flow, back, inside_thw[t], inside_thw[nxt], xy_2, step_2)
            moved_12 = xy_2[None] + step_2
            returns_1 = comes_back(
                back, moved_12, xy_2[None], _speed_tolerance(step_2), inside_thw[nxt]
            )
        step_2, xy_2 = moved_12[0] - xy_2, moved_12[0]
        seen = bool(returns_1[0] and inside_image(moved_12, H, W)[0])
        points_t2[nxt], hidden_t[nxt] = xy_2, not seen
    return points_t2, hidden_t


def _speed_tolerance(step_2: np.ndarray) -> float:
    """How far a flow may differ from a step and still be the same motion: an object's flow
    varies across it with its turn and its depth, more the faster it moves."""
    return max(FB_TOLERANCE_PX, CARRY_SPEED_SHARE * float(np.linalg.norm(step_2)))


def _object_step(
    flow_hw2: np.ndarray,
    back_hw2: np.ndarray,
    inside_hw: np.ndarray,
    inside_next_hw: np.ndarray,
    xy_2: np.ndarray,
    last_step_2: np.ndarray,
) -> np.ndarray:
    """The step [2] of a hidden point: its object's visible part's flow around it
    (`carried_through_occlusion`)."""
    H, W = inside_hw.shape
    r = int(np.ceil(CARRY_RADIUS_PX))
    x0, y0 = int(np.floor(xy_2[0])), int(np.floor(xy_2[1]))
    rows_y = slice(min(max(y0 - r, 0), H), max(min(y0 + r + 2, H), 0))
    cols_x = slice(min(max(x0 - r, 0), W), max(min(x0 + r + 2, W), 0))
    grid_y, grid_x = np.mgrid[rows_y, cols_x]
    pixel_n2 = np.stack([grid_x, grid_y], axis=-1).reshape(-1, 2).astype(np.float64)
    offset_n2 = pixel_n2 - xy_2
    flow_n2 = flow_hw2[rows_y, cols_x].reshape(-1, 2).astype(np.float64)
    near_n = inside_hw[rows_y, cols_x].reshape(-1) & (
        np.linalg.norm(offset_n2, axis=1) <= CARRY_RADIUS_PX
    )
    near_n &= np.linalg.norm(flow_n2 - last_step_2, axis=1) <= _speed_tolerance(last_step_2)
    _, holds_n = flow_round_trip(
        flow_hw2, back_hw2, pixel_n2[near_n], FB_TOLERANCE_PX, None, inside_next_hw
    )
    offset_m2, flow_m2 = offset_n2[near_n][holds_n], flow_n2[near_n][holds_n]
    if len(offset_m2) < CARRY_MIN_PIXELS:
        return last_step_2
    weight_m = np.exp(-(offset_m2**2).sum(axis=1) / (2 * (CARRY_RADIUS_PX / 2) ** 2))
    design_m3 = np.column_stack([np.ones(len(offset_m2)), offset_m2]) * np.sqrt(weight_m)[:, None]
    if np.linalg.cond(design_m3) >= CARRY_MAX_CONDITION:
        return flow_m2.mean(axis=0)
    solution_32, *_ = np.linalg.lstsq(design_m3, flow_m2 * np.sqrt(weight_m)[:, None], rcond=None)
    return solution_32[0]
