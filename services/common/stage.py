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
from google.protobuf.message import DecodeError

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import IntegrityError, InvalidArgumentError, NotFoundError
from services.common.jobs import claim_job_slot
from services.common.keys import content_key
from services.common.store import check_key

log = logging.getLogger(__name__)

RESULT_MEDIA_TYPE = "application/x-protobuf; type=gflow.v1.StageResult"

_locks_guard = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


class StageOutputs:
    """Collects one stage run's artifacts, figures and report under its content key."""

    def __init__(self, artifacts: Artifacts, stage: str, backend: str, key: str, video_sha256: str):
        self.artifacts = artifacts
        self.key = key
        self.result = common_pb2.StageResult(
            stage=stage, backend=backend, key=key, video_sha256=video_sha256
        )

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
    video_sha256: str,
    inputs: Sequence[str],
    produce: Callable[[StageOutputs], None],
    *,
    code: str,
) -> common_pb2.StageResult:
    """The stored result for this work if there is one, else `produce` it and commit it.

    The key derives from `video_sha256` (the stored frames' checksum, see
    `services.common.video.frames_sha256`) and `inputs`, which the caller must also have checked
    against the store: a client's word never chooses where a result is cached. `code` is the
    stage module's `source_digest`: a result stored by other code (an older release, an edited
    engine) is computed anew, never returned as this code's."""
    key = content_key(stage, backend, params, [video_sha256, *inputs], code)
    cached = stored_result(artifacts, key)
    if cached is not None:  # answered even while the worker is busy
        return _from_store(cached, stage)
    # Two requests for the same work in one process do it once: the second waits, holding no
    # job slot, and is answered from the store.
    with _lock_for(key):
        cached = stored_result(artifacts, key)
        if cached is not None:
            return _from_store(cached, stage)
        claim_job_slot()
        outputs = StageOutputs(artifacts, stage, backend, key, video_sha256)
        produce(outputs)
        artifacts.put_bytes(_marker(key), outputs.result.SerializeToString(), RESULT_MEDIA_TYPE)
        return outputs.result


def _marker(key: str) -> str:
    return f"{key}/result.pb"


def _from_store(result: common_pb2.StageResult, stage: str) -> common_pb2.StageResult:
    result.cached = True
    log.info("%s: answered from the store (%s)", stage, result.key)
    return result


def stored_result(artifacts: Artifacts, key: str) -> common_pb2.StageResult | None:
    """The committed result under `key`, verified: its marker parses and names this key, and
    every artifact it names exists with the checksum it records. A bad one counts as absent
    (logged with the key), so the work is redone instead of failing every later run."""
    try:
        data = artifacts.store.get(_marker(key))
    except NotFoundError:
        return None
    except IntegrityError as exc:
        return _unusable(key, str(exc))
    try:
        result = common_pb2.StageResult.FromString(data)
    except DecodeError:
        return _unusable(key, "its result.pb does not parse")
    if result.key != key:
        return _unusable(key, f"its result.pb names another key ({result.key!r})")
    refs = [item.ref for item in result.artifacts]
    if result.report.key:
        refs.append(result.report)
    for ref in refs:
        record = artifacts.store.stat(ref.key)
        if record is None:
            return _unusable(key, f"its artifact {ref.key} is missing")
        if not record.sha256 or record.sha256 != ref.sha256:
            return _unusable(key, f"its artifact {ref.key} has another checksum than recorded")
    return result


def _unusable(key: str, why: str) -> None:
    log.warning("stored result %s is unusable (%s): computing it again", key, why)
    return None


def upstream_result(
    artifacts: Artifacts,
    sent: common_pb2.StageResult,
    stage: str,
    field: str,
    video_sha256: str,
) -> common_pb2.StageResult:
    """The stored `stage` result that `sent` names by key, checked to belong to the request's
    video: the server reads it from the store rather than trusting the client's copy."""
    if not sent.key:
        raise InvalidArgumentError(field, f"names no {stage} result (empty key)")
    stored = stored_result(artifacts, check_key(sent.key))
    if stored is None or stored.stage != stage:
        raise InvalidArgumentError(
            field, f"{sent.key!r} is not a stored {stage} result: run the {stage} stage first"
        )
    if stored.video_sha256 != video_sha256:
        raise InvalidArgumentError(
            field, f"the {stage} result {sent.key!r} was computed from another video's frames"
        )
    return stored


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


def upstream_array(
    artifacts: Artifacts,
    result: common_pb2.StageResult,
    name: str,
    layout: str,
    hw: tuple[int, int],
    field: str,
) -> np.ndarray:
    """The array artifact `name` of an upstream result, checked for layout and frame size;
    errors name `field.name`."""
    ref = artifact(result, name, field)
    return artifacts.get_array(ref, layout=layout, expect_hw=hw, field=f"{field}.{name}")


def optional_artifact(result: common_pb2.StageResult, name: str) -> common_pb2.ArtifactRef | None:
    return next((a.ref for a in result.artifacts if a.name == name), None)
