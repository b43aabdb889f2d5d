"""Point tracks from a fit: a query pixel follows the Gaussian that dominates it.

A query (t, y, x) (TAP-Vid layout) is attached to the Gaussian with the largest blending weight
alpha_i * T_i at that pixel of frame t, the same weight the renderer composites with; given the
clip's moving masks (FitConfig's `tracks_moving_by_mask`, on by default), a pixel a mask surely
covers (`MASK_SURE_SCORE`) that a still Gaussian dominates attaches to the moving Gaussian of
largest weight there instead, at that Gaussian's depth where it lies in front. The query's
point is lifted at the rendered depth there, or, where that Gaussian is moving, at the front
surface when it lies clearly nearer (`FRONT_SURFACE_GAP`): the rendered depth is a blending-weighted
mean, which at a moving object's outline sinks towards the background behind it. The track is the
point carried by its Gaussian's centre through time: in 3D as is, in 2D projected by each frame's
camera. Before the Gaussian is born it is held at its first position, after it is pruned at its
last, and it is reported occluded there. Otherwise it is occluded when it projects outside the
image or lies behind the rendered surface (its camera z beyond the rendered depth by more than
`motion.VISIBLE_DEPTH_TOLERANCE`); given the clip's frames (FitConfig's `occlusion_from_frames`, on
by default), a point the surface hides counts as visible where the frame shows the query's colours
there (`APPEARANCE_MATCH_LEVELS`); given the clip's flows (its
`occlusion_from_flow_where_unmeasured`, on by default), a point the surface hides in a frame whose
depth prior measured nothing counts as visible where the flow's forward-backward check holds at it
(`FlowCheck`); with its `tracks_with_flow_chain` (on by default), where the flow chained from the
query reaches the track point, the point counts as visible, and a query on a moving Gaussian is
reported at the chained flow's point wherever the chain holds (the flow read inside the
priors' moving masks where those are hard, its `tracks_chain_inside_masks`; where they are soft,
the points chained along the flow each pixel takes from a neighbour, its
`tracks_chain_neighbour_px`), one on a still Gaussian midway between the two where they lie
close (`FlowChain`). Where the masks are hard, a moving query whose chain held and then failed a
round trip is carried on through the occlusion by the flow of its object's visible part, and
reported hidden where the flow does not show it (`FlowChain.carried`).

That is `motion="gaussian"`. With `motion="local_rigid"` (FitConfig's default) a query on a
moving Gaussian instead moves with the rigid motion of the moving Gaussians around it
(`RIGID_NEIGHBOURS` nearest at the query frame, weighted Kabsch each frame, refitted with residual
weights) in the frames where that turn explains their motion (`RIGID_RESIDUAL_SHARE`): a fixed
world offset from one Gaussian's centre does not turn with a spinning object. Its occlusion flags
stay those of the point carried by its Gaussian (docs/fit.md, "Tracks that turn with the
object").

With `motion="local_affine"` (opt-in) a moving query's pixel also follows the image motion of the
moving Gaussians around it: in the frames where one affine map of the image carries their
centres' pixels (`AFFINE_RESIDUAL_SHARE`), the point goes to where that map puts the query pixel,
at the camera z local_rigid gives it. With exact priors that raises AJ on every clip of the
accuracy suite; through DIS flow it costs some rows a little (docs/fit.md, "Tracks that follow
the image motion around them").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from services.common.cpus import usable_cpus
from services.common.errors import InvalidArgumentError
from services.common.geometry import backproject_p3, project_p2, weighted_rigid_fit
from services.common.sampling import sample_bilinear
from services.fit.config import FitConfig, TrackMotion
from services.fit.engine import FitResult
from services.fit.flow_tracks import carried_through_occlusion, chained_flow_tracks
from services.fit.motion import flow_round_trip, inside_image, nearest_pixel, visible_n
from services.fit.priors import FitPriors
from services.fit.projection import project_gaussians
from services.fit.rasterizer_torch import gaussian_alpha
from services.flow.polish import take_neighbour_flow

_QUERY_CHUNK = 256  # queries weighed against all Gaussians at once (memory: chunk x N floats)

RIGID_NEIGHBOURS = 16
"""Moving Gaussians whose motion carries a `local_rigid` query (nearest to its point at the query
frame)."""
RIGID_MIN_NEIGHBOURS = 4
"""Fewer of them alive in a frame: the query's point moves with its Gaussian there."""
RIGID_OFF_CLOUD = 2.0
"""A query point farther from its nearest neighbour than this many times the neighbours' median
spacing lies off the object (its lift sank behind an outline), where a rotation about the
neighbours would swing it far: it moves with its Gaussian."""
RIGID_REFITS = 3
"""Refits of each frame's rigid motion with Cauchy weights on the residuals (Gaussians that
drift or belong to another object count less)."""
RIGID_RESIDUAL_SHARE = 0.5
"""A frame's rigid motion carries the point only where it leaves the neighbours less than this
share of the residual that their mean translation leaves (weighted RMS): the turn must explain
most of their motion. Elsewhere (a neighbourhood that moves as one, or whose Gaussians wander
too much for a turn to tell) the point is the carried one."""

AFFINE_RESIDUAL_SHARE = 0.5
"""`local_affine`: the neighbours' image motion from the query frame to another must fit one
affine map of the image to within this share of the residual their mean shift leaves (weighted
RMS, pixels) for the map to carry the query's pixel there: a moving object whose centres the flow
carries coherently (exact or clean flow), not Gaussians that wander about the flow's noise."""
AFFINE_DISTANCE_FLOOR_PX = 0.5
"""Neighbours weigh 1 / (their distance in pixels from the query at its frame + this)."""
AFFINE_MAX_CONDITION = 1e8
"""Neighbours whose centres lie (nearly) on one line do not determine an affine map."""

APPEARANCE_MATCH_LEVELS = 16.0
"""With the frames given, a track point the model reports hidden (behind or off its rendered
surface) counts as visible where the frame shows the query's colours there: the mean absolute
RGB difference (0-255) between the 3x3 patch around the point and the one around the query in
its frame is at most this. What renders in front of such points is often a Gaussian born later
from another frame's depth prior, or a moving one, not what the image shows (docs/fit.md,
"Occlusion flags the frames confirm")."""
APPEARANCE_PATCH_OFFSETS_P2 = np.array(
    [(dx, dy) for dy in (-1.0, 0.0, 1.0) for dx in (-1.0, 0.0, 1.0)]
)
"""The 3x3 patch compared, as (x, y) offsets in pixels."""

FLOW_CHAIN_AGREEMENT_PX = 3.0
"""`FlowChain`: the chained flow's point within this many pixels of the track point shows that the
point is in view, whatever the model's depth order says."""
FLOW_CHAIN_MIDWAY_PX = 2.0
"""`FlowChain`: a query on a still Gaussian is reported midway between its track point and the
chained flow's where the two lie within this many pixels. With these two distances (and moving
queries at the chain's point) no track figure of the CPU accuracy suite is lower than with the
single 1 px of stop 54 (docs/fit.md, "Moving points from the chain")."""

MASK_SURE_SCORE = 0.9
"""FitConfig's `tracks_moving_by_mask`: the moving-mask score from which a query's pixel counts as
surely on a moving object. Exact masks are 0 or 1; the segment stage's scores fall off over a
few pixels at an outline, where a still query on the pipeline's orbit-3-leaving clip took a
moving Gaussian at 0.5 or 0.75 (AJ -0.0004) and none does at 0.9."""

FRONT_SURFACE_GAP = 0.03
"""A query on a moving Gaussian is lifted at the front surface of its pixel (the first Gaussian
along the ray after which less than half the light passes) where that lies at least this share
nearer than the rendered depth; elsewhere at the rendered depth. On the accuracy suite's exact
priors this raises AJ by 0.02-0.06 and occlusion accuracy by 0.03-0.11 (docs/fit.md)."""


def _check_queries(result: FitResult, queries_q3: np.ndarray) -> np.ndarray:
    queries_q3 = np.asarray(queries_q3, np.float64)
    if queries_q3.ndim != 2 or queries_q3.shape[1] != 3:
        raise InvalidArgumentError(
            "queries_q3", f"need [Q, 3] rows of (t, y, x), got {queries_q3.shape}"
        )
    t_q = queries_q3[:, 0]
    if len(t_q) and (np.any(t_q != np.round(t_q)) or t_q.min() < 0 or t_q.max() >= result.n_frames):
        raise InvalidArgumentError(
            "queries_q3", f"query frames must be integers in 0..{result.n_frames - 1}"
        )
    return queries_q3


def attach(result: FitResult, queries_q3: np.ndarray) -> np.ndarray:
    """Id of the Gaussian that dominates each query pixel at its query frame: int64 [Q].

    Where no Gaussian covers the pixel, the one whose centre projects nearest to it."""
    return _attachments(result, _check_queries(result, queries_q3))[0]


def _attachments(
    result: FitResult, queries_q3: np.ndarray, moving_mask_thw: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [Q] of the Gaussians the queries attach to, world points [Q, 3] under the queries,
    whether each of those Gaussians is moving at the query's frame [Q]). `moving_mask_thw` (bool
    [T, H, W]): where it covers a query's pixel whose dominant Gaussian is still, the query
    attaches to the moving Gaussians there (`_moving_under_mask`)."""
    ids_q = np.zeros(len(queries_q3), np.int64)
    points_q3 = np.zeros((len(queries_q3), 3))
    moving_q = np.zeros(len(queries_q3), bool)
    for t in np.unique(queries_q3[:, 0]).astype(int):
        rows = np.flatnonzero(queries_q3[:, 0] == t)
        xy_r2 = queries_q3[rows][:, [2, 1]]
        frame = result.frames[t]
        dominant_r, front_r = _query_rays(result, t, xy_r2)
        if moving_mask_thw is not None:
            dominant_r, front_r = _moving_under_mask(
                result, t, xy_r2, dominant_r, front_r, moving_mask_thw[t]
            )
        ids_q[rows] = frame.ids_n[dominant_r]
        moving_q[rows] = frame.moving_n[dominant_r]
        depth_r = sample_bilinear(result.depth_thw[t][..., None].astype(np.float64), xy_r2)[:, 0]
        has_front_r = front_r >= 0
        front_z_r = depth_r.copy()
        _, front_z_r[has_front_r] = project_p2(
            result.K_33, result.c2w_t44[t], frame.means_n3[front_r[has_front_r]].astype(np.float64)
        )
        lift_front_r = (
            moving_q[rows]
            & has_front_r
            & (front_z_r > 0)
            & (front_z_r < depth_r * (1.0 - FRONT_SURFACE_GAP))
        )
        depth_r = np.where(lift_front_r, front_z_r, depth_r)
        points_q3[rows] = backproject_p3(result.K_33, result.c2w_t44[t], xy_r2, depth_r)
    return ids_q, points_q3, moving_q


def _moving_under_mask(
    result: FitResult,
    t: int,
    xy_r2: np.ndarray,
    dominant_r: np.ndarray,
    front_r: np.ndarray,
    moving_mask_hw: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`_query_rays`' indices with the pixels that `moving_mask_hw` covers but a still Gaussian
    dominates taken from frame t's moving Gaussians alone: the dominant one among them, also as
    the front surface, so that `_attachments` lifts the query at that Gaussian's depth where it
    lies in front (`FRONT_SURFACE_GAP`), not on the still surface behind the object's rim."""
    frame = result.frames[t]
    moving_m = np.flatnonzero(frame.moving_n)
    pixel_rows_r, pixel_cols_r = nearest_pixel(xy_r2, result.height, result.width)
    masked_r = moving_mask_hw[pixel_rows_r, pixel_cols_r] & ~frame.moving_n[dominant_r]
    if not masked_r.any() or len(moving_m) == 0:
        return dominant_r, front_r
    moving_dominant_k, _ = _query_rays(result, t, xy_r2[masked_r], moving_m)
    dominant_r, front_r = dominant_r.copy(), front_r.copy()
    dominant_r[masked_r] = moving_dominant_k
    front_r[masked_r] = moving_dominant_k
    return dominant_r, front_r


def _query_rays(
    result: FitResult, t: int, xy_r2: np.ndarray, among_n: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into frame t's Gaussians) at each pixel: of the largest blending weight, and of
    the front surface (the first Gaussian after which less than half the light passes; -1 where
    the ray never gets that opaque); among the Gaussians `among_n` (indices) alone where given."""
    frame = result.frames[t]
    if len(frame) == 0:
        raise InvalidArgumentError("queries_q3", f"frame {t} has no Gaussians to attach to")
    if among_n is not None:
        frame = frame.subset(among_n)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.float32))

    K_33 = result.K_33.copy()
    K_33[:2, 2] += 0.5  # the projection works in gsplat's pixel convention (centres at +0.5)
    with torch.no_grad():
        proj = project_gaussians(
            tensor(frame.means_n3),
            tensor(frame.quats_n4),
            tensor(frame.scales_n3),
            tensor(frame.opacities_n),
            tensor(np.linalg.inv(result.c2w_t44[t])),
            tensor(K_33),
            result.width,
            result.height,
            near=0.01,
            far=1e4,
        )
        order_n = torch.argsort(proj.depths_n, stable=True)
        drawn_n = (proj.radii_n2 > 0).all(dim=-1)[order_n]
        means2d_n2 = proj.means2d_n2[order_n]
        conics_n3 = proj.conics_n3[order_n]
        opacities_n = tensor(frame.opacities_n)[order_n]
        best, front = [], []
        for start in range(0, len(xy_r2), _QUERY_CHUNK):
            pixels_c2 = tensor(xy_r2[start : start + _QUERY_CHUNK] + 0.5)
            delta_cn2 = means2d_n2[None] - pixels_c2[:, None]
            alpha_cn = (
                gaussian_alpha(
                    delta_cn2[..., 0],
                    delta_cn2[..., 1],
                    conics_n3[:, 0],
                    conics_n3[:, 1],
                    conics_n3[:, 2],
                    opacities_n,
                )
                * drawn_n
            )
            passed_cn = torch.cumprod(1.0 - alpha_cn, dim=1)
            before_cn = torch.cat([torch.ones_like(passed_cn[:, :1]), passed_cn[:, :-1]], dim=1)
            weight_cn = alpha_cn * before_cn
            nearest_c = torch.argmin(delta_cn2.norm(dim=-1) + (~drawn_n) * 1e9, dim=1)
            covered_c = weight_cn.amax(dim=1) > 0
            best.append(torch.where(covered_c, weight_cn.argmax(dim=1), nearest_c))
            opaque_cn = passed_cn < 0.5
            front.append(torch.where(opaque_cn.any(dim=1), opaque_cn.int().argmax(dim=1), -1))
        front_r = torch.cat(front)
        front_r = torch.where(front_r >= 0, order_n[front_r.clamp_min(0)], -1).numpy()
        dominant_r = order_n[torch.cat(best)].numpy()
    if among_n is None:
        return dominant_r, front_r
    return among_n[dominant_r], np.where(front_r >= 0, among_n[front_r.clip(0)], -1)


def track_3d(
    result: FitResult, queries_q3: np.ndarray, motion: TrackMotion = "local_rigid"
) -> tuple[np.ndarray, np.ndarray]:
    """World tracks of the queried surface points: (float32 [Q, T, 3], alive bool [Q, T]).

    The query pixel is lifted as the module says; the point then moves as `motion` says (module
    docstring). Outside the Gaussian's life it is held at its first or last position (alive False
    there)."""
    tracks = track_queries(result, queries_q3, motion)
    return tracks.world_qt3, tracks.alive_qt


def _track_3d_of(
    result: FitResult, queries_q3: np.ndarray, ids_q: np.ndarray, surface_q3: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """track_3d for queries already attached to the Gaussians `ids_q` at the points
    `surface_q3`."""
    T, Q = result.n_frames, len(ids_q)
    centres_qt3 = np.zeros((Q, T, 3), np.float64)
    alive_qt = np.zeros((Q, T), bool)
    for t, frame in enumerate(result.frames):
        if len(frame) == 0:
            continue
        slot_q = np.minimum(np.searchsorted(frame.ids_n, ids_q), len(frame) - 1)
        alive_qt[:, t] = frame.ids_n[slot_q] == ids_q
        centres_qt3[alive_qt[:, t], t] = frame.means_n3[slot_q[alive_qt[:, t]]]
    t_q = queries_q3[:, 0].astype(int)
    for q in range(Q):
        # A Gaussian lives over one run of frames (ids are never reused), which includes the
        # query frame.
        lived = np.flatnonzero(alive_qt[q])
        centres_qt3[q, : lived[0]] = centres_qt3[q, lived[0]]
        centres_qt3[q, lived[-1] + 1 :] = centres_qt3[q, lived[-1]]
    offset_q3 = surface_q3 - centres_qt3[np.arange(Q), t_q]
    return (centres_qt3 + offset_q3[:, None]).astype(np.float32), alive_qt


def track_2d(
    result: FitResult,
    queries_q3: np.ndarray,
    motion: TrackMotion = "local_rigid",
    frames_thw3: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """TAP-Vid tracks for query rows (t, y, x): (points float32 [Q, T, 2] as (x, y) pixels,
    occluded bool [Q, T]; `frames_thw3` as track_queries)."""
    tracks = track_queries(result, queries_q3, motion, frames_thw3)
    return tracks.points_qt2, tracks.occluded_qt


def _project_tracks(
    result: FitResult, points_qt3: np.ndarray, alive_qt: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World tracks seen by each frame's camera: (x, y) pixels [Q, T, 2], occluded [Q, T], and
    in view [Q, T] (alive, in front of the camera and inside the image: hidden, if occluded, by
    the rendered surface alone)."""
    Q, T = alive_qt.shape
    points_qt2 = np.zeros((Q, T, 2), np.float32)
    occluded_qt = np.ones((Q, T), bool)
    in_view_qt = np.zeros((Q, T), bool)
    for t in range(T):
        xy_q2, z_q = project_p2(result.K_33, result.c2w_t44[t], points_qt3[:, t].astype(np.float64))
        depth_hw = result.depth_thw[t].astype(np.float64)
        seen_q = visible_n(xy_q2, z_q, depth_hw, (depth_hw > 0).astype(np.float64))
        points_qt2[:, t] = xy_q2
        occluded_qt[:, t] = ~(seen_q & alive_qt[:, t])
        in_view_qt[:, t] = alive_qt[:, t] & (z_q > 0) & inside_image(xy_q2, *depth_hw.shape)
    return points_qt2, occluded_qt, in_view_qt


def _shows_the_query(
    frames_thw3: np.ndarray, queries_q3: np.ndarray, points_qt2: np.ndarray
) -> np.ndarray:
    """Bool [Q, T]: the frame's 3x3 patch at each track point matches the query's patch in its
    own frame (`APPEARANCE_MATCH_LEVELS`)."""
    T = len(frames_thw3)
    Q, P = len(queries_q3), len(APPEARANCE_PATCH_OFFSETS_P2)

    def patches(t: int, xy_n2: np.ndarray) -> np.ndarray:  # [N, P, 3]
        at_n2 = (xy_n2[:, None, :] + APPEARANCE_PATCH_OFFSETS_P2[None]).reshape(-1, 2)
        # One frame in float at a time: a whole clip in float32 is 4x the uint8 frames.
        frame_hw3 = frames_thw3[t].astype(np.float32)
        return sample_bilinear(frame_hw3, at_n2).reshape(len(xy_n2), P, 3)

    query_qp3 = np.empty((Q, P, 3), np.float32)
    t_q = queries_q3[:, 0].astype(int)
    for t in np.unique(t_q):
        mine = t_q == t
        query_qp3[mine] = patches(t, queries_q3[mine][:, [2, 1]])
    shows_qt = np.zeros((Q, T), bool)
    for t in range(T):
        difference_q = np.abs(patches(t, points_qt2[:, t].astype(np.float64)) - query_qp3)
        shows_qt[:, t] = difference_q.mean(axis=(1, 2)) <= APPEARANCE_MATCH_LEVELS
    return shows_qt


@dataclass
class FlowCheck:
    """What lets the flow overrule the model's depth order where the depth prior measured
    nothing (FitConfig's `occlusion_from_flow_where_unmeasured`): in such a frame (the offline
    depth backend's smooth prior on every pixel: a camera that turns or stays) which of the
    model's Gaussians lies in front is the filler's guess, not a measurement."""

    flow_fwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] from frame t to t+1
    flow_bwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] from t+1 to t
    unmeasured_t: np.ndarray  # bool [T]: frames whose depth prior measured no pixel

    @classmethod
    def of(cls, priors: FitPriors) -> FlowCheck | None:
        """The check the priors allow (None without backward flow)."""
        if priors.flow_bwd_t1hw2 is None:
            return None
        unmeasured_t = np.array(
            [not priors.depth_measured_hw(t).any() for t in range(len(priors.depth_thw))]
        )
        return cls(priors.flow_fwd_t1hw2, priors.flow_bwd_t1hw2, unmeasured_t)

    def disagrees_qt(self, points_qt2: np.ndarray, queries_q3: np.ndarray) -> np.ndarray:
        """Bool [Q, T]: the flow's forward-backward check fails at the track point, taken towards
        the query frame (a frame after it: back to the previous frame and forward again; before
        it: forward, then back). False at the query frame and in frames whose depth was measured
        (the check is only asked there)."""
        Q, T = points_qt2.shape[:2]
        t_q = queries_q3[:, 0].astype(int)
        disagrees_qt = np.zeros((Q, T), bool)
        for t in np.flatnonzero(self.unmeasured_t):
            xy_q2 = points_qt2[:, t].astype(np.float64)
            if t > 0:
                after = t > t_q
                _, agree = flow_round_trip(
                    self.flow_bwd_t1hw2[t - 1], self.flow_fwd_t1hw2[t - 1], xy_q2[after]
                )
                disagrees_qt[after, t] = ~agree
            if t < T - 1:
                before = t < t_q
                _, agree = flow_round_trip(
                    self.flow_fwd_t1hw2[t], self.flow_bwd_t1hw2[t], xy_q2[before]
                )
                disagrees_qt[before, t] = ~agree
        return disagrees_qt


@dataclass
class FlowChain:
    """What lets the flow overrule the model's hiding of a point and share in its position
    (FitConfig's `tracks_with_flow_chain`): the query carried by the flow alone, frame by
    frame, with every forward-backward round trip from the query frame holding
    (`flow_tracks.chained_flow_tracks`).
    Where it lands on the model's track point, two trackers that fail differently agree that the
    surface point is in view, whatever the model's depth order says there (at outlines and on
    depth the prior filled in it is often wrong), and their mean is nearer the truth than
    either. Given hard moving masks (`moving_inside_thw`), a moving query's chain reads the flow
    from inside them (`chained_flow_tracks`' `inside_thw`): at an object's outline a bilinear
    read blends the background's flow into the object's, and the chain lags behind the object.
    The points it reports then move by a first-order read on the masks' outline
    (`extrapolate_inside`): the inside pixels' flow stands up to a pixel from the point, and on
    an object that turns, the outline is where its flow changes fastest."""

    flow_fwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] from frame t to t+1
    flow_bwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] from t+1 to t
    moving_inside_thw: np.ndarray | None = None  # bool [T, H, W]: the moving masks, where hard
    # The flows the chained points move by, where they differ from the two above (None: those).
    points_fwd_t1hw2: np.ndarray | None = None
    points_bwd_t1hw2: np.ndarray | None = None

    @classmethod
    def of(
        cls, priors: FitPriors, inside_hard_masks: bool = False, neighbour_px: int = 0
    ) -> FlowChain | None:
        """The chain the priors allow (None without backward flow); with `inside_hard_masks`,
        moving queries read inside the priors' moving masks where those are hard
        (`FitPriors.hard_moving_masks`: exact masks, or the user's). Soft scores, the segment
        stage's, stay unread: reading inside them lowered AJ or δavg on pipeline fits
        (docs/fit.md, "Moving chains read inside hard masks"). With `neighbour_px` and masks that
        are not hard, the chained points move by the flows taken from neighbours
        (`neighbour_flows`)."""
        if priors.flow_bwd_t1hw2 is None:
            return None
        hard_thw = priors.hard_moving_masks()
        inside_thw = hard_thw if inside_hard_masks else None
        points_flows = (None, None)
        if neighbour_px and hard_thw is None:
            points_flows = neighbour_flows(
                priors.frames_thw3, priors.flow_fwd_t1hw2, priors.flow_bwd_t1hw2, neighbour_px
            )
        return cls(priors.flow_fwd_t1hw2, priors.flow_bwd_t1hw2, inside_thw, *points_flows)

    def agreement(
        self, points_qt2: np.ndarray, queries_q3: np.ndarray, moving_q: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(agrees bool [Q, T], the chained flow's points float32 [Q, T, 2], unbroken bool
        [Q, T]): unbroken where the chained flow reaches frame t from the query frame without a
        failed round trip or leaving the image on the way, agrees where it also lands within
        `FLOW_CHAIN_AGREEMENT_PX` of the track point (at the query frame: where the track point
        is the query's pixel). `moving_q` (bool [Q]): the queries on moving Gaussians, whose
        chains read inside `moving_inside_thw` where the chain has it. The points returned are
        those of the chain along `points_fwd_t1hw2` / `points_bwd_t1hw2` where the chain has
        them, or else, where moving queries read inside hard masks, those of the chain that reads
        on their outline to first order; unbroken and agrees always come from the flows as
        given, read bilinearly."""
        inside_q = None
        if self.moving_inside_thw is not None:
            inside_q = np.zeros(len(queries_q3), bool) if moving_q is None else moving_q

        def chain(
            fwd_t1hw2: np.ndarray, bwd_t1hw2: np.ndarray, extrapolate: bool = False
        ) -> tuple[np.ndarray, np.ndarray]:
            return chained_flow_tracks(
                fwd_t1hw2,
                bwd_t1hw2,
                queries_q3,
                inside_thw=self.moving_inside_thw,
                reads_inside_q=inside_q,
                extrapolate_inside=extrapolate,
            )

        chained_qt2, lost_qt = chain(self.flow_fwd_t1hw2, self.flow_bwd_t1hw2)
        T = points_qt2.shape[1]
        t_q = queries_q3[:, 0].astype(int)
        after_qt = np.arange(T)[None, :] > t_q[:, None]
        before_qt = np.arange(T)[None, :] < t_q[:, None]
        # Lost once on the way: lost from there on, away from the query frame either way.
        lost_after_qt = np.cumsum(lost_qt & after_qt, axis=1) > 0
        lost_before_qt = np.cumsum((lost_qt & before_qt)[:, ::-1], axis=1)[:, ::-1] > 0
        unbroken_qt = ~lost_after_qt & ~lost_before_qt
        distance_qt = np.linalg.norm(points_qt2 - chained_qt2, axis=-1)
        agrees_qt = unbroken_qt & (distance_qt <= FLOW_CHAIN_AGREEMENT_PX)
        if self.points_fwd_t1hw2 is not None:
            chained_qt2, _ = chain(self.points_fwd_t1hw2, self.points_bwd_t1hw2)
        elif self.moving_inside_thw is not None:
            chained_qt2, _ = chain(self.flow_fwd_t1hw2, self.flow_bwd_t1hw2, extrapolate=True)
        return agrees_qt, chained_qt2, unbroken_qt

    def carried(
        self,
        chained_qt2: np.ndarray,
        unbroken_qt: np.ndarray,
        queries_q3: np.ndarray,
        moving_q: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Where moving queries read inside hard masks (None elsewhere): (points float32
        [Q, T, 2], hidden bool [Q, T], carried bool [Q, T]) of the moving queries whose chain
        (`agreement`'s points and unbroken) held for at least one step from the query frame and
        then failed a round trip: from that frame on, each carried through the occlusion by its
        object's motion (`flow_tracks.carried_through_occlusion`), hidden where the flow does not
        show it. A chain that fails its first step says nothing of the point's object, nor does
        one that never lies on a mask pixel while it holds (a query on the background beside an
        object's outline reads the object's flow inside the mask and moves with it, or fails at
        once): neither is carried."""
        if self.moving_inside_thw is None:
            return None
        Q, T = unbroken_qt.shape
        points_qt2 = np.asarray(chained_qt2, np.float64).copy()
        hidden_qt = np.zeros((Q, T), bool)
        carried_qt = np.zeros((Q, T), bool)
        t_q = queries_q3[:, 0].astype(int)
        H, W = self.moving_inside_thw.shape[1:]
        for q in np.flatnonzero(moving_q):
            for direction in (1, -1):
                frames = np.arange(t_q[q], T) if direction == 1 else np.arange(t_q[q], -1, -1)
                lost = np.flatnonzero(~unbroken_qt[q, frames])
                if len(lost) == 0 or lost[0] < 2:
                    continue
                held_t = frames[: lost[0]]
                rows_t, cols_t = nearest_pixel(points_qt2[q, held_t], H, W)
                if not self.moving_inside_thw[held_t, rows_t, cols_t].any():
                    continue
                seen_t, before_t = frames[lost[0] - 1], frames[lost[0] - 2]
                carried_t2, hidden_t = carried_through_occlusion(
                    self.flow_fwd_t1hw2,
                    self.flow_bwd_t1hw2,
                    self.moving_inside_thw,
                    points_qt2[q, seen_t],
                    points_qt2[q, seen_t] - points_qt2[q, before_t],
                    seen_t,
                    direction,
                )
                on_t = frames[lost[0] :]
                points_qt2[q, on_t], hidden_qt[q, on_t] = carried_t2[on_t], hidden_t[on_t]
                carried_qt[q, on_t] = True
        return points_qt2.astype(np.float32), hidden_qt, carried_qt


def neighbour_flows(
    frames_thw3: np.ndarray, flow_fwd_t1hw2: np.ndarray, flow_bwd_t1hw2: np.ndarray, radius_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Both flows ([T-1, H, W, 2]) with every pixel's flow taken from a neighbour up to
    `radius_px` away where that warps its window better (`take_neighbour_flow`), the directed
    pairs on a pool of threads (OpenCV and NumPy release the GIL). A one-frame clip has none."""
    steps = range(len(flow_fwd_t1hw2))
    if not steps:
        return flow_fwd_t1hw2, flow_bwd_t1hw2
    jobs = [(frames_thw3[t], frames_thw3[t + 1], flow_fwd_t1hw2[t]) for t in steps]
    jobs += [(frames_thw3[t + 1], frames_thw3[t], flow_bwd_t1hw2[t]) for t in steps]
    with ThreadPoolExecutor(max_workers=usable_cpus(), thread_name_prefix="gflow-chain") as pool:
        taken = list(pool.map(lambda job: take_neighbour_flow(*job, radius_px), jobs))
    return np.stack(taken[: len(steps)]), np.stack(taken[len(steps) :])


@dataclass
class Tracks:
    """Tracks of Q query points over T frames: what the fit stage writes and draws."""

    points_qt2: np.ndarray  # float32 (x, y) pixels, as track_2d
    occluded_qt: np.ndarray  # bool, as track_2d
    world_qt3: np.ndarray  # float32 world points, as track_3d
    alive_qt: np.ndarray  # bool: the query's Gaussian exists in that frame, as track_3d
    moving_q: np.ndarray  # bool: the query's Gaussian is in the moving set at its query frame


def track_queries(
    result: FitResult,
    queries_q3: np.ndarray,
    motion: TrackMotion = "local_rigid",
    frames_thw3: np.ndarray | None = None,
    flow_check: FlowCheck | None = None,
    flow_chain: FlowChain | None = None,
    moving_mask_thw: np.ndarray | None = None,
) -> Tracks:
    """track_2d, track_3d and the moving flag of query rows (t, y, x), attaching them once.
    `frames_thw3` (the fitted clip's uint8 RGB frames [T, H, W, 3]) lets the frames confirm
    points the model hides (`APPEARANCE_MATCH_LEVELS`); `flow_check` lets the flow overrule the
    model's hiding of points in frames whose depth prior measured nothing (`FlowCheck`);
    `flow_chain` lets the flow chained from the query overrule it where it reaches the track
    point, and moves the point towards the chain's (`FlowChain`, `_with_chain_points`); None:
    the model's flags and points as they are. `moving_mask_thw` (bool [T, H, W], the clip's
    moving masks) attaches a query whose pixel it covers to the moving Gaussians there where a
    still one dominates the pixel (`_moving_under_mask`); None: to the dominant Gaussian.

    No queries give arrays with Q = 0."""
    queries_q3 = _check_queries(result, queries_q3)
    if frames_thw3 is not None and frames_thw3.shape[:3] != (
        result.n_frames,
        result.height,
        result.width,
    ):
        raise InvalidArgumentError(
            "frames_thw3",
            f"shape {frames_thw3.shape}: pass the fitted clip's frames "
            f"({result.n_frames}, {result.height}, {result.width}, 3)",
        )
    if moving_mask_thw is not None and moving_mask_thw.shape != (
        result.n_frames,
        result.height,
        result.width,
    ):
        raise InvalidArgumentError(
            "moving_mask_thw",
            f"shape {moving_mask_thw.shape}: pass the fitted clip's masks "
            f"({result.n_frames}, {result.height}, {result.width})",
        )
    ids_q, surface_q3, moving_q = _attachments(result, queries_q3, moving_mask_thw)
    carried_qt3, alive_qt = _track_3d_of(result, queries_q3, ids_q, surface_q3)
    points_qt2, occluded_qt, in_view_qt = _project_tracks(result, carried_qt3, alive_qt)
    world_qt3 = carried_qt3
    if motion != "gaussian":
        if motion not in ("local_rigid", "local_affine"):
            raise InvalidArgumentError(
                "motion", f"{motion!r}: use gaussian, local_rigid or local_affine"
            )
        world_qt3 = _local_rigid_points(result, queries_q3, surface_q3, moving_q, carried_qt3)
        if motion == "local_affine":
            world_qt3 = _image_affine_points(result, queries_q3, moving_q, world_qt3)
        points_qt2, _, in_view_qt = _project_tracks(result, world_qt3, alive_qt)
    if frames_thw3 is not None:
        occluded_qt &= ~(in_view_qt & _shows_the_query(frames_thw3, queries_q3, points_qt2))
    if flow_check is not None:
        overruled_qt = in_view_qt & flow_check.unmeasured_t[None, :]
        occluded_qt &= ~(overruled_qt & ~flow_check.disagrees_qt(points_qt2, queries_q3))
    if flow_chain is not None:
        agrees_qt, chained_qt2, unbroken_qt = flow_chain.agreement(points_qt2, queries_q3, moving_q)
        occluded_qt &= ~(in_view_qt & agrees_qt)
        points_qt2, world_qt3 = _with_chain_points(
            result, points_qt2, world_qt3, chained_qt2, unbroken_qt, moving_q
        )
        carried = flow_chain.carried(chained_qt2, unbroken_qt, queries_q3, moving_q)
        if carried is not None:
            carried_qt2, hidden_qt, carried_qt = carried
            points_qt2, world_qt3 = _with_chain_points(
                result, points_qt2, world_qt3, carried_qt2, carried_qt, moving_q
            )
            occluded_qt |= hidden_qt
    return Tracks(points_qt2, occluded_qt, world_qt3, alive_qt, moving_q)


def _with_chain_points(
    result: FitResult,
    points_qt2: np.ndarray,
    world_qt3: np.ndarray,
    chained_qt2: np.ndarray,
    unbroken_qt: np.ndarray,
    moving_q: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The track points moved towards the chained flow's where it holds (`unbroken_qt`), the
    world points with them at their camera z (so the 3D track still projects onto the 2D one).
    A query on a moving Gaussian takes the chain's pixel: the moving set follows that same flow,
    less closely (through the pipeline, the CPU suite's orbit clip: the moving queries' delta-avg
    0.572 against the chain's 0.620). One on a still Gaussian takes the pixel midway where the
    two lie within `FLOW_CHAIN_MIDWAY_PX`: its point comes from cameras and depth that do not
    drift, as good as the chain, and the mean of two trackers whose errors differ beats either."""
    points_qt2 = points_qt2.copy()
    world_qt3 = world_qt3.copy()
    distance_qt = np.linalg.norm(points_qt2 - chained_qt2, axis=-1)
    moves_qt = unbroken_qt & (moving_q[:, None] | (distance_qt <= FLOW_CHAIN_MIDWAY_PX))
    chain_share_q = np.where(moving_q, 1.0, 0.5)
    for t in np.flatnonzero(moves_qt.any(axis=0)):
        rows = moves_qt[:, t]
        model_r2 = points_qt2[rows, t].astype(np.float64)
        pixel_r2 = model_r2 + chain_share_q[rows, None] * (chained_qt2[rows, t] - model_r2)
        _, z_r = project_p2(result.K_33, result.c2w_t44[t], world_qt3[rows, t].astype(np.float64))
        points_qt2[rows, t] = pixel_r2
        world_qt3[rows, t] = backproject_p3(result.K_33, result.c2w_t44[t], pixel_r2, z_r)
    return points_qt2, world_qt3


def configured_tracks(
    result: FitResult, queries_q3: np.ndarray, cfg: FitConfig, priors: FitPriors
) -> Tracks:
    """track_queries as a fit configured by `cfg` reads its tracks: with its `track_motion`, with
    the clip's frames where `occlusion_from_frames` asks, with the priors' flows where
    `occlusion_from_flow_where_unmeasured` or `tracks_with_flow_chain` asks, and with the
    priors' moving masks (scores at or above `MASK_SURE_SCORE`) where `tracks_moving_by_mask`
    asks."""
    return track_queries(
        result,
        queries_q3,
        cfg.track_motion,
        priors.frames_thw3 if cfg.occlusion_from_frames else None,
        FlowCheck.of(priors) if cfg.occlusion_from_flow_where_unmeasured else None,
        FlowChain.of(priors, cfg.tracks_chain_inside_masks, cfg.tracks_chain_neighbour_px)
        if cfg.tracks_with_flow_chain
        else None,
        np.asarray(priors.moving_thw) >= MASK_SURE_SCORE if cfg.tracks_moving_by_mask else None,
    )


def _local_rigid_points(
    result: FitResult,
    queries_q3: np.ndarray,
    surface_q3: np.ndarray,
    moving_q: np.ndarray,
    carried_qt3: np.ndarray,
) -> np.ndarray:
    """World points [Q, T, 3] of the `local_rigid` motion: moving queries follow the rigid
    motion of their neighbours (module docstring) wherever enough of them live; every other
    point is the one `carried_qt3` by its Gaussian."""
    points_qt3 = carried_qt3.astype(np.float64)
    for t_query, rows_r, frame, moving_m in _moving_queries_by_frame(result, queries_q3, moving_q):
        means_m3 = frame.means_n3[moving_m].astype(np.float64)
        tree = cKDTree(means_m3)
        k = min(RIGID_NEIGHBOURS, len(moving_m))
        dist_rk, near_rk = tree.query(surface_q3[rows_r], k)
        spacing_rk = tree.query(means_m3[near_rk], 2)[0][..., 1]
        spacing_r = np.median(spacing_rk, axis=1)
        on_cloud_r = dist_rk[:, 0] <= RIGID_OFF_CLOUD * spacing_r
        rows_r, near_rk = rows_r[on_cloud_r], near_rk[on_cloud_r]
        # Inverse distance, floored at a tenth of the spacing: a Gaussian right under the
        # point does not outweigh all others.
        weight_rk = 1.0 / np.maximum(dist_rk[on_cloud_r], 0.1 * spacing_r[on_cloud_r, None])
        ids_rk = frame.ids_n[moving_m[near_rk]]
        start_rk3 = means_m3[near_rk]
        for t, other, slot_rk, alive_rk, fits_r in _frames_with_neighbours(result, t_query, ids_rk):
            a_rk3, alive_rk = start_rk3[fits_r], alive_rk[fits_r]
            b_rk3 = other.means_n3[slot_rk[fits_r]].astype(np.float64)
            prior_rk = weight_rk[fits_r] * alive_rk
            rows = rows_r[fits_r]
            # The first fit weighs the neighbours by how much they move like the query's own
            # Gaussian (a halo Gaussian labelled moving beside a moving object keeps the halo's
            # motion); the refits by their residuals.
            own_r3 = carried_qt3[rows, t] - carried_qt3[rows, t_query]
            unlike_rk = np.linalg.norm(b_rk3 - a_rk3 - own_r3[:, None], axis=-1)
            weight_fit_rk = prior_rk * _cauchy_rk(unlike_rk, alive_rk)
            R_r33, ca_r3, cb_r3 = weighted_rigid_fit(a_rk3, b_rk3, weight_fit_rk)
            for _ in range(RIGID_REFITS):
                residual_rk = np.linalg.norm(
                    _misfit_rk3(R_r33, ca_r3, cb_r3, a_rk3, b_rk3), axis=-1
                )
                weight_fit_rk = prior_rk * _cauchy_rk(residual_rk, alive_rk)
                R_r33, ca_r3, cb_r3 = weighted_rigid_fit(a_rk3, b_rk3, weight_fit_rk)
            misfit_rk3 = _misfit_rk3(R_r33, ca_r3, cb_r3, a_rk3, b_rk3)
            turned_r = _weighted_rms_r(misfit_rk3, weight_fit_rk)
            shifted_r = _weighted_rms_r(
                a_rk3 - ca_r3[:, None] + cb_r3[:, None] - b_rk3, weight_fit_rk
            )
            turns_r = turned_r < RIGID_RESIDUAL_SHARE * shifted_r
            offset_r3 = surface_q3[rows[turns_r]] - ca_r3[turns_r]
            points_qt3[rows[turns_r], t] = (
                np.einsum("rij,rj->ri", R_r33[turns_r], offset_r3) + cb_r3[turns_r]
            )
    return points_qt3.astype(np.float32)


def _moving_queries_by_frame(result: FitResult, queries_q3: np.ndarray, moving_q: np.ndarray):
    """Per query frame with moving queries and enough moving Gaussians to move them with:
    (t_query, the rows of those queries [R], the frame's Gaussians, indices of its moving ones)."""
    t_q = queries_q3[:, 0].astype(int)
    for t_query in np.unique(t_q[moving_q]):
        frame = result.frames[t_query]
        moving_m = np.flatnonzero(frame.moving_n)
        if len(moving_m) >= RIGID_MIN_NEIGHBOURS:
            yield t_query, np.flatnonzero(moving_q & (t_q == t_query)), frame, moving_m


def _frames_with_neighbours(result: FitResult, t_query: int, ids_rk: np.ndarray):
    """Per frame other than t_query where some row's neighbours (ids [R, K]) live: (t, the frame's
    Gaussians, the neighbours' slots in them [R, K], which of them live there [R, K], which rows
    have at least `RIGID_MIN_NEIGHBOURS` alive [R])."""
    for t, other in enumerate(result.frames):
        if t == t_query or len(other) == 0:
            continue
        slot_rk = np.minimum(np.searchsorted(other.ids_n, ids_rk), len(other) - 1)
        alive_rk = other.ids_n[slot_rk] == ids_rk
        enough_r = alive_rk.sum(axis=1) >= RIGID_MIN_NEIGHBOURS
        if enough_r.any():
            yield t, other, slot_rk, alive_rk, enough_r


def _image_affine_points(
    result: FitResult, queries_q3: np.ndarray, moving_q: np.ndarray, world_qt3: np.ndarray
) -> np.ndarray:
    """World points [Q, T, 3] of the `local_affine` motion: a moving query's pixel in frame t is
    where the affine map of the image that carries its neighbours' centres (the `RIGID_NEIGHBOURS`
    moving Gaussians whose centres project nearest to it at the query frame) from the query
    frame to t puts it, wherever that map explains their image motion (`AFFINE_RESIDUAL_SHARE`);
    the point keeps the camera z that `world_qt3` gives it there. Elsewhere `world_qt3` stands."""
    points_qt3 = world_qt3.astype(np.float64)

    def pixels_at(t: int, means_p3: np.ndarray) -> np.ndarray:
        return project_p2(result.K_33, result.c2w_t44[t], means_p3.astype(np.float64))[0]

    for t_query, rows_r, frame, moving_m in _moving_queries_by_frame(result, queries_q3, moving_q):
        query_r2 = queries_q3[rows_r][:, [2, 1]]
        k = min(RIGID_NEIGHBOURS, len(moving_m))
        moving_m2 = pixels_at(t_query, frame.means_n3[moving_m])
        dist_rk, near_rk = cKDTree(moving_m2).query(query_r2, k)
        dist_rk, near_rk = dist_rk.reshape(len(rows_r), k), near_rk.reshape(len(rows_r), k)
        # A centre right under the query does not outweigh all others.
        weight_rk = 1.0 / (dist_rk + AFFINE_DISTANCE_FLOOR_PX)
        ids_rk = frame.ids_n[moving_m[near_rk]]
        # The map in coordinates about the query pixel: its constant term is the query's pixel.
        a_rk = np.concatenate(
            [
                moving_m2[near_rk] - query_r2[:, None],
                np.ones((*ids_rk.shape, 1)),
            ],
            axis=-1,
        )
        for t, other, slot_rk, alive_rk, enough_r in _frames_with_neighbours(
            result, t_query, ids_rk
        ):
            rows, alive_rk, a_rk3 = rows_r[enough_r], alive_rk[enough_r], a_rk[enough_r]
            slot_ek = slot_rk[enough_r]
            b_rk2 = pixels_at(t, other.means_n3[slot_ek.reshape(-1)]).reshape(*slot_ek.shape, 2)
            prior_rk = weight_rk[enough_r] * alive_rk
            map_r32, fits_r = _weighted_affine_fit(a_rk3, b_rk2, prior_rk)
            for _ in range(RIGID_REFITS):
                residual_rk = np.linalg.norm(
                    np.einsum("rki,rij->rkj", a_rk3, map_r32) - b_rk2, axis=-1
                )
                weight_fit_rk = prior_rk * _cauchy_rk(residual_rk, alive_rk)
                map_r32, fits_r = _weighted_affine_fit(a_rk3, b_rk2, weight_fit_rk)
            misfit_rk2 = np.einsum("rki,rij->rkj", a_rk3, map_r32) - b_rk2
            shift_rk2 = b_rk2 - a_rk3[..., :2]
            mean_shift_r2 = (
                np.einsum("rk,rkj->rj", weight_fit_rk, shift_rk2)
                / np.maximum(weight_fit_rk.sum(axis=1), 1e-300)[:, None]
            )
            affine_r = _weighted_rms_r(misfit_rk2, weight_fit_rk)
            shifted_r = _weighted_rms_r(shift_rk2 - mean_shift_r2[:, None], weight_fit_rk)
            _, z_r = project_p2(result.K_33, result.c2w_t44[t], points_qt3[rows, t])
            use_r = fits_r & (affine_r < AFFINE_RESIDUAL_SHARE * shifted_r) & (z_r > 0)
            points_qt3[rows[use_r], t] = backproject_p3(
                result.K_33, result.c2w_t44[t], map_r32[use_r, 2], z_r[use_r]
            )
    return points_qt3.astype(np.float32)


def _weighted_affine_fit(
    a_rk3: np.ndarray, b_rk2: np.ndarray, weight_rk: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the affine map [3, 2] (rows: x, y, constant) that takes the points a (homogeneous
    pixels [R, K, 3]) nearest to b [R, K, 2] in weighted least squares, and whether the row's
    points determine it (bool [R]; rows that do not get the zero map)."""
    normal_r33 = np.einsum("rk,rki,rkj->rij", weight_rk, a_rk3, a_rk3)
    rhs_r32 = np.einsum("rk,rki,rkj->rij", weight_rk, a_rk3, b_rk2)
    fits_r = np.isfinite(normal_r33).all(axis=(1, 2))
    fits_r[fits_r] = np.linalg.cond(normal_r33[fits_r]) < AFFINE_MAX_CONDITION
    map_r32 = np.zeros((len(a_rk3), 3, 2))
    if fits_r.any():
        map_r32[fits_r] = np.linalg.solve(normal_r33[fits_r], rhs_r32[fits_r])
    return map_r32, fits_r


def _misfit_rk3(
    R_r33: np.ndarray, ca_r3: np.ndarray, cb_r3: np.ndarray, a_rk3: np.ndarray, b_rk3: np.ndarray
) -> np.ndarray:
    """Where the rigid motion (R, ca, cb) of each row puts its points a, less where they are (b):
    [R, K, 3]."""
    return np.einsum("rij,rkj->rki", R_r33, a_rk3 - ca_r3[:, None]) + cb_r3[:, None] - b_rk3


def _weighted_rms_r(misfit_rk3: np.ndarray, weight_rk: np.ndarray) -> np.ndarray:
    """Weighted root mean square length of misfit vectors [R, K, D], per row."""
    squared_rk = (misfit_rk3**2).sum(axis=-1)
    return np.sqrt((weight_rk * squared_rk).sum(axis=1) / weight_rk.sum(axis=1))


def _cauchy_rk(residual_rk: np.ndarray, alive_rk: np.ndarray) -> np.ndarray:
    """Cauchy weights of residuals [R, K] at twice each row's robust spread (1.4826 x the median
    over its live entries): about 1 for the typical, falling off for the outlying."""
    spread_r = 1.4826 * np.nanmedian(np.where(alive_rk, residual_rk, np.nan), axis=1)
    return 1.0 / (1.0 + (residual_rk / (2.0 * spread_r[:, None] + 1e-12)) ** 2)
