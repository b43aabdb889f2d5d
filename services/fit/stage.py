"""Fit stage: the video and the depth, flow and segment results in; cameras, Gaussians, tracks,
videos and PLY files out. Checkpoints live in the store under the stage's key, so a killed fit
resumes where it stopped."""

from __future__ import annotations

import io

import numpy as np

from gflow.v1 import common_pb2, fit_pb2
from services.common.artifacts import Artifacts
from services.common.config import parse_request_config
from services.common.errors import ProgressFn, no_progress
from services.common.keys import source_digest
from services.common.stage import (
    StageOutputs,
    artifact,
    optional_artifact,
    run_cached,
    upstream_array,
    upstream_result,
)
from services.common.store import ObjectStore
from services.common.video import frames_sha256, load_frames
from services.fit.camera import scale_clipped_t
from services.fit.checkpoint import checkpoint_frame, checkpoint_name
from services.fit.config import FitConfig, FitRuntime
from services.fit.engine import FitPriors, FitResult, fit
from services.fit.export import intrinsics_33, intrinsics_json, ply_bytes, write_tum
from services.fit.tracks import configured_tracks
from services.fit.videos import render_videos

STAGE = "fit"


class StoreCheckpoints:
    """The fit engine's CheckpointSink over the object store: `<prefix>/` + `checkpoint_name`,
    each published atomically; a fit's checkpoints build on each other, so all are kept until
    its result is committed (`run_fit` then clears them)."""

    def __init__(self, store: ObjectStore, prefix: str):
        self.store = store
        self.prefix = prefix

    def save(self, frame: int, data: bytes) -> None:
        self.store.put(f"{self.prefix}/{checkpoint_name(frame)}", data)

    def load_all(self) -> list[tuple[int, bytes]]:
        return [
            (checkpoint_frame(key), self.store.get(key))
            for key in self.store.list(f"{self.prefix}/")
        ]

    def clear(self) -> None:
        for key in self.store.list(f"{self.prefix}/"):
            self.store.delete(key)


def load_priors(artifacts: Artifacts, request: fit_pb2.FitRequest, video_sha256: str) -> FitPriors:
    """Everything the engine needs, read from the earlier stages' results (as the store holds
    them, see `verified_request`) and checked for size."""
    video = request.video
    hw = (video.height, video.width)

    def array(result: common_pb2.StageResult, name: str, layout: str, field: str) -> np.ndarray:
        return upstream_array(artifacts, result, name, layout, hw, field)

    K_33 = intrinsics_33(
        artifacts.get_json(artifact(request.depth, "intrinsics", "depth"), "depth")
    )
    poses_ref = optional_artifact(request.depth, "c2w")
    confidence_ref = optional_artifact(request.depth, "confidence")
    return FitPriors(
        frames_thw3=load_frames(artifacts, video, video_sha256),
        depth_thw=array(request.depth, "depth", "THW", "depth"),
        K_33=K_33,
        flow_fwd_t1hw2=array(request.flow, "flow_forward", "THWC", "flow"),
        flow_bwd_t1hw2=array(request.flow, "flow_backward", "THWC", "flow"),
        moving_thw=array(request.segment, "scores", "THW", "segment"),
        c2w_t44=artifacts.get_array(poses_ref, layout="TIJ", field="depth.c2w")
        if poses_ref is not None
        else None,
        depth_confidence_thw=array(request.depth, "confidence", "THW", "depth")
        if confidence_ref is not None
        else None,
    )


def _write_outputs(
    out: StageOutputs,
    result: FitResult,
    priors: FitPriors,
    fps: float,
    queries_q3: np.ndarray | None,
    cfg: FitConfig,
) -> None:
    out.array("c2w", result.c2w_t44, "TIJ")
    out.json("intrinsics", intrinsics_json(result.K_33))
    tum = io.StringIO()
    write_tum(result.c2w_t44, fps, tum)
    out.file("poses_tum", tum.getvalue().encode(), "text/plain", ".txt")
    out.array("depth", result.depth_thw.astype(np.float32), "THW")
    out.array("moving_masks", result.moving_mask_thw, "THW")
    for t, frame in enumerate(result.frames):
        out.file(f"gaussians_{t:04d}", ply_bytes(frame), "application/x-ply", ".ply")
    # No queries give empty track arrays and a trajectories video without tracks.
    queries_q3 = np.zeros((0, 3)) if queries_q3 is None else queries_q3
    tracks = configured_tracks(result, queries_q3, cfg, priors)
    out.array("tracks_2d", tracks.points_qt2.astype(np.float32), "NTC")
    out.array("tracks_occluded", tracks.occluded_qt, "NT")
    out.array("tracks_3d", tracks.world_qt3.astype(np.float32), "NTC")
    out.array("tracks_3d_alive", tracks.alive_qt, "NT")
    for name, data in render_videos(result, priors, fps=fps, tracks=tracks).items():
        out.file(f"video_{name}", data, "video/mp4", ".mp4")
    out.figure("psnr_mean", float(np.mean(result.psnr_t)), "dB")
    out.figure("psnr_min", float(np.min(result.psnr_t)), "dB")
    out.figure("moving_share_mean", float(np.mean(result.moving_share_t)))
    out.figure("gaussians_last_frame", len(result.frames[-1].means_n3))
    out.figure("frames_short_of_gaussians", int(np.count_nonzero(result.held_back_t)))
    out.figure(
        "depth_prior_scale_clipped_frames",
        int(np.count_nonzero(scale_clipped_t(result.depth_scale_t))),
    )
    out.figure("seconds_per_frame", result.seconds / result.n_frames, "s")
    out.report(
        {
            "stage": STAGE,
            "seconds": result.seconds,
            "resumed_from": result.resumed_from,
            "phase_seconds": result.phase_seconds,
            "series": {
                "psnr_db": [float(v) for v in result.psnr_t],
                "moving_gaussian_share": [float(v) for v in result.moving_share_t],
                "depth_prior_scale": [float(v) for v in result.depth_scale_t],
                "gaussians": [len(f.means_n3) for f in result.frames],
                "gaussians_held_back": [int(v) for v in result.held_back_t],
            },
            "camera_path_xz": result.c2w_t44[:, [0, 2], 3].tolist(),
        }
    )


def verified_request(
    artifacts: Artifacts, request: fit_pb2.FitRequest, video_sha256: str
) -> fit_pb2.FitRequest:
    """`request` with its depth, flow and segment results replaced by the stored ones (each
    checked to belong to the request's video) and its track queries pinned to their checksum."""
    verified = fit_pb2.FitRequest()
    verified.CopyFrom(request)
    for stage in ("depth", "flow", "segment"):
        stored = upstream_result(artifacts, getattr(request, stage), stage, stage, video_sha256)
        getattr(verified, stage).CopyFrom(stored)
    if request.track_queries.key:
        verified.track_queries.CopyFrom(artifacts.pinned(request.track_queries, "track_queries"))
    return verified


def run_fit(
    artifacts: Artifacts,
    request: fit_pb2.FitRequest,
    config: FitConfig,
    runtime: FitRuntime = FitRuntime(),
    progress: ProgressFn = no_progress,
) -> common_pb2.StageResult:
    """Fit the video, cached by content key (the whole `config`; `runtime` changes how, not
    what, is computed); a killed fit resumes from its last checkpoint, and a committed one leaves
    no checkpoints behind."""
    video_sha256 = frames_sha256(artifacts, request.video)
    request = verified_request(artifacts, request, video_sha256)
    queries_ref = request.track_queries if request.track_queries.key else None
    inputs = [
        request.depth.key,
        request.flow.key,
        request.segment.key,
        queries_ref.sha256 if queries_ref else "",
    ]

    def produce(out: StageOutputs) -> None:
        priors = load_priors(artifacts, request, video_sha256)
        queries_q3 = (
            artifacts.get_array(queries_ref, field="track_queries")
            if queries_ref is not None
            else None
        )
        checkpoints = StoreCheckpoints(artifacts.store, f"{out.key}/checkpoints")
        result = fit(priors, config, runtime, progress, checkpoints)
        _write_outputs(out, result, priors, request.video.fps or 10.0, queries_q3, config)

    result = run_cached(
        artifacts,
        STAGE,
        "gflow",
        config,
        video_sha256,
        inputs,
        produce,
        code=source_digest(__name__),
    )
    # The checkpoints let a killed fit resume; once its result is committed they are only bytes
    # (together about the size of the result's Gaussians), so they go.
    StoreCheckpoints(artifacts.store, f"{result.key}/checkpoints").clear()
    return result


def fit_from_request(
    artifacts: Artifacts,
    request: fit_pb2.FitRequest,
    progress: ProgressFn = no_progress,
    *,
    runtime: FitRuntime = FitRuntime(),
) -> common_pb2.StageResult:
    """The FitService call, in-process: the server and the embedded pipeline both use this.
    `runtime` is the caller's: the server's environment, or the embedded run's
    `--pipeline.runtime.fit.*` flags."""
    config = parse_request_config(request.config_json, FitConfig, FitRuntime, STAGE)
    return run_fit(artifacts, request, config, runtime, progress)
