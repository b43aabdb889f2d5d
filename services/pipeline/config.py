"""Pipeline configuration: one dataclass per stage, plus where each stage runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InvalidArgumentError
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
    # Calls a remote stage gets in all when it answers RESOURCE_EXHAUSTED (every replica busy)
    # or UNAVAILABLE (replica or its store down); 1 = no retry. Other errors are not retried.
    retry_attempts: int = 6
    # Seconds before the first retry; each later wait is `retry_factor` times the one before,
    # at most `retry_max_delay_s` (defaults: 1, 2, 4, 8, 16 s, about half a minute in all).
    retry_first_delay_s: float = 1.0
    retry_factor: float = 2.0
    retry_max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        """Refuse retry settings that cannot work, naming the field."""
        lowest = {
            "retry_attempts": 1,
            "retry_first_delay_s": 0.0,
            "retry_factor": 1.0,
            "retry_max_delay_s": 0.0,
        }
        for name, limit in lowest.items():
            value = getattr(self, name)
            if value < limit:
                raise InvalidArgumentError(f"remote.{name}", f"{value} must be at least {limit}")


@dataclass
class PipelineConfig:
    """Everything a run needs besides the video; each stage's fields are its engine's config."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
