"""Synthetic 4D scenes with exact ground truth: frames, depth, poses, flow, masks and tracks.

The scene is ray-cast analytically per pixel in numpy: a textured ground plane and back wall
(two static depth layers), static ellipsoid "boulders", and 0-3 textured moving ellipsoids (rigid,
or non-rigid: a time-varying twist and squash of the surface), seen by a camera that moves
(translation + rotation), only rotates, or stands still. Each hit keeps its material coordinates,
so the same surface point can be moved to any other frame exactly; that gives flow, visibility and
point tracks with no approximation. Visibility of a point in another frame is decided by casting
a ray through its exact (sub-pixel) projection there and checking that the same surface, at the
same depth, is hit first.

Motion is parameterised over the clip (s = t / (T - 1) in [0, 1]), so the same seed gives the same
scene at any resolution and length; see docs/evaluation.md for the layout and measured figures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError, NotFoundError, ProgressFn, no_progress
from services.common.geometry import (
    apply_33,
    axis_angle_33,
    intrinsics_33,
    pixel_grid_hw2,
    project_p2,
    rotation_33,
)
from services.synthetic import textures

logger = logging.getLogger(__name__)

GROUND_Y_M = 1.4  # world y of the ground plane (y points down; the camera starts at the origin)
WALL_Z_M = 6.5  # world z of the back wall
BASE_PITCH_DEG = -10.0  # the camera looks slightly down so the ground fills the lower frame
FIXATION_Z_M = 4.0  # the moving camera turns toward this depth, keeping the objects in view
_GROUND, _WALL = 0, 1  # surface ids; ellipsoid j has surface id 2 + j (static ones first)
_DEPTH_TOL = 1e-6  # relative depth agreement for "the same surface point is hit first"


@dataclass
class SceneConfig:
    """What to render. Every field has a default; the same seed gives the same scene."""

    height: int = 48
    """Image height in pixels (8 to 2160)."""
    width: int = 64
    """Image width in pixels (8 to 3840)."""
    n_frames: int = 8
    """Number of frames (at least 2)."""
    seed: int = 0
    """Seed for layout, motion, textures and track sampling."""
    camera: Literal["moving", "rotation", "static"] = "moving"
    """moving: translation + rotation; rotation: turns about its centre; static: fixed."""
    n_objects: int = 1
    """Moving objects (0 to 3)."""
    nonrigid: bool = False
    """Make moving object 0 non-rigid (twist + anisotropic squash); the others stay rigid."""
    n_tracks: int = 64
    """Ground-truth point tracks, half on moving objects where there are any."""
    n_static_objects: int = 1
    """Static ellipsoids standing on the ground: an extra depth layer and static occluders."""
    motion_scale: float = 1.0
    """Scales camera and object motion over the whole clip (0 freezes everything)."""
    fov_deg: float = 60.0
    """Horizontal field of view in degrees."""


@dataclass
class SyntheticScene:
    """A rendered clip and its exact ground truth (shapes: T frames, H x W pixels, N tracks)."""

    frames_thw3: np.ndarray  # uint8 [T, H, W, 3] RGB
    depth_thw: np.ndarray  # float32 [T, H, W] camera z in metres
    K_33: np.ndarray  # float64 intrinsics (pixel centres at integer coordinates)
    c2w_t44: np.ndarray  # float64 [T, 4, 4] camera-to-world, OpenCV axes
    flow_fwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] (dx, dy) from frame t to t+1
    flow_bwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] (dx, dy) from frame t+1 to t
    valid_fwd_t1hw: np.ndarray  # bool [T-1, H, W] point of frame t visible in frame t+1
    valid_bwd_t1hw: np.ndarray  # bool [T-1, H, W] point of frame t+1 visible in frame t
    moving_thw: np.ndarray  # bool [T, H, W] pixel shows a moving object
    tracks_nt2: np.ndarray  # float32 [N, T, 2] (x, y) pixels, TAP-Vid layout
    occluded_nt: np.ndarray  # bool [N, T] hidden or outside the frame
    object_thw: np.ndarray  # int8 [T, H, W] moving-object index per pixel, -1 for static
    tracks_world_nt3: np.ndarray  # float32 [N, T, 3] world position of each track (3D tracks)
    track_query_t_n: np.ndarray  # int64 [N] frame each track was sampled in (visible there)
    track_object_n: np.ndarray  # int64 [N] moving-object index of each track, -1 for static
    config: SceneConfig = field(default_factory=SceneConfig)

    def save(self, out_dir: Path) -> None:
        """Writes frames/NNNNN.png, ground_truth.npz and config.json under `out_dir`."""
        out_dir = Path(out_dir)
        (out_dir / "frames").mkdir(parents=True, exist_ok=True)
        for t, frame_hw3 in enumerate(self.frames_thw3):
            path = out_dir / "frames" / f"{t:05d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(frame_hw3, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {path}")
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        del arrays["frames_thw3"]
        np.savez_compressed(out_dir / "ground_truth.npz", **arrays)
        (out_dir / "config.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, scene_dir: Path) -> SyntheticScene:
        """Reads a folder written by `save`."""
        scene_dir = Path(scene_dir)
        for name in ("config.json", "ground_truth.npz", "frames"):
            if not (scene_dir / name).exists():
                raise NotFoundError(f"{scene_dir / name} is missing: not a saved synthetic scene")
        config = SceneConfig(**json.loads((scene_dir / "config.json").read_text()))
        with np.load(scene_dir / "ground_truth.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        paths = sorted((scene_dir / "frames").glob("*.png"))
        if len(paths) != config.n_frames:
            raise NotFoundError(
                f"{scene_dir / 'frames'}: {len(paths)} PNGs, expected {config.n_frames}"
            )
        frames = [
            cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths
        ]
        return cls(frames_thw3=np.stack(frames), config=config, **arrays)


@dataclass
class SynthCommand:
    """Render a synthetic scene with exact ground truth into a folder."""

    out: Path
    """Output folder (frames/*.png, ground_truth.npz, config.json)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """What to render."""


def run_synth(cmd: SynthCommand, progress: ProgressFn = no_progress) -> Path:
    """Renders `cmd.scene` and saves it to `cmd.out`; returns that folder."""
    scene = make_scene(cmd.scene, progress)
    scene.save(cmd.out)
    logger.info("wrote synthetic scene (%s) to %s", cmd.scene, cmd.out)
    return Path(cmd.out)


# ---------------------------------------------------------------------------------------------
# Layout: everything random is drawn here, in a fixed order, from the seed.


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid X = centre + A twist(m) over unit-sphere material points m."""

    centre_t3: np.ndarray  # [T, 3] world centre per frame
    shape_t33: np.ndarray  # [T, 3, 3] A: unit sphere -> world offsets (rotation x radii)
    twist_t: np.ndarray  # [T] twist about local y, radians per unit of local y
    radius_m: float  # mean radius: texture coordinates are m * radius (metres)
    colours_23: np.ndarray  # two RGB colours in [0, 1] (stripes)
    stripes: int  # number of stripe periods around the local y axis (0: plain)


@dataclass(frozen=True)
class _Layout:
    K_33: np.ndarray
    c2w_t44: np.ndarray
    ellipsoids: list[_Ellipsoid]  # static ones first, then moving
    n_static: int
    table: textures.NoiseTable
    ground_colours_33: np.ndarray  # tile colour A, tile colour B, grout
    wall_colours_33: np.ndarray  # brick colour A, brick colour B, mortar
    height: int
    width: int

    @property
    def focal(self) -> float:
        return float(self.K_33[0, 0])


def _check(cfg: SceneConfig) -> None:
    if not 8 <= cfg.height <= 2160:
        raise InvalidArgumentError("height", f"{cfg.height} is outside 8..2160")
    if not 8 <= cfg.width <= 3840:
        raise InvalidArgumentError("width", f"{cfg.width} is outside 8..3840")
    if cfg.n_frames < 2:
        raise InvalidArgumentError("n_frames", f"{cfg.n_frames}: need at least 2 frames for flow")
    if cfg.camera not in ("moving", "rotation", "static"):
        raise InvalidArgumentError("camera", f"{cfg.camera!r}: use moving, rotation or static")
    if not 0 <= cfg.n_objects <= 3:
        raise InvalidArgumentError("n_objects", f"{cfg.n_objects} is outside 0..3")
    if not 0 <= cfg.n_static_objects <= 3:
        raise InvalidArgumentError("n_static_objects", f"{cfg.n_static_objects} is outside 0..3")
    if cfg.n_tracks < 0:
        raise InvalidArgumentError("n_tracks", f"{cfg.n_tracks} must be >= 0")
    if not 0.0 <= cfg.motion_scale <= 3.0:
        raise InvalidArgumentError("motion_scale", f"{cfg.motion_scale} is outside 0..3")
    if not 20.0 <= cfg.fov_deg <= 100.0:
        raise InvalidArgumentError("fov_deg", f"{cfg.fov_deg} is outside 20..100 degrees")


def _camera_poses(cfg: SceneConfig, s_t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = rng.choice([-1.0, 1.0])
    phase = rng.uniform(0.0, 2.0 * np.pi)
    m = cfg.motion_scale
    c2w_t44 = np.tile(np.eye(4), (len(s_t), 1, 1))
    for t, s in enumerate(s_t):
        u = s - 0.5
        if cfg.camera == "moving":
            centre = np.array([0.9 * u * side, 0.08 * np.sin(2 * np.pi * s + phase), 0.5 * s]) * m
            # Turn toward the scene middle (an orbit-like sweep): strong parallax, objects in view.
            yaw = -np.arctan2(centre[0], FIXATION_Z_M - centre[2]) + np.deg2rad(1.5) * m * np.sin(
                np.pi * s + phase
            )
            pitch = np.deg2rad(BASE_PITCH_DEG + 2.5 * m * np.sin(2 * np.pi * s + phase))
            roll = np.deg2rad(2.0 * m * np.sin(np.pi * s))
        elif cfg.camera == "rotation":
            centre = np.zeros(3)
            yaw = np.deg2rad(12.0 * m * u * side)
            pitch = np.deg2rad(BASE_PITCH_DEG + 3.0 * m * np.sin(2 * np.pi * s + phase))
            roll = np.deg2rad(2.0 * m * np.sin(np.pi * s))
        else:
            centre, yaw, pitch, roll = np.zeros(3), 0.0, np.deg2rad(BASE_PITCH_DEG), 0.0
        c2w_t44[t, :3, :3] = (
            rotation_33("y", yaw) @ rotation_33("x", pitch) @ rotation_33("z", roll)
        )
        c2w_t44[t, :3, 3] = centre
    return c2w_t44


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _static_ellipsoid(j: int, cfg: SceneConfig, rng: np.random.Generator) -> _Ellipsoid:
    T = cfg.n_frames
    radii = np.array([rng.uniform(0.35, 0.55), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.55)])
    x = (-1.3 if j % 2 == 0 else 1.3) + rng.uniform(-0.4, 0.4)
    centre = np.array([x, GROUND_Y_M - 0.9 * radii[1], rng.uniform(4.2, 5.4)])
    shape = rotation_33("y", rng.uniform(0, np.pi)) @ np.diag(radii)
    grey = rng.uniform(0.45, 0.65)
    colours = np.stack([_hsv_rgb(rng.uniform(0.05, 0.35), 0.25, grey), _hsv_rgb(0.1, 0.1, 0.8)])
    return _Ellipsoid(
        centre_t3=np.tile(centre, (T, 1)),
        shape_t33=np.tile(shape, (T, 1, 1)),
        twist_t=np.zeros(T),
        radius_m=float(radii.mean()),
        colours_23=colours,
        stripes=0,
    )


def _moving_ellipsoid(
    k: int, cfg: SceneConfig, s_t: np.ndarray, rng: np.random.Generator
) -> _Ellipsoid:
    m = cfg.motion_scale
    radius = rng.uniform(0.3, 0.42)
    radii = radius * (1.0 + rng.uniform(-0.2, 0.2, 3))
    z = rng.uniform(3.0, 4.3)
    slot = (k - (cfg.n_objects - 1) / 2.0) * 0.9
    centre = np.array([slot + rng.uniform(-0.2, 0.2), rng.uniform(0.35, 0.75), z])
    heading = rng.uniform(-0.5, 0.5) + (0.0 if rng.random() < 0.5 else np.pi)
    travel = m * rng.uniform(0.9, 1.2) * np.array([np.cos(heading), 0.0, 0.5 * np.sin(heading)])
    travel[1] = m * rng.uniform(-0.15, 0.15)
    axis = rng.normal(size=3)
    spin = m * rng.uniform(0.8, 1.6)
    rot0 = axis_angle_33(rng.normal(size=3), rng.uniform(0, np.pi))
    phases = rng.uniform(0, 2 * np.pi, 3)
    hue = rng.random()
    colours = np.stack(
        [
            _hsv_rgb(hue, rng.uniform(0.6, 0.9), 0.95),
            _hsv_rgb((hue + 0.45) % 1.0, rng.uniform(0.5, 0.8), 0.8),
        ]
    )
    nonrigid = cfg.nonrigid and k == 0
    centres, shapes, twists = [], [], []
    for s in s_t:
        squash = 1.0 + (0.2 * m * np.sin(2 * np.pi * s + phases) if nonrigid else 0.0)
        centres.append(centre + (s - 0.5) * travel)
        shapes.append(axis_angle_33(axis, spin * s) @ rot0 @ np.diag(radii * squash))
        twists.append(1.5 * m * s if nonrigid else 0.0)
    return _Ellipsoid(
        centre_t3=np.array(centres),
        shape_t33=np.array(shapes),
        twist_t=np.array(twists),
        radius_m=float(radii.mean()),
        colours_23=colours,
        stripes=int(rng.integers(3, 7)),
    )


def _layout(cfg: SceneConfig) -> _Layout:
    rng = np.random.default_rng(cfg.seed)
    s_t = np.arange(cfg.n_frames) / (cfg.n_frames - 1)
    c2w_t44 = _camera_poses(cfg, s_t, rng)
    static = [_static_ellipsoid(j, cfg, rng) for j in range(cfg.n_static_objects)]
    moving = [_moving_ellipsoid(k, cfg, s_t, rng) for k in range(cfg.n_objects)]
    stone = rng.uniform(0.0, 0.15)
    brick = rng.uniform(0.0, 0.08)
    return _Layout(
        K_33=intrinsics_33(cfg.height, cfg.width, cfg.fov_deg),
        c2w_t44=c2w_t44,
        ellipsoids=static + moving,
        n_static=len(static),
        table=textures.NoiseTable.from_rng(rng),
        ground_colours_33=np.stack(
            [_hsv_rgb(stone, 0.2, 0.75), _hsv_rgb(stone + 0.05, 0.3, 0.55), _hsv_rgb(0.1, 0.1, 0.4)]
        ),
        wall_colours_33=np.stack(
            [
                _hsv_rgb(brick, 0.65, 0.7),
                _hsv_rgb(brick + 0.04, 0.55, 0.5),
                _hsv_rgb(0.12, 0.08, 0.85),
            ]
        ),
        height=cfg.height,
        width=cfg.width,
    )


# ---------------------------------------------------------------------------------------------
# Ray casting and moving surface points between frames.


def _twist(q_p3: np.ndarray, twist: float) -> np.ndarray:
    """Rotates each point about the local y axis by `twist * y`: maps the unit sphere to itself."""
    if twist == 0.0:
        return q_p3
    angle = twist * q_p3[:, 1]
    c, s = np.cos(angle), np.sin(angle)
    return np.stack(
        [c * q_p3[:, 0] - s * q_p3[:, 2], q_p3[:, 1], s * q_p3[:, 0] + c * q_p3[:, 2]], axis=1
    )


def _rays_p3(layout: _Layout, t: int, xy_p2: np.ndarray) -> np.ndarray:
    """World ray directions whose camera-z component is 1, so the ray parameter is the depth."""
    cam_p3 = np.concatenate([xy_p2, np.ones((len(xy_p2), 1))], axis=1)
    return apply_33(layout.c2w_t44[t, :3, :3] @ np.linalg.inv(layout.K_33), cam_p3)


def _rays_near(layout: _Layout, t: int, ell: _Ellipsoid, xy_p2: np.ndarray) -> np.ndarray:
    """Indices of the pixels inside the image box of the ellipsoid's bounding sphere (all of
    them when the sphere reaches behind the camera): the only rays that can hit it."""
    radius = np.linalg.norm(ell.shape_t33[t], ord=2)  # largest semi-axis
    R, C = layout.c2w_t44[t, :3, :3], layout.c2w_t44[t, :3, 3]
    x, y, z = R.T @ (ell.centre_t3[t] - C)
    if z <= radius * 1.01:
        return np.arange(len(xy_p2))
    lo_hi = []
    for lateral, focal, principal in (
        (x, layout.K_33[0, 0], layout.K_33[0, 2]),
        (y, layout.K_33[1, 1], layout.K_33[1, 2]),
    ):
        # Tangent rays from the camera in the (lateral, z) plane bound the projected disk.
        centre, half = np.arctan2(lateral, z), np.arcsin(radius / np.hypot(lateral, z))
        lo_hi.append(principal + focal * np.tan([centre - half, centre + half]) + [-1.0, 1.0])
    (x0, x1), (y0, y1) = lo_hi
    inside = (xy_p2[:, 0] >= x0) & (xy_p2[:, 0] <= x1) & (xy_p2[:, 1] >= y0) & (xy_p2[:, 1] <= y1)
    return np.flatnonzero(inside)


def _cast(layout: _Layout, t: int, xy_p2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First surface along each pixel ray of frame t: (depth [P], surface id [P], rays [P, 3])."""
    C = layout.c2w_t44[t, :3, 3]
    rays_p3 = _rays_p3(layout, t, xy_p2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(rays_p3[:, 1] > 1e-12, (GROUND_Y_M - C[1]) / rays_p3[:, 1], np.inf)
        wall = np.where(rays_p3[:, 2] > 1e-12, (WALL_Z_M - C[2]) / rays_p3[:, 2], np.inf)
    depth_p = np.minimum(ground, wall)
    surface_p = np.where(ground <= wall, _GROUND, _WALL).astype(np.int16)
    for j, ell in enumerate(layout.ellipsoids):
        rows = _rays_near(layout, t, ell, xy_p2)
        inv_A = np.linalg.inv(ell.shape_t33[t])
        a_3 = inv_A @ (C - ell.centre_t3[t])
        b_p3 = apply_33(inv_A, rays_p3[rows])
        bb, ab = np.einsum("pi,pi->p", b_p3, b_p3), np.einsum("pi,i->p", b_p3, a_3)
        disc = ab * ab - bb * (a_3 @ a_3 - 1.0)
        lam = np.full_like(bb, np.inf)
        hit = disc > 0.0
        lam[hit] = (-ab[hit] - np.sqrt(disc[hit])) / bb[hit]
        closer = (lam > 1e-9) & (lam < depth_p[rows])
        depth_p[rows[closer]] = lam[closer]
        surface_p[rows[closer]] = 2 + j
    if not np.isfinite(depth_p).all():
        raise RuntimeError("synthetic layout bug: a camera ray hit no surface")
    return depth_p, surface_p, rays_p3


def _material_p3(
    layout: _Layout, t: int, surface_p: np.ndarray, points_p3: np.ndarray
) -> np.ndarray:
    """Material coordinates of surface points seen at frame t (world point for the planes)."""
    material_p3 = points_p3.copy()
    for j, ell in enumerate(layout.ellipsoids):
        sel = surface_p == 2 + j
        q_p3 = apply_33(np.linalg.inv(ell.shape_t33[t]), points_p3[sel] - ell.centre_t3[t])
        q_p3 /= np.linalg.norm(q_p3, axis=1, keepdims=True)
        material_p3[sel] = _twist(q_p3, -ell.twist_t[t])
    return material_p3


def _world_p3(
    layout: _Layout, t: int, surface_p: np.ndarray, material_p3: np.ndarray
) -> np.ndarray:
    """Where the material points are at frame t (inverse of `_material_p3`)."""
    world_p3 = material_p3.copy()
    for j, ell in enumerate(layout.ellipsoids):
        sel = surface_p == 2 + j
        world_p3[sel] = (
            apply_33(ell.shape_t33[t], _twist(material_p3[sel], ell.twist_t[t])) + ell.centre_t3[t]
        )
    return world_p3


def _observe(
    layout: _Layout, t: int, surface_p: np.ndarray, world_p3: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Projects surface points into frame t: (pixel xy [P, 2], visible [P]).

    Visible: inside the image, in front of the camera, and the ray through that exact sub-pixel
    position hits the same surface at the same depth first.
    """
    xy_p2, z_p = project_p2(layout.K_33, layout.c2w_t44[t], world_p3)
    h, w = layout.height, layout.width
    visible_p = (
        (z_p > 1e-6)
        & (xy_p2[:, 0] >= -0.5)
        & (xy_p2[:, 0] < w - 0.5)
        & (xy_p2[:, 1] >= -0.5)
        & (xy_p2[:, 1] < h - 0.5)
    )
    if visible_p.any():
        depth_v, surface_v, _ = _cast(layout, t, xy_p2[visible_p])
        same = (surface_v == surface_p[visible_p]) & (
            np.abs(depth_v - z_p[visible_p]) <= _DEPTH_TOL * z_p[visible_p]
        )
        visible_p[visible_p] = same
    return xy_p2, visible_p


# ---------------------------------------------------------------------------------------------
# Texturing.


def _footprint_p(layout: _Layout, surface_p: np.ndarray, material_p3: np.ndarray) -> np.ndarray:
    """Pixel footprint in metres, as a function of the surface point alone.

    It is measured from a reference camera at the world origin (plane points: distance over the
    cosine of incidence; ellipsoids: one value from their mean distance), never from the current
    camera, so a point's colour does not change from frame to frame. The cameras stay within a
    metre of the origin, so it is close to the true footprint.
    """
    dist_p = np.linalg.norm(material_p3, axis=1)
    normal_axis_p = np.where(surface_p == _GROUND, 1, 2)  # ground: y = const, wall: z = const
    incidence_p = np.abs(np.take_along_axis(material_p3, normal_axis_p[:, None], axis=1)[:, 0])
    footprint_p = dist_p / np.maximum(incidence_p / np.maximum(dist_p, 1e-9), 0.1)
    for j, ell in enumerate(layout.ellipsoids):
        footprint_p[surface_p == 2 + j] = np.linalg.norm(ell.centre_t3.mean(axis=0))
    return (footprint_p / layout.focal).astype(np.float32)


_GROUND_TILES = textures.Tiles(size_u_m=0.6, size_v_m=0.6, row_offset=0.0, grout_m=0.04)
_WALL_BRICKS = textures.Tiles(size_u_m=0.5, size_v_m=0.22, row_offset=0.5, grout_m=0.03)
_LIGHT_3 = np.array([-0.3, -0.8, -0.5]) / np.linalg.norm([-0.3, -0.8, -0.5])


def _plane_rgb(
    table: textures.NoiseTable,
    tiles: textures.Tiles,
    colours_33: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    footprint: np.ndarray,
) -> np.ndarray:
    tile_value, interior, pattern = tiles.evaluate(table, u, v, footprint)
    tile_rgb = colours_33[0] + tile_value[:, None] * (colours_33[1] - colours_33[0])
    rgb = colours_33[2] + interior[:, None] * (tile_rgb - colours_33[2])
    mean_rgb = 0.85 * colours_33[:2].mean(axis=0) + 0.15 * colours_33[2]
    rgb = mean_rgb + pattern[:, None] * (rgb - mean_rgb)
    detail = textures.contrast(textures.fbm(table, (u, v), footprint, 1.2, 10, 0.7), 2.5)
    stain = textures.contrast(textures.fbm(table, (u + 101.0, v), footprint, 3.0, 3), 1.6)
    return rgb * ((0.55 + 0.6 * detail) * (0.8 + 0.35 * stain))[:, None]


def _ellipsoid_rgb(
    table: textures.NoiseTable, ell: _Ellipsoid, material_p3: np.ndarray, footprint: np.ndarray
) -> np.ndarray:
    coords = tuple(material_p3[:, i] * ell.radius_m for i in range(3))
    detail = textures.contrast(textures.fbm(table, coords, footprint, 0.3, 7), 2.2)
    band = np.full(len(material_p3), 0.5, np.float32)
    if ell.stripes:
        longitude = np.arctan2(material_p3[:, 2], material_p3[:, 0])
        wobble = 3.0 * (textures.fbm(table, coords, footprint, 0.5, 2) - 0.5)
        ring_m = 2 * np.pi * ell.radius_m * np.sqrt(np.clip(1 - material_p3[:, 1] ** 2, 0, 1))
        weight = textures.detail_weight(ring_m / ell.stripes, footprint)
        band = 0.5 + weight * 0.5 * np.sin(ell.stripes * longitude + wobble)
    rgb = ell.colours_23[0] + band[:, None] * (ell.colours_23[1] - ell.colours_23[0])
    # Shading baked in material space: a point keeps its brightness as the object turns.
    shade = 0.7 + 0.3 * np.clip(np.einsum("pi,i->p", material_p3, _LIGHT_3), 0.0, 1.0)
    return rgb * ((0.5 + 0.7 * detail) * shade)[:, None]


def _colour_p3(
    layout: _Layout, surface_p: np.ndarray, material_p3: np.ndarray, footprint_p: np.ndarray
) -> np.ndarray:
    rgb_p3 = np.zeros((len(surface_p), 3))
    sel = surface_p == _GROUND
    rgb_p3[sel] = _plane_rgb(
        layout.table,
        _GROUND_TILES,
        layout.ground_colours_33,
        material_p3[sel, 0],
        material_p3[sel, 2],
        footprint_p[sel],
    )
    sel = surface_p == _WALL
    rgb_p3[sel] = _plane_rgb(
        layout.table,
        _WALL_BRICKS,
        layout.wall_colours_33,
        material_p3[sel, 0] + 50.0,
        material_p3[sel, 1],
        footprint_p[sel],
    )
    for j, ell in enumerate(layout.ellipsoids):
        sel = surface_p == 2 + j
        rgb_p3[sel] = _ellipsoid_rgb(layout.table, ell, material_p3[sel], footprint_p[sel])
    return rgb_p3


# ---------------------------------------------------------------------------------------------
# The renderer.


@dataclass
class _Frame:
    """Primary hits of one frame, flattened over pixels (row-major)."""

    depth_p: np.ndarray
    surface_p: np.ndarray
    material_p3: np.ndarray


def _object_index_p(layout: _Layout, surface_p: np.ndarray) -> np.ndarray:
    first_moving = 2 + layout.n_static
    return np.where(surface_p >= first_moving, surface_p - first_moving, -1).astype(np.int8)


def _render_frame(layout: _Layout, t: int, grid_p2: np.ndarray) -> tuple[_Frame, np.ndarray]:
    depth_p, surface_p, rays_p3 = _cast(layout, t, grid_p2)
    points_p3 = layout.c2w_t44[t, :3, 3] + depth_p[:, None] * rays_p3
    material_p3 = _material_p3(layout, t, surface_p, points_p3)
    footprint_p = _footprint_p(layout, surface_p, material_p3)
    rgb_p3 = _colour_p3(layout, surface_p, material_p3, footprint_p)
    rgb_p3 = np.round(np.clip(rgb_p3, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _Frame(depth_p, surface_p, material_p3), rgb_p3


def _flow(
    layout: _Layout, src: _Frame, t_dst: int, grid_p2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Displacement of each pixel's surface point to frame t_dst, and whether it is seen there."""
    world_p3 = _world_p3(layout, t_dst, src.surface_p, src.material_p3)
    xy_p2, visible_p = _observe(layout, t_dst, src.surface_p, world_p3)
    return (xy_p2 - grid_p2).astype(np.float32), visible_p


def make_scene(cfg: SceneConfig, progress: ProgressFn = no_progress) -> SyntheticScene:
    """Renders the clip that `cfg` describes, with exact ground truth (deterministic)."""
    _check(cfg)
    layout = _layout(cfg)
    T, H, W, N = cfg.n_frames, cfg.height, cfg.width, cfg.n_tracks
    grid_p2 = pixel_grid_hw2(H, W).reshape(-1, 2)
    track_rng = np.random.default_rng([cfg.seed, 1])
    query_t_n = np.sort(track_rng.integers(0, T, N))
    track_surface_n = np.zeros(N, np.int16)
    track_material_n3 = np.zeros((N, 3))

    frames = np.zeros((T, H, W, 3), np.uint8)
    depth = np.zeros((T, H, W), np.float32)
    objects = np.zeros((T, H, W), np.int8)
    flow_fwd = np.zeros((T - 1, H, W, 2), np.float32)
    flow_bwd = np.zeros((T - 1, H, W, 2), np.float32)
    valid_fwd = np.zeros((T - 1, H, W), bool)
    valid_bwd = np.zeros((T - 1, H, W), bool)
    previous: _Frame | None = None
    for t in range(T):
        current, rgb_p3 = _render_frame(layout, t, grid_p2)
        frames[t] = rgb_p3.reshape(H, W, 3)
        depth[t] = current.depth_p.reshape(H, W)
        objects[t] = _object_index_p(layout, current.surface_p).reshape(H, W)
        if previous is not None:
            fwd, vis = _flow(layout, previous, t, grid_p2)
            flow_fwd[t - 1], valid_fwd[t - 1] = fwd.reshape(H, W, 2), vis.reshape(H, W)
            bwd, vis = _flow(layout, current, t - 1, grid_p2)
            flow_bwd[t - 1], valid_bwd[t - 1] = bwd.reshape(H, W, 2), vis.reshape(H, W)
        tracks_here = np.flatnonzero(query_t_n == t)
        pixels = _sample_track_pixels(track_rng, objects[t].reshape(-1), len(tracks_here))
        track_surface_n[tracks_here] = current.surface_p[pixels]
        track_material_n3[tracks_here] = current.material_p3[pixels]
        previous = current
        progress(t + 1, T, f"rendered frame {t + 1}/{T}")

    tracks = np.zeros((N, T, 2), np.float32)
    tracks_world = np.zeros((N, T, 3), np.float32)
    occluded = np.ones((N, T), bool)
    for t in range(T):
        world_n3 = _world_p3(layout, t, track_surface_n, track_material_n3)
        xy_n2, visible_n = _observe(layout, t, track_surface_n, world_n3)
        tracks[:, t], tracks_world[:, t], occluded[:, t] = xy_n2, world_n3, ~visible_n
    return SyntheticScene(
        frames_thw3=frames,
        depth_thw=depth,
        K_33=layout.K_33,
        c2w_t44=layout.c2w_t44,
        flow_fwd_t1hw2=flow_fwd,
        flow_bwd_t1hw2=flow_bwd,
        valid_fwd_t1hw=valid_fwd,
        valid_bwd_t1hw=valid_bwd,
        moving_thw=objects >= 0,
        tracks_nt2=tracks,
        occluded_nt=occluded,
        object_thw=objects,
        tracks_world_nt3=tracks_world,
        track_query_t_n=query_t_n.astype(np.int64),
        track_object_n=_object_index_p(layout, track_surface_n).astype(np.int64),
        config=cfg,
    )


def render_view(cfg: SceneConfig, t: int, c2w_44: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scene as it stands at frame t seen from another camera (camera-to-world, OpenCV axes,
    the clip's intrinsics): uint8 RGB [H, W, 3] and camera z [H, W] in metres. Ground truth for
    views away from the clip's own cameras; at frame t's camera it repeats frame t."""
    _check(cfg)
    if not 0 <= t < cfg.n_frames:
        raise InvalidArgumentError("t", f"{t} is outside the clip's frames 0..{cfg.n_frames - 1}")
    layout = _layout(cfg)
    c2w_t44 = layout.c2w_t44.copy()
    c2w_t44[t] = c2w_44
    viewed = replace(layout, c2w_t44=c2w_t44)
    hits, rgb_p3 = _render_frame(viewed, t, pixel_grid_hw2(cfg.height, cfg.width).reshape(-1, 2))
    shape = (cfg.height, cfg.width)
    return rgb_p3.reshape(*shape, 3), hits.depth_p.reshape(shape).astype(np.float32)


def _sample_track_pixels(rng: np.random.Generator, object_p: np.ndarray, n: int) -> np.ndarray:
    """Pixel indices for n track queries: half on moving objects where any are visible."""
    moving = np.flatnonzero(object_p >= 0)
    still = np.flatnonzero(object_p < 0)
    n_moving = min(n // 2, len(moving)) if len(still) else n
    n_still = n - n_moving
    picks = [
        rng.choice(moving, n_moving, replace=n_moving > len(moving)),
        rng.choice(still, n_still, replace=n_still > len(still)) if n_still else [],
    ]
    return np.concatenate(picks).astype(np.int64)
