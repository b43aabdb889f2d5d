"""Typed artifacts over the object store: arrays, JSON and files, addressed by ArtifactRef."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from gflow.v1 import common_pb2
from services.common import codec
from services.common.errors import IntegrityError, InvalidArgumentError, NotFoundError
from services.common.store import ObjectStore, StoredObject, check_key, sha256_hex

JSON_MEDIA_TYPE = "application/json"


class Artifacts:
    """Reads and writes artifacts of one store and hands out `ArtifactRef` messages."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def _ref(self, record: StoredObject, shape=(), dtype: str = "") -> common_pb2.ArtifactRef:
        return common_pb2.ArtifactRef(
            bucket=self.store.bucket,
            key=record.key,
            sha256=record.sha256,
            media_type=record.media_type,
            shape=list(shape),
            dtype=dtype,
            size_bytes=record.size_bytes,
        )

    def find(self, key: str) -> common_pb2.ArtifactRef | None:
        """Reference to an artifact already stored under `key` (a cache hit), else None."""
        record = self.store.stat(key)
        if record is None:
            return None
        if record.media_type == codec.MEDIA_TYPE:
            header = codec.read_header(self.store.get(key))
            return self._ref(record, header["shape"], header["dtype"])
        return self._ref(record)

    def put_array(self, key: str, array: np.ndarray, layout: str) -> common_pb2.ArtifactRef:
        record = self.store.put(key, codec.encode_array(array, layout), codec.MEDIA_TYPE)
        return self._ref(record, array.shape, str(array.dtype))

    def put_array_once(self, key: str, array: np.ndarray, layout: str) -> common_pb2.ArtifactRef:
        """`put_array`, skipped when `key` already holds exactly these bytes; anything else
        stored there (a different or a corrupt object) is replaced, never trusted."""
        data = codec.encode_array(array, layout)
        record = self.store.stat(key)
        if record is None or record.sha256 != sha256_hex(data):
            record = self.store.put(key, data, codec.MEDIA_TYPE)
        return self._ref(record, array.shape, str(array.dtype))

    def put_json(self, key: str, value: Any) -> common_pb2.ArtifactRef:
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        return self._ref(self.store.put(key, data, JSON_MEDIA_TYPE))

    def put_bytes(self, key: str, data: bytes, media_type: str) -> common_pb2.ArtifactRef:
        return self._ref(self.store.put(key, data, media_type))

    def pinned(self, ref: common_pb2.ArtifactRef, field: str) -> common_pb2.ArtifactRef:
        """A copy of `ref` carrying the checksum the store recorded for its object (what a
        server may derive keys from, and what reads are then held to); refused when the object
        is missing, has no checksum, or disagrees with `ref.sha256`."""
        if not ref.key:
            raise InvalidArgumentError(field, "artifact reference is empty (no key)")
        record = self.store.stat(check_key(ref.key))
        if record is None:
            raise NotFoundError(f"{field}: no artifact at {self.store.url}/{ref.key}")
        if not record.sha256:
            raise IntegrityError(f"{field}: {ref.key} has no recorded sha256; re-upload it")
        if ref.sha256 and ref.sha256 != record.sha256:
            raise InvalidArgumentError(
                f"{field}.sha256", f"{ref.sha256[:12]}... is not the stored object's checksum"
            )
        copy = common_pb2.ArtifactRef()
        copy.CopyFrom(ref)
        copy.sha256 = record.sha256
        return copy

    def get_bytes(self, ref: common_pb2.ArtifactRef, field: str = "ref") -> bytes:
        if not ref.key:
            raise InvalidArgumentError(field, "artifact reference is empty (no key)")
        if ref.bucket and ref.bucket != self.store.bucket:
            raise NotFoundError(
                f"{field}: artifact is in bucket {ref.bucket!r} but this service's store is "
                f"{self.store.url}; point both at the same store"
            )
        return self.store.get(ref.key, expected_sha256=ref.sha256 or None)

    def get_array(
        self,
        ref: common_pb2.ArtifactRef,
        *,
        layout: str | None = None,
        expect_hw: tuple[int, int] | None = None,
        field: str = "ref",
    ) -> np.ndarray:
        data = self.get_bytes(ref, field)
        return codec.decode_array(data, layout=layout, expect_hw=expect_hw, field=field)

    def get_json(self, ref: common_pb2.ArtifactRef, field: str = "ref") -> Any:
        data = self.get_bytes(ref, field)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"{field}: {ref.key} is not valid JSON ({exc})") from exc
