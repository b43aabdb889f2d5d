"""A finished run made from a synthetic scene's exact ground truth, in the store's run layout.

The fit's outputs are the truth itself: cameras, depth, moving masks, 3D tracks, and Gaussians
back-projected from the true depth of every `step_px`-th pixel. So the report and the viewer can
be tested against exact expectations in seconds, without running a fit.
"""

from __future__ import annotations

import io

import numpy as np

from gflow.v1 import common_pb2, pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.geometry import backproject_p3
from services.common.preview import colorize, encode_png
from services.common.stage import StageOutputs
from services.common.video import frames_sha256, store_frames, write_mp4
from services.fit.export import intrinsics_json, ply_bytes, write_tum
from services.fit.gaussians import FrameGaussians
from services.fit.videos import draw_trajectories
from services.synthetic.scene import SyntheticScene

FPS = 10.0


def truth_gaussians(scene: SyntheticScene, t: int, step_px: int) -> FrameGaussians:
    """Frame t's pixels on a grid of `step_px` as small opaque Gaussians at their true depth."""
    height, width = scene.depth_thw.shape[1:]
    ys, xs = np.mgrid[0:height:step_px, 0:width:step_px]
    xy_p2 = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    depth_p = scene.depth_thw[t][ys.ravel(), xs.ravel()].astype(np.float64)
    n = len(xy_p2)
    means_n3 = backproject_p3(scene.K_33, scene.c2w_t44[t], xy_p2, depth_p)
    return FrameGaussians(
        means_n3=means_n3.astype(np.float32),
        quats_n4=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
        scales_n3=np.full((n, 3), 0.01, np.float32),
        opacities_n=np.full(n, 0.9, np.float32),
        colors_n3=scene.frames_thw3[t][ys.ravel(), xs.ravel()].astype(np.float32) / 255,
        moving_n=scene.moving_thw[t][ys.ravel(), xs.ravel()],
        ids_n=np.arange(n, dtype=np.int64),
    )


def _small_stage(
    artifacts: Artifacts, video_sha256: str, stage: str, figures: dict[str, float], report: dict
):
    out = StageOutputs(artifacts, stage, "truth", f"{stage}/truth", video_sha256)
    out.file(
        "preview",
        encode_png(colorize(np.random.default_rng(0).random((24, 32)))),
        "image/png",
        ".png",
    )
    for name, value in figures.items():
        out.figure(name, value)
    out.report(report)
    return out.result


def synthetic_run(
    artifacts: Artifacts,
    scene: SyntheticScene,
    step_px: int = 4,
    psnr_t: list[float] | None = None,
    videos: bool = True,
) -> pipeline_pb2.PipelineResult:
    """The pipeline result of a run whose every output is `scene`'s truth (see the module)."""
    video = store_frames(artifacts, scene.frames_thw3, FPS)
    video_sha256 = frames_sha256(artifacts, video)
    n_frames = len(scene.frames_thw3)
    psnr_t = [40.0] * n_frames if psnr_t is None else psnr_t
    flow = _small_stage(
        artifacts, video_sha256, "flow", {"fb_consistent_share": 0.95, "fb_error_mean": 0.1}, {}
    )
    depth = _small_stage(
        artifacts,
        video_sha256,
        "depth",
        {
            "nonpositive_share": 0.0,
            "scale_drift": 0.02,
            "periodic_artefact": 1.2,
            "prior_share": 0.0,
        },
        {"series": {"median_depth": [float(np.median(d)) for d in scene.depth_thw]}},
    )
    segment = _small_stage(
        artifacts,
        video_sha256,
        "segment",
        {
            "moving_share_mean": float(scene.moving_thw.mean()),
            "temporal_iou_mean": 0.9,
            "degenerate_frames": 0,
        },
        {},
    )
    fit = StageOutputs(artifacts, "fit", "gflow", "fit/truth", video_sha256)
    fit.array("c2w", scene.c2w_t44, "TIJ")
    fit.json("intrinsics", intrinsics_json(scene.K_33))
    tum = io.StringIO()
    write_tum(scene.c2w_t44, FPS, tum)
    fit.file("poses_tum", tum.getvalue().encode(), "text/plain", ".txt")
    fit.array("depth", scene.depth_thw.astype(np.float32), "THW")
    fit.array("moving_masks", scene.moving_thw, "THW")
    for t in range(n_frames):
        gaussians = truth_gaussians(scene, t, step_px)
        ply = ply_bytes(gaussians)
        fit.file(f"gaussians_{t:04d}", ply, "application/x-ply", ".ply")
    fit.array("tracks_3d", scene.tracks_world_nt3, "NTC")
    fit.array("tracks_3d_alive", ~scene.occluded_nt, "NT")
    if videos:
        side_by_side = np.concatenate([scene.frames_thw3, scene.frames_thw3], axis=2)
        fit.file("video_reconstruction", write_mp4(side_by_side, FPS), "video/mp4", ".mp4")
        moving_n = scene.track_object_n >= 0
        tracks = draw_trajectories(scene.frames_thw3, scene.tracks_nt2, scene.occluded_nt, moving_n)
        fit.file("video_trajectories", write_mp4(tracks, FPS), "video/mp4", ".mp4")
    fit.figure("psnr_mean", float(np.mean(psnr_t)), "dB")
    fit.figure("psnr_min", float(np.min(psnr_t)), "dB")
    fit.figure("moving_share_mean", float(scene.moving_thw.mean()))
    fit.figure("gaussians_last_frame", len(gaussians))
    fit.figure("frames_short_of_gaussians", 0)
    fit.figure("depth_prior_scale_clipped_frames", 0)
    fit.figure("seconds_per_frame", 0.0, "s")
    fit.report(
        {
            "series": {"psnr_db": [float(v) for v in psnr_t]},
            "camera_path_xz": scene.c2w_t44[:, [0, 2], 3].tolist(),
        }
    )
    return pipeline_pb2.PipelineResult(
        video=video,
        flow=flow,
        depth=depth,
        segment=segment,
        fit=fit.result,
        report=common_pb2.ArtifactRef(),
    )
