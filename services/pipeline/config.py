"""Pipeline configuration: one dataclass per stage, plus where each stage runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.depth.engine import DepthConfig
from services.fit.config import FitConfig
from services.flow.engine import FlowConfig
from services.pipeline.ingest import IngestConfig
from services.segment.engine import SegmentConfig


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
    max_message_bytes: int = 16 * 1024 * 1024


@dataclass
class PipelineConfig:
    """Everything a run needs besides the video; each stage's fields are its engine's config."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
