"""The ObjectStore contract, run against the local folder and a real SeaweedFS S3 server."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.artifacts import Artifacts
from services.common.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.common.store import LocalFolderStore, S3Store, open_store, sha256_hex
from services.ops.seaweedfs import free_port
from tests.conftest import s3_settings


def test_put_get_list_delete(any_store):
    record = any_store.put("depth/abc/depth", b"hello", "text/plain")
    assert record.sha256 == sha256_hex(b"hello") and record.size_bytes == 5
    any_store.put("depth/abc/conf", b"world")
    any_store.put("flow/xyz/fwd", b"!")
    assert any_store.get("depth/abc/depth") == b"hello"
    assert any_store.stat("depth/abc/depth").media_type == "text/plain"
    assert any_store.list("depth/") == ["depth/abc/conf", "depth/abc/depth"]
    assert any_store.list() == ["depth/abc/conf", "depth/abc/depth", "flow/xyz/fwd"]
    any_store.delete("depth/abc/depth")
    assert not any_store.exists("depth/abc/depth")
    with pytest.raises(NotFoundError, match="depth/abc/depth"):
        any_store.get("depth/abc/depth")
    any_store.delete("depth/abc/depth")  # deleting twice is fine


def test_overwrite_replaces_whole_object(any_store):
    any_store.put("k/v", b"a" * 1000)
    any_store.put("k/v", b"b" * 10)
    assert any_store.get("k/v") == b"b" * 10
    assert any_store.list() == ["k/v"]  # no temporary key is left visible


def test_requested_checksum_is_verified(any_store):
    any_store.put("k/v", b"payload")
    with pytest.raises(IntegrityError, match="requested sha256"):
        any_store.get("k/v", expected_sha256=sha256_hex(b"other"))


def test_bad_keys_are_refused(any_store):
    for key in ["", "/abs", "a/../b", "a//b", ".tmp/x"]:
        with pytest.raises(InvalidArgumentError, match="key"):
            any_store.put(key, b"x")


def test_array_artifact_round_trip_checks_hw(any_store):
    artifacts = Artifacts(any_store)
    depth_thw = np.random.default_rng(0).random((3, 48, 64), dtype=np.float32)
    ref = artifacts.put_array("depth/k/depth", depth_thw, "THW")
    assert list(ref.shape) == [3, 48, 64] and ref.dtype == "float32"
    assert ref.bucket == any_store.bucket
    np.testing.assert_array_equal(artifacts.get_array(ref, expect_hw=(48, 64)), depth_thw)
    with pytest.raises(InvalidArgumentError, match="swapped"):
        artifacts.get_array(ref, expect_hw=(64, 48), field="depth")
    assert artifacts.find("depth/k/depth") == ref
    assert artifacts.find("depth/k/missing") is None


def test_local_store_detects_corruption(local_store: LocalFolderStore):
    local_store.put("k/v", b"original bytes")
    (local_store.root / "k/v").write_bytes(b"tampered bytes")
    with pytest.raises(IntegrityError, match="recorded sha256"):
        local_store.get("k/v")


def test_local_store_half_written_object_is_invisible(local_store: LocalFolderStore):
    """A crash after the sidecar but before the data rename leaves no visible object."""
    local_store.put("k/old", b"kept")
    meta = local_store.root / ".meta" / "k/new.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text('{"sha256": "00", "media-type": "x", "size": 1}')
    (local_store.root / ".tmp" / "partial").write_bytes(b"half")
    assert local_store.list() == ["k/old"]
    assert local_store.stat("k/new") is None


@pytest.mark.s3
def test_s3_detects_corruption(s3_store: S3Store):
    s3_store.put("k/v", b"original")
    # Overwrite the object behind the store's back, keeping the old checksum in its metadata.
    import io

    s3_store._client.put_object(
        s3_store.bucket,
        "k/v",
        io.BytesIO(b"tampered"),
        8,
        metadata={"sha256": sha256_hex(b"original"), "media-type": "x"},
    )
    with pytest.raises(IntegrityError, match="recorded sha256"):
        s3_store.get("k/v")


@pytest.mark.s3
@pytest.mark.parametrize("bucket", ["My_Bucket", "ab", "-gflow", "gflow..runs", "g" * 64])
def test_a_bad_bucket_name_is_named_before_any_connection(bucket):
    with pytest.raises(InvalidArgumentError, match="store.url") as info:
        open_store(f"s3://{bucket}")
    assert f"{bucket!r} is not an S3 bucket name" in str(info.value)


def test_s3_wrong_credentials_are_named(seaweed):
    with pytest.raises(FailedPreconditionError, match="rejected the credentials") as info:
        S3Store("gflow-any", s3_settings(seaweed.endpoint, secret_key="wrong-secret"))
    assert info.value.reason == "STORE_CREDENTIALS_REJECTED"


def test_s3_unreachable_is_unavailable():
    settings = s3_settings(f"127.0.0.1:{free_port()}", connect_timeout_s=0.5, retries=0)
    with pytest.raises(UnavailableError, match="unreachable") as info:
        S3Store("gflow-any", settings)
    assert info.value.reason == "STORE_UNREACHABLE"


@pytest.mark.s3
def test_s3_large_object(s3_store: S3Store):
    data = np.random.default_rng(1).bytes(20 * 1024 * 1024)
    s3_store.put("big/blob", data)
    assert s3_store.get("big/blob") == data
