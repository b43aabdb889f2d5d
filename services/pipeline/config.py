"""Pipeline configuration: one dataclass per stage (what it computes), how the stages run in
this process (`PipelineRuntime`), and where each stage runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from services.common.config import runtime_env_name
from services.common.errors import InvalidArgumentError
from services.depth.config import DepthConfig, DepthRuntime, needed_stride
from services.fit.config import FitConfig, FitRuntime, preset
from services.fit.queries import DEFAULT_TRACK_GRID
from services.flow.config import FlowConfig, FlowRuntime
from services.pipeline.ingest import IngestConfig
from services.segment.config import SegmentConfig


@dataclass
class RemoteConfig:
    """Where each stage runs: empty = in this process, else a gRPC target (host:port, or
    dns:///name:port for round-robin over replicas)."""

    depth: str = ""
    flow: str = ""
    segment: str = ""
    fit: str = ""
    # Bearer token for the services; else the GFLOW_AUTH_TOKEN environment variable.
    auth_token_file: Path | None = None
    # PEM root certificate when the services use TLS.
    tls_ca: Path | None = None
    # Largest gRPC message sent or received, in bytes.
    max_message_bytes: int = 16 * 1024 * 1024
    # Calls a remote stage gets in all when it answers RESOURCE_EXHAUSTED (every replica busy)
    # or UNAVAILABLE (replica or its store down); 1 = no retry. Other errors are not retried.
    retry_attempts: int = 6
    # Seconds before the first retry; each later wait is `retry_factor` times the one before,
    # at most `retry_max_delay_s` (defaults: 1, 2, 4, 8, 16 s, about half a minute in all).
    retry_first_delay_s: float = 1.0
    retry_factor: float = 2.0
    retry_max_delay_s: float = 30.0
    # Deadline of one remote stage call: this many seconds per video frame, at least
    # `stage_deadline_min_s`; `stage_deadline_s` sets it outright. Past it: DEADLINE_EXCEEDED,
    # retried like a busy replica (a retried stage resumes from what it stored).
    stage_deadline_s_per_frame: float = 60.0
    stage_deadline_min_s: float = 300.0
    stage_deadline_s: float | None = None
    # Seconds a remote stage may send nothing (no progress, no result) before the call is taken
    # as stalled (a stopped or hung worker): cancelled as DEADLINE_EXCEEDED and retried.
    silence_timeout_s: float = 600.0

    def stage_deadline(self, frame_count: int) -> float:
        """Seconds one remote stage call on a video of `frame_count` frames may take."""
        if self.stage_deadline_s is not None:
            return self.stage_deadline_s
        return max(self.stage_deadline_min_s, self.stage_deadline_s_per_frame * frame_count)

    def __post_init__(self) -> None:
        """Refuse retry settings that cannot work, naming the field."""
        lowest = {
            "retry_attempts": 1,
            "retry_first_delay_s": 0.0,
            "retry_factor": 1.0,
            "retry_max_delay_s": 0.0,
            "stage_deadline_s_per_frame": 0.0,
            "stage_deadline_min_s": 0.0,
            "silence_timeout_s": 0.1,
        }
        for name, limit in lowest.items():
            value = getattr(self, name)
            if value < limit:
                raise InvalidArgumentError(f"remote.{name}", f"{value} must be at least {limit}")


@dataclass(frozen=True)
class PipelineRuntime:
    """How the stages that run in this process compute (device, budgets, renderer); never part
    of a content key. A stage on a service runs as its server's operator chose (the
    GFLOW_<STAGE>_<FIELD> variables of docs/deploy.md). Segment has no runtime setting."""

    flow: FlowRuntime = FlowRuntime()
    depth: DepthRuntime = DepthRuntime()
    fit: FitRuntime = FitRuntime()


@dataclass
class PipelineConfig:
    """Everything a run needs besides the video; each stage's fields are its engine's config."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    runtime: PipelineRuntime = field(default_factory=PipelineRuntime)
    # The fit tracks an N x N grid of frame-0 points (fit/tracks_*.npy and the trajectories
    # video) when the run names no queries; 0 = none.
    track_grid: Annotated[int, tyro.conf.arg(prefix_name=False)] = DEFAULT_TRACK_GRID
    # Depth a second time with the segment stage's masks, which keep the moving objects out of
    # the depth stage's geometry (triangulation, scale chain, bundle adjustment), and hand the
    # fit that depth (docs/depth.md, "Two-pass depth"). Costs one more depth run. The offline
    # backend only: MASt3R does not use the masks, so with it the second run is skipped.
    two_pass_depth: bool = True

    def __post_init__(self) -> None:
        if self.track_grid < 0:
            raise InvalidArgumentError("track_grid", f"{self.track_grid} must be 0 (none) or more")
        stride = self.depth.flow_stride
        if stride >= 2 and self.flow.extra_stride not in (0, stride):
            raise InvalidArgumentError(
                "flow.extra_stride",
                f"{self.flow.extra_stride}, but depth triangulates frames {stride} apart "
                f"(depth.flow_stride): leave it at 0 or set it to {stride}",
            )
        for stage in (item.name for item in dataclasses.fields(PipelineRuntime)):
            stage_runtime = getattr(self.runtime, stage)
            target = getattr(self.remote, stage)
            if target and stage_runtime != type(stage_runtime)():
                env = ", ".join(
                    runtime_env_name(stage, f.name) for f in dataclasses.fields(stage_runtime)
                )
                raise InvalidArgumentError(
                    f"runtime.{stage}",
                    f"the {stage} stage runs on the service at {target}, whose server chooses its "
                    f"device and budgets ({env} in its environment): leave runtime.{stage} at "
                    "its defaults",
                )

    def warnings(self) -> list[str]:
        """Combinations of stage settings that run but work against each other (a run logs
        them before its first stage)."""
        found = []
        chained = self.depth.backend == "offline" and not self.depth.offline_bundle_adjust
        if self.fit.camera_from_prior_poses and chained:
            found.append(
                "fit.camera_from_prior_poses keeps the offline depth backend's poses, which "
                "without its bundle adjustment are chained pair by pair and drift further than "
                "the fit's own cameras: keep depth.offline_bundle_adjust on "
                "(--pipeline.depth.offline-bundle-adjust) or let the fit track its own cameras "
                "(--pipeline.fit.no-camera-from-prior-poses)"
            )
        return found

    @property
    def second_depth_pass(self) -> bool:
        """Whether the depth stage runs again with the segment masks (`two_pass_depth`, and a
        backend that keeps masked pixels out of its geometry)."""
        return self.two_pass_depth and self.depth.backend == "offline"

    def flow_config(self, n_frames: int) -> FlowConfig:
        """The flow stage's config for a clip of `n_frames`: `flow` plus the wider pairs depth
        triangulates from (depth.flow_stride apart), so one flow run serves every stage."""
        stride = needed_stride(self.depth.flow_stride, n_frames)
        return dataclasses.replace(self.flow, extra_stride=stride) if stride else self.flow

    def fit_config(self) -> FitConfig:
        """The fit stage's config: `fit`, with the track readout's neighbour flow
        (`FitConfig.tracks_chain_neighbour_px`) off where the flow stage is not DIS (a learned
        flow draws an object's outline sharply, and on a sharp outline the step only errs) or
        has taken the neighbours' flow itself (`FlowConfig.dis_neighbour_px`: the same step
        again would cost as much for little)."""
        if self.flow.backend == "dis" and not self.flow.dis_neighbour_px:
            return self.fit
        return dataclasses.replace(self.fit, tracks_chain_neighbour_px=0)


FitPresetName = Literal["default", "fast", "test"]


def with_fit_preset(config: PipelineConfig, name: FitPresetName | None) -> PipelineConfig:
    """`config` with its fit started from a named preset (services.fit.config; None: as is): the
    preset's values, then every field that `config.fit` sets apart from FitConfig's defaults (the
    --pipeline.fit.* flags given with --fit-preset), so no flag is dropped. A flag that restates a
    default cannot be told from no flag: there the preset's value stands."""
    if name is None:
        return config
    default = FitConfig()
    given = {
        f.name: getattr(config.fit, f.name)
        for f in dataclasses.fields(FitConfig)
        if getattr(config.fit, f.name) != getattr(default, f.name)
    }
    return dataclasses.replace(config, fit=dataclasses.replace(preset(name), **given))


BEST_TRACKS: dict[str, dict[str, object]] = {
    "flow": {"dis_polish": True, "dis_polish_rounds": 3, "dis_polish_window_px": 1.0},
    "depth": {"offline_bundle_adjust": True},
    "segment": {"measured_depth_only": True},
    "fit": {
        "occlusion_from_frames": True,
        "occlusion_from_flow_where_unmeasured": True,
        "tracks_with_flow_chain": True,
        "camera_from_prior_poses": True,
        "moving_depth_from_filled_prior": False,
        "keep_adam_state": True,
    },
}
"""The stage fields `with_best_tracks` sets, by stage (it also sets `two_pass_depth`): all but
`keep_adam_state`, `dis_polish_rounds` and `dis_polish_window_px` are the defaults since stop
56."""


def with_best_tracks(config: PipelineConfig) -> PipelineConfig:
    """`config` with the settings that together gave the best tracks and cameras measured on the
    accuracy suite through the offline depth backend (`BEST_TRACKS` and two-pass depth), set
    whatever `config` says: the defaults', Adam's kept moments, which raise PSNR on every row of
    the CPU suite (docs/fit.md, "Adam's first steps from fresh moments"), and three rounds of the
    flow's polish on smaller windows, which raise AJ on every pipeline row (docs/flow.md,
    "Polish rounds and windows"); each moves some of the suite's other figures down, so neither
    is the default."""
    stages = {
        stage: dataclasses.replace(getattr(config, stage), **fields)
        for stage, fields in BEST_TRACKS.items()
    }
    return dataclasses.replace(config, two_pass_depth=True, **stages)


def with_command_options(
    config: PipelineConfig, fit_preset: FitPresetName | None, best_tracks: bool
) -> PipelineConfig:
    """What a command line (`gflow run`, `gflow eval`) asks for: its --pipeline.* flags with the
    fit started from `fit_preset` (`with_fit_preset`), then `--best-tracks` on top of both."""
    config = with_fit_preset(config, fit_preset)
    return with_best_tracks(config) if best_tracks else config
