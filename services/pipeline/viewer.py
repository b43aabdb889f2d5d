"""`gflow view`: a finished run in a 4D viewer in the browser (viser; its web client ships with
the package, so it works offline).

The scene: the Gaussians of the shown frame as points coloured by RGB or still / moving (a
Gaussian is moving when its centre projects into that frame's moving mask), every camera as a
small frustum, the camera path, 3D tracks up to the shown frame as polylines (when the run has
tracks), and the input frame on the shown camera's frustum. A time slider and a play box pick
the frame. Only the camera path, frustums and tracks are sent up front; each frame's Gaussians
are read from the store and sent when that frame is shown (a few recent frames are cached).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tyro
from scipy.spatial.transform import Rotation

from gflow.v1 import common_pb2, pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.errors import NotFoundError
from services.common.geometry import project_p2
from services.common.stage import artifact, optional_artifact
from services.common.video import frames_sha256, load_frames
from services.fit.export import PLY_PROPERTIES, SH_C0, intrinsics_33, ply_table
from services.fit.motion import inside_image, nearest_pixel
from services.pipeline.report import RESULT_NAME

log = logging.getLogger(__name__)

STILL_RGB = (90, 140, 230)
MOVING_RGB = (240, 60, 40)
PATH_RGB = (209, 36, 47)
TRACK_RGB = (255, 170, 0)
IMAGE_WIDTH_PX = 320  # the input frame on the frustum is sent at most this wide
FRAME_CACHE = 8  # parsed frames kept, so scrubbing back and forth does not re-read the store
_COLUMN = {name: i for i, name in enumerate(PLY_PROPERTIES)}


@dataclass
class ViewCommand:
    """Open a finished run in a 4D viewer in the browser (time slider, Gaussians, cameras)."""

    # A run folder (`gflow run --out`); with --remote-config, the report key the run logged.
    run: tyro.conf.Positional[str]
    # Endpoints file written by `gflow serve`: read the run from that object store.
    remote_config: Path | None = None
    # Address the viewer listens on (0.0.0.0: reachable from other machines).
    host: str = "127.0.0.1"
    # Port of the viewer's page and websocket.
    port: int = 8080
    # Most Gaussians sent per frame (evenly thinned above this).
    max_points: int = 200_000
    # Stop after this many seconds (0 = until Ctrl-C); for scripts and tests.
    seconds: float = 0.0


@dataclass
class ViewRun:
    """What the viewer shows: loaded once, except the per-frame Gaussians (`ply_refs`)."""

    ply_refs: list[common_pb2.ArtifactRef]
    frames_thw3: np.ndarray  # uint8 [T, H, W, 3] input frames
    masks_thw: np.ndarray  # bool [T, H, W] moving masks of the fit
    c2w_t44: np.ndarray  # float64 [T, 4, 4] camera-to-world, OpenCV axes
    K_33: np.ndarray  # float64 intrinsics
    tracks_nt3: np.ndarray | None  # float32 [N, T, 3] 3D tracks, when the run has them
    alive_nt: np.ndarray | None  # bool [N, T] track exists at that frame
    fps: float


def stored_pipeline_result(artifacts: Artifacts, report_key: str) -> pipeline_pb2.PipelineResult:
    """The pipeline result stored beside a report (services.pipeline.report.write_report)."""
    folder = report_key.strip("/").removesuffix("/report.html")
    key = f"{folder}/{RESULT_NAME}"
    if not artifacts.store.exists(key):
        raise NotFoundError(
            f"{key} is not in the store: give the report key a run logged (report/...)"
        )
    return pipeline_pb2.PipelineResult.FromString(artifacts.store.get(key))


def open_run(artifacts: Artifacts, result: pipeline_pb2.PipelineResult) -> ViewRun:
    """Everything but the Gaussians, from the fit's stored outputs and the ingested video."""
    fit, video = result.fit, result.video
    hw = (video.height, video.width)
    intrinsics = artifacts.get_json(artifact(fit, "intrinsics", "fit"), "fit.intrinsics")
    tracks_ref = optional_artifact(fit, "tracks_3d")
    alive_ref = optional_artifact(fit, "tracks_3d_alive")
    plys = sorted(
        (item for item in fit.artifacts if item.name.startswith("gaussians_")),
        key=lambda item: item.name,
    )
    return ViewRun(
        ply_refs=[item.ref for item in plys],
        frames_thw3=load_frames(artifacts, video, frames_sha256(artifacts, video)),
        masks_thw=artifacts.get_array(
            artifact(fit, "moving_masks", "fit"), layout="THW", expect_hw=hw, field="fit.masks"
        ).astype(bool),
        c2w_t44=artifacts.get_array(artifact(fit, "c2w", "fit"), layout="TIJ", field="fit.c2w"),
        K_33=intrinsics_33(intrinsics),
        tracks_nt3=None if tracks_ref is None else artifacts.get_array(tracks_ref),
        alive_nt=None if alive_ref is None else artifacts.get_array(alive_ref).astype(bool),
        fps=video.fps or 10.0,
    )


def moving_by_mask(
    means_n3: np.ndarray, c2w_44: np.ndarray, K_33: np.ndarray, mask_hw: np.ndarray
) -> np.ndarray:
    """bool [N]: the centre projects in front of the camera into a moving pixel."""
    xy_n2, z_n = project_p2(K_33, c2w_44, means_n3.astype(np.float64))
    height, width = mask_hw.shape
    inside_n = (z_n > 0) & inside_image(xy_n2, height, width)
    rows_n, cols_n = nearest_pixel(xy_n2, height, width)
    return inside_n & mask_hw[rows_n, cols_n]


def frame_points(
    run: ViewRun, artifacts: Artifacts, t: int, max_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame t's Gaussians: float32 [N, 3] centres, uint8 [N, 3] RGB, bool [N] moving; thinned
    evenly to at most `max_points`."""
    table = ply_table(artifacts.get_bytes(run.ply_refs[t], f"fit.gaussians[{t}]"))
    if len(table) > max_points:
        table = table[np.linspace(0, len(table) - 1, max_points).astype(int)]
    means_n3 = table[:, [_COLUMN["x"], _COLUMN["y"], _COLUMN["z"]]]
    dc_n3 = table[:, [_COLUMN["f_dc_0"], _COLUMN["f_dc_1"], _COLUMN["f_dc_2"]]]
    rgb_n3 = (np.clip(0.5 + SH_C0 * dc_n3, 0, 1) * 255).round().astype(np.uint8)
    moving_n = moving_by_mask(means_n3, run.c2w_t44[t], run.K_33, run.masks_thw[t])
    return np.ascontiguousarray(means_n3), rgb_n3, moving_n


def track_segments(
    tracks_nt3: np.ndarray | None, alive_nt: np.ndarray | None, t: int
) -> np.ndarray:
    """float32 [M, 2, 3] steps of every track from frame 0 to t whose two ends are alive and
    finite (empty without tracks)."""
    if tracks_nt3 is None or t < 1:
        return np.zeros((0, 2, 3), np.float32)
    ends_nt = np.isfinite(tracks_nt3).all(axis=2)
    if alive_nt is not None:
        ends_nt &= alive_nt
    ok_ns = ends_nt[:, :t] & ends_nt[:, 1 : t + 1]
    starts_m3, stops_m3 = tracks_nt3[:, :t][ok_ns], tracks_nt3[:, 1 : t + 1][ok_ns]
    return np.stack([starts_m3, stops_m3], axis=1).astype(np.float32)


def _wxyz(rotation_33: np.ndarray) -> np.ndarray:
    x, y, z, w = Rotation.from_matrix(rotation_33).as_quat()
    return np.array([w, x, y, z])


class Viewer:
    """The viser scene and controls of one run; `show(t)` sends frame t."""

    def __init__(self, server, run: ViewRun, artifacts: Artifacts, max_points: int):
        self.server = server
        self.run = run
        self.lock = threading.Lock()
        self.points = functools.lru_cache(maxsize=FRAME_CACHE)(
            lambda t: frame_points(run, artifacts, t, max_points)
        )
        n_frames = len(run.c2w_t44)
        height, width = run.frames_thw3.shape[1:3]
        self.fov = 2 * np.arctan(height / (2 * run.K_33[1, 1]))
        self.aspect = width / height
        centres_t3 = run.c2w_t44[:, :3, 3]
        extent = float(np.ptp(centres_t3, axis=0).max()) if n_frames > 1 else 0.0
        first = self.points(0)[0]
        depth = float(np.median(np.linalg.norm(first - centres_t3[0], axis=1))) if len(first) else 1
        self.scale = max(0.05 * depth, 0.2 * extent / max(n_frames, 1))
        scene = server.scene
        scene.set_up_direction("-y")
        # Start behind and above the first camera, looking where it looks.
        forward_3 = run.c2w_t44[0, :3, 2]
        server.initial_camera.position = (
            centres_t3[0] - 0.8 * depth * forward_3 - [0, 0.5 * depth, 0]
        )
        server.initial_camera.look_at = centres_t3[0] + depth * forward_3
        if n_frames > 1:
            scene.add_line_segments(
                "/camera_path",
                np.stack([centres_t3[:-1], centres_t3[1:]], axis=1),
                PATH_RGB,
                thickness=2.0,
                thickness_units="screen",
            )
        for t, c2w in enumerate(run.c2w_t44):
            scene.add_camera_frustum(
                f"/cameras/{t:05d}",
                self.fov,
                self.aspect,
                scale=0.5 * self.scale,
                thickness=1.0,
                thickness_units="screen",
                color=(120, 120, 120),
                wxyz=_wxyz(c2w[:3, :3]),
                position=c2w[:3, 3],
            )
        self.cloud = scene.add_point_cloud(
            "/gaussians", first, (128, 128, 128), point_size=0.004 * depth, point_shape="circle"
        )
        self.tracks = None
        gui = server.gui
        self.slider = gui.add_slider("frame", 0, n_frames - 1, 1, 0)
        self.play = gui.add_checkbox("play", False)
        self.play_fps = gui.add_slider("frames per second", 1, 30, 1, int(min(run.fps, 30)))
        self.colour = gui.add_dropdown("colour", ("RGB", "still / moving"), initial_value="RGB")
        self.slider.on_update(lambda _: self.show(self.slider.value))
        self.colour.on_update(lambda _: self.show(self.slider.value, force=True))
        self.shown = -1

    def show(self, t: int, force: bool = False) -> None:
        """Send frame t: its Gaussians, its camera with the input frame, tracks up to t."""
        with self.lock:
            if t == self.shown and not force:
                return
            run, scene = self.run, self.server.scene
            points_n3, rgb_n3, moving_n = self.points(t)
            if self.colour.value != "RGB":
                rgb_n3 = np.where(moving_n[:, None], MOVING_RGB, STILL_RGB).astype(np.uint8)
            with self.server.atomic():
                self.cloud.points = points_n3
                self.cloud.colors = rgb_n3
                frame = run.frames_thw3[t]
                if frame.shape[1] > IMAGE_WIDTH_PX:
                    size = (IMAGE_WIDTH_PX, round(frame.shape[0] * IMAGE_WIDTH_PX / frame.shape[1]))
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                scene.add_camera_frustum(  # replaces the previous frame's
                    "/current_camera",
                    self.fov,
                    self.aspect,
                    scale=self.scale,
                    thickness=3.0,
                    thickness_units="screen",
                    color=(31, 111, 235),
                    image=frame,
                    format="jpeg",
                    wxyz=_wxyz(run.c2w_t44[t][:3, :3]),
                    position=run.c2w_t44[t][:3, 3],
                )
                segments_m23 = track_segments(run.tracks_nt3, run.alive_nt, t)
                if len(segments_m23):
                    self.tracks = scene.add_line_segments(  # replaces the previous frame's
                        "/tracks",
                        segments_m23,
                        TRACK_RGB,
                        thickness=2.0,
                        thickness_units="screen",
                    )
                elif self.tracks is not None:
                    self.tracks.remove()
                    self.tracks = None
            self.shown = t

    def step(self) -> None:
        """Advance one frame when play is on (called by the play loop)."""
        if self.play.value:
            self.slider.value = (self.slider.value + 1) % len(self.run.c2w_t44)


def serve_viewer(
    artifacts: Artifacts, result: pipeline_pb2.PipelineResult, command: ViewCommand
) -> None:
    """Load the run, start the viewer, and play frames until Ctrl-C or `command.seconds`."""
    import viser

    started = time.monotonic()
    run = open_run(artifacts, result)
    server = viser.ViserServer(host=command.host, port=command.port, verbose=False)
    viewer = Viewer(server, run, artifacts, command.max_points)
    viewer.show(0)
    log.info(
        "viewer ready in %.1f s: http://%s:%d (%d frames)",
        time.monotonic() - started,
        command.host,
        server.get_port(),
        len(run.c2w_t44),
    )
    try:
        while command.seconds <= 0 or time.monotonic() - started < command.seconds:
            time.sleep(1.0 / viewer.play_fps.value)
            viewer.step()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
