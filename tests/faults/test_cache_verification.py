"""Finding 3: a cache hit is used only when its marker parses and every artifact it names is
there with its recorded checksum; a bad one is recomputed (and logged with its key), never an
INTERNAL error that only a hand clean-up fixes. Objects with no recorded checksum are refused."""

from __future__ import annotations

import io
import logging
import uuid

import pytest

from services.common.artifacts import Artifacts
from services.common.codec import MEDIA_TYPE
from services.common.errors import IntegrityError
from services.flow.engine import FlowConfig
from services.flow.stage import run_flow
from tests.faults.clips import stored_clip


@pytest.fixture
def artifacts(local_store) -> Artifacts:
    return Artifacts(local_store)


def _first_run(artifacts: Artifacts):
    video = stored_clip(artifacts, 3)
    return video, run_flow(artifacts, video, FlowConfig())


def _arrays(result) -> dict[str, str]:
    """Checksums of a flow result's arrays (its report and figures hold timings)."""
    return {a.name: a.ref.sha256 for a in result.artifacts if a.ref.media_type == MEDIA_TYPE}


def _recomputed_like(artifacts, video, first, caplog, why: str):
    with caplog.at_level(logging.WARNING, logger="services.common.stage"):
        again = run_flow(artifacts, video, FlowConfig())
    assert not again.cached
    assert _arrays(again) == _arrays(first)
    assert f"stored result {first.key} is unusable ({why}" in caplog.text
    assert run_flow(artifacts, video, FlowConfig()).cached  # and the store is whole again


def test_a_corrupt_marker_is_recomputed_and_logged(artifacts, caplog):
    video, first = _first_run(artifacts)
    artifacts.store.put(f"{first.key}/result.pb", b"\xff\xff not a StageResult")
    _recomputed_like(artifacts, video, first, caplog, "its result.pb does not parse")


def test_a_marker_whose_artifact_was_deleted_is_recomputed(artifacts, caplog):
    video, first = _first_run(artifacts)
    artifacts.store.delete(first.artifacts[0].ref.key)
    _recomputed_like(artifacts, video, first, caplog, f"its artifact {first.artifacts[0].ref.key}")


def test_a_marker_whose_artifact_was_replaced_is_recomputed(artifacts, caplog):
    video, first = _first_run(artifacts)
    artifacts.store.put(first.report.key, b"{}", "application/json")
    _recomputed_like(artifacts, video, first, caplog, f"its artifact {first.report.key}")


@pytest.mark.s3
def test_an_s3_object_without_a_recorded_checksum_is_refused(s3_store):
    """Written around gflow (no sha256 metadata): reading it is DATA_LOSS, not trusted."""
    key = f"planted/{uuid.uuid4().hex}"
    s3_store._client.put_object(s3_store.bucket, key, io.BytesIO(b"forged"), 6)
    with pytest.raises(IntegrityError, match=f"{key} has no recorded sha256"):
        s3_store.get(key)
