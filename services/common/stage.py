"""Run a stage once per content key: repeated requests are answered from the store.

A stage writes its artifacts under `<key>/...` and publishes `<key>/result.pb` last. That marker
is the commit: a run killed halfway leaves no marker, so the next request redoes the work, and
nothing a finished run stored is ever overwritten by a failed one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.jobs import claim_job_slot
from services.common.keys import content_key

log = logging.getLogger(__name__)

RESULT_MEDIA_TYPE = "application/x-protobuf; type=gflow.v1.StageResult"

_locks_guard = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


class StageOutputs:
    """Collects one stage run's artifacts, figures and report under its content key."""

    def __init__(self, artifacts: Artifacts, stage: str, backend: str, key: str):
        self.artifacts = artifacts
        self.key = key
        self.result = common_pb2.StageResult(stage=stage, backend=backend, key=key)

    def _add(self, name: str, ref: common_pb2.ArtifactRef) -> common_pb2.ArtifactRef:
        self.result.artifacts.add(name=name, ref=ref)
        return ref

    def array(self, name: str, array: np.ndarray, layout: str) -> common_pb2.ArtifactRef:
        return self._add(name, self.artifacts.put_array(f"{self.key}/{name}", array, layout))

    def json(self, name: str, value: Any) -> common_pb2.ArtifactRef:
        return self._add(name, self.artifacts.put_json(f"{self.key}/{name}.json", value))

    def file(self, name: str, data: bytes, media_type: str, suffix: str) -> common_pb2.ArtifactRef:
        ref = self.artifacts.put_bytes(f"{self.key}/{name}{suffix}", data, media_type)
        return self._add(name, ref)

    def figure(self, name: str, value: float, unit: str = "") -> None:
        self.result.quality.add(name=name, value=float(value), unit=unit)

    def report(self, value: dict) -> None:
        """The stage's JSON report: its figures, per-frame values and what it repaired."""
        self.result.report.CopyFrom(self.artifacts.put_json(f"{self.key}/report.json", value))


def run_cached(
    artifacts: Artifacts,
    stage: str,
    backend: str,
    params: Any,
    inputs: Sequence[str],
    produce: Callable[[StageOutputs], None],
) -> common_pb2.StageResult:
    """The stored result for this work if there is one, else `produce` it and commit it."""
    key = content_key(stage, backend, params, inputs)
    cached = _stored_result(artifacts, stage, key)
    if cached is not None:  # answered even while the worker is busy
        return cached
    claim_job_slot()
    with _lock_for(key):  # two requests for the same work in one process do it once
        cached = _stored_result(artifacts, stage, key)
        if cached is not None:
            return cached
        outputs = StageOutputs(artifacts, stage, backend, key)
        produce(outputs)
        artifacts.put_bytes(_marker(key), outputs.result.SerializeToString(), RESULT_MEDIA_TYPE)
        return outputs.result


def _marker(key: str) -> str:
    return f"{key}/result.pb"


def _stored_result(artifacts: Artifacts, stage: str, key: str) -> common_pb2.StageResult | None:
    if not artifacts.store.exists(_marker(key)):
        return None
    result = common_pb2.StageResult.FromString(artifacts.store.get(_marker(key)))
    result.cached = True
    log.info("%s: answered from the store (%s)", stage, key)
    return result


def artifact(result: common_pb2.StageResult, name: str, field: str) -> common_pb2.ArtifactRef:
    """The artifact `name` of a stage result; InvalidArgumentError naming `field` if absent."""
    for item in result.artifacts:
        if item.name == name:
            return item.ref
    have = [a.name for a in result.artifacts]
    raise InvalidArgumentError(
        field,
        f"has no artifact {name!r} (it has {have}); pass the result "
        f"of the {result.stage or 'right'} stage",
    )


def optional_artifact(result: common_pb2.StageResult, name: str) -> common_pb2.ArtifactRef | None:
    return next((a.ref for a in result.artifacts if a.name == name), None)
