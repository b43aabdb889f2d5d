"""PipelineService over gRPC: one call runs ingest and every stage and streams their progress.

Where the stages run is the server's own setting (--remote.* flags), never the request's, so a
client cannot make the server dial arbitrary hosts. How the stages it runs itself compute
(device, budgets) is its environment's, GFLOW_<STAGE>_<FIELD> as a stage server reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import tyro

from gflow.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc
from services.common import runtime
from services.common.artifacts import Artifacts
from services.common.config import parse_config_json, refuse_server_fields, runtime_from_env
from services.common.describe import backend_info
from services.common.errors import InvalidArgumentError
from services.common.service import StageServicer, serve_forever
from services.depth.config import SERVER_FIELDS as DEPTH_SERVER_FIELDS
from services.flow.config import SERVER_FIELDS as FLOW_SERVER_FIELDS
from services.pipeline.config import PipelineConfig, PipelineRuntime, RemoteConfig
from services.pipeline.engine import STAGES, run_pipeline
from services.pipeline.ingest import ingest


class PipelineServicer(StageServicer, pipeline_pb2_grpc.PipelineServiceServicer):
    service_name = "gflow.v1.PipelineService"
    stage = "pipeline"

    def __init__(self, artifacts: Artifacts, max_concurrent_jobs: int, remote: RemoteConfig):
        super().__init__(artifacts, max_concurrent_jobs)
        self.remote = remote
        self.runtime = in_process_runtime(remote)

    def backends(self):
        return [backend_info(s, True, getattr(self.remote, s) or "in-process") for s in STAGES]

    def _video(self, request, config: PipelineConfig) -> common_pb2.VideoRef:
        if request.HasField("video"):
            return request.video
        if request.HasField("video_file"):
            data = self.artifacts.get_bytes(request.video_file, "video_file")
            upload = PurePosixPath(request.video_file.key)
            return ingest(
                self.artifacts,
                data,
                config.ingest,
                suffix=upload.suffix or ".mp4",
                name=upload.name,
            )
        raise InvalidArgumentError("source", "give video_file (an uploaded file) or video")

    def RunPipeline(self, request, context):  # noqa: N802 - gRPC method name
        def job(emit):
            # No job slot for orchestration: stages run in this process claim one only when
            # they compute (services.common.stage.run_cached); remote stage workers hold theirs.
            config = parse_config_json(request.config_json, PipelineConfig)
            if config.remote != RemoteConfig():
                raise InvalidArgumentError(
                    "config_json.remote", "stage endpoints are the server's --remote.* flags"
                )
            if config.runtime != PipelineRuntime():
                raise InvalidArgumentError(
                    "config_json.runtime",
                    "how the stages compute is the server's choice (GFLOW_<STAGE>_<FIELD> in "
                    "its environment, see docs/deploy.md), not a request field: leave it out",
                )
            refuse_server_fields(config.depth, DEPTH_SERVER_FIELDS, "config_json.depth")
            refuse_server_fields(config.flow, FLOW_SERVER_FIELDS, "config_json.flow")
            config = dataclasses.replace(config, remote=self.remote, runtime=self.runtime)
            video = self._video(request, config)

            def progress(stage: str, done: int, total: int, message: str) -> None:
                emit(common_pb2.Progress(stage=stage, done=done, total=total, message=message))

            queries = request.track_queries if request.HasField("track_queries") else None
            return run_pipeline(
                self.artifacts,
                video,
                config,
                progress,
                runtime.remaining_timeout(context),
                track_queries=queries,
            )

        yield from runtime.stream_job(
            context, self.limiter, "pipeline", job, pipeline_pb2.PipelineEvent
        )


def in_process_runtime(remote: RemoteConfig) -> PipelineRuntime:
    """How the stages this server runs itself compute, from its environment as a stage server
    reads it (`runtime_from_env`); a stage on a service computes as that server chooses."""
    return PipelineRuntime(
        **{
            f.name: runtime_from_env(type(f.default), f.name)
            for f in dataclasses.fields(PipelineRuntime)
            if not getattr(remote, f.name)
        }
    )


@dataclass
class PipelineServerConfig:
    """The pipeline server: how it listens, and where the stage services are."""

    server: runtime.ServerConfig = field(
        default_factory=lambda: runtime.ServerConfig(port=runtime.DEFAULT_PORTS["pipeline"])
    )
    remote: RemoteConfig = field(default_factory=RemoteConfig)


def main() -> None:
    config = tyro.cli(
        PipelineServerConfig,
        description="Serve PipelineService: ingest + flow -> depth -> segment -> fit.",
    )
    serve_forever(
        lambda artifacts, jobs: PipelineServicer(artifacts, jobs, config.remote),
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server,
        config.server,
    )


if __name__ == "__main__":
    main()
