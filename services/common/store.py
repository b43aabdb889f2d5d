"""Object store: one interface, a local folder (embedded default) and S3 (through the minio SDK).

Every write is atomic: bytes go to a temporary key first and are published by rename (local) or
server-side copy (S3), so a half-written artifact is never visible under its real key and a failed
run never clobbers what is stored. Every read verifies the SHA-256 recorded at write time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from services.common.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp/"
_META_SHA = "sha256"
_META_MEDIA = "media-type"


@dataclass(frozen=True)
class StoredObject:
    """What the store knows about one published object."""

    key: str
    sha256: str
    size_bytes: int
    media_type: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_KEY_BYTES = 1024  # S3's limit


def check_key(key: str) -> str:
    """Keys are relative slash-separated paths of printable characters; refuse anything that
    could escape the store or that S3 would reject (a bad key is the caller's error, never a
    store outage that callers would retry)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgumentError("key", f"{key!r} is not a relative path of non-empty parts")
    if "\\" in key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidArgumentError(
            "key", f"{key!r} holds a backslash or a control character: use '/' and printable text"
        )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgumentError("key", f"is {len(key.encode())} bytes, over {MAX_KEY_BYTES}")
    if key.startswith(TMP_PREFIX):
        raise InvalidArgumentError("key", f"{key!r} is inside the reserved prefix {TMP_PREFIX}")
    return key


class ObjectStore(ABC):
    """Content store shared by all stages. Implementations must be safe to use from threads."""

    bucket: str

    @property
    @abstractmethod
    def url(self) -> str:
        """A URL that `open_store` turns back into an equivalent store."""

    @abstractmethod
    def put(
        self, key: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Publish `data` under `key` atomically (temporary key, then publish)."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The published object's record, or None when the key holds nothing."""

    @abstractmethod
    def _read(self, key: str) -> bytes:
        """Raw bytes of a published object; NotFoundError when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Published keys starting with `prefix`, sorted (temporary keys never appear)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a published object; deleting a missing key is not an error."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def get(self, key: str, expected_sha256: str | None = None) -> bytes:
        """Read and verify bytes against the recorded checksum (and the caller's, if given)."""
        check_key(key)
        record = self.stat(key)
        if record is None:
            raise NotFoundError(f"no artifact at {self.url}/{key}")
        if not record.sha256:
            raise IntegrityError(
                f"{key} has no recorded sha256 (not written by gflow, or its metadata was lost); "
                "delete it and re-run"
            )
        data = self._read(key)
        actual = sha256_hex(data)
        for name, wanted in (("recorded", record.sha256), ("requested", expected_sha256)):
            if wanted and wanted != actual:
                raise IntegrityError(
                    f"checksum mismatch for {key}: {name} sha256 {wanted[:12]}..., stored bytes "
                    f"hash to {actual[:12]}...; the artifact is corrupt, delete it and re-run"
                )
        return data


class LocalFolderStore(ObjectStore):
    """Objects as plain files under a root folder, each with a JSON sidecar under `.meta/`.

    The sidecar is published before the data file, and a key counts as present only when its data
    file exists, so a crash between the two renames leaves nothing visible.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.bucket = self.root.name
        try:
            (self.root / TMP_PREFIX).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(f"cannot create store folder {self.root}: {exc}") from exc

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / ".meta" / f"{check_key(key)}.json"

    def _publish(self, payload: bytes, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / TMP_PREFIX / uuid.uuid4().hex
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def put(
        self, key: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> StoredObject:
        record = StoredObject(check_key(key), sha256_hex(data), len(data), media_type)
        meta = {_META_SHA: record.sha256, _META_MEDIA: media_type, "size": record.size_bytes}
        try:
            self._publish(json.dumps(meta).encode(), self._meta_path(key))
            self._publish(data, self._path(key))
        except OSError as exc:
            raise UnavailableError(f"cannot write {key} under {self.root}: {exc}") from exc
        return record

    def stat(self, key: str) -> StoredObject | None:
        path, meta_path = self._path(key), self._meta_path(key)
        if not path.is_file() or not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        return StoredObject(key, meta[_META_SHA], path.stat().st_size, meta[_META_MEDIA])

    def _read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no artifact at {self.url}/{key}") from exc

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if (
                path.is_file()
                and not rel.startswith((TMP_PREFIX, ".meta/"))
                and rel.startswith(prefix)
            ):
                keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        for path in (self._path(key), self._meta_path(key)):
            path.unlink(missing_ok=True)


@dataclass
class S3Settings:
    """Where the S3 store is and how to sign in. Secrets come from env or files, never the URL."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str = ""
    secret_key: str = ""
    secure: bool = False
    region: str = "us-east-1"
    # Seconds to wait for a TCP connection before calling the store unreachable.
    connect_timeout_s: float = 3.0
    retries: int = 2

    @classmethod
    def from_env(cls, **overrides) -> S3Settings:
        """Settings from GFLOW_S3_ENDPOINT, GFLOW_S3_ACCESS_KEY(_FILE), GFLOW_S3_SECRET_KEY(_FILE)
        and GFLOW_S3_SECURE."""

        def secret(name: str) -> str:
            if os.environ.get(f"{name}_FILE"):
                return Path(os.environ[f"{name}_FILE"]).read_text().strip()
            return os.environ.get(name, "")

        values = {
            "endpoint": os.environ.get("GFLOW_S3_ENDPOINT", cls.endpoint),
            "access_key": secret("GFLOW_S3_ACCESS_KEY"),
            "secret_key": secret("GFLOW_S3_SECRET_KEY"),
            "secure": os.environ.get("GFLOW_S3_SECURE", "0") in ("1", "true", "yes"),
        }
        values.update(overrides)
        return cls(**values)


class S3Store(ObjectStore):
    """Objects in one S3 bucket through the minio SDK (MinIO, SeaweedFS, AWS all work)."""

    def __init__(self, bucket: str, settings: S3Settings, create_bucket: bool = True):
        import minio
        import urllib3

        self.bucket = bucket
        self.settings = settings
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=120),
            retries=urllib3.Retry(
                total=settings.retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
        )
        self._client = minio.Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        if create_bucket:
            self._call("create bucket", self._ensure_bucket)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def _ensure_bucket(self) -> None:
        if not self._client.bucket_exists(self.bucket):
            self._client.make_bucket(self.bucket)

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one SDK call, turning transport and auth failures into our error types."""
        import urllib3
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise NotFoundError(f"no artifact at {self.url}/{exc.object_name}") from exc
            if exc.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"):
                raise FailedPreconditionError(
                    f"S3 store at {self.settings.endpoint} rejected the credentials ({exc.code}) "
                    "during " + what + ": check GFLOW_S3_ACCESS_KEY / GFLOW_S3_SECRET_KEY",
                    reason="STORE_CREDENTIALS_REJECTED",
                ) from exc
            raise UnavailableError(
                f"S3 store error during {what}: {exc.code}: {exc.message}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UnavailableError(
                f"S3 store at {self.settings.endpoint} is unreachable during {what}: {exc}",
                reason="STORE_UNREACHABLE",
            ) from exc

    def put(
        self, key: str, data: bytes, media_type: str = "application/octet-stream"
    ) -> StoredObject:
        from minio.commonconfig import CopySource

        record = StoredObject(check_key(key), sha256_hex(data), len(data), media_type)
        tmp_key = f"{TMP_PREFIX}{uuid.uuid4().hex}"
        meta = {_META_SHA: record.sha256, _META_MEDIA: media_type}
        self._call(
            f"put {key}",
            self._client.put_object,
            self.bucket,
            tmp_key,
            io.BytesIO(data),
            len(data),
            content_type=media_type,
            metadata=meta,
        )
        try:
            self._call(
                f"publish {key}",
                self._client.copy_object,
                self.bucket,
                key,
                CopySource(self.bucket, tmp_key),
            )
        finally:
            self._call(f"clean up {tmp_key}", self._client.remove_object, self.bucket, tmp_key)
        return record

    def stat(self, key: str) -> StoredObject | None:
        try:
            info = self._call(f"stat {key}", self._client.stat_object, self.bucket, check_key(key))
        except NotFoundError:
            return None
        meta = {k.lower().removeprefix("x-amz-meta-"): v for k, v in (info.metadata or {}).items()}
        media = meta.get(_META_MEDIA) or info.content_type or "application/octet-stream"
        return StoredObject(key, meta.get(_META_SHA, ""), info.size, media)

    def _read(self, key: str) -> bytes:
        response = self._call(f"get {key}", self._client.get_object, self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str = "") -> list[str]:
        objects = self._call(
            f"list {prefix}",
            lambda: [
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix, recursive=True)
            ],
        )
        return sorted(k for k in objects if not k.startswith(TMP_PREFIX))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self._client.remove_object, self.bucket, check_key(key))


@dataclass
class StoreConfig:
    """Which object store to use."""

    # file:///abs/path or a plain folder path (embedded default), or s3://bucket.
    url: str = "file://./gflow-store"
    # S3 connection; secrets from GFLOW_S3_ACCESS_KEY(_FILE) / GFLOW_S3_SECRET_KEY(_FILE).
    s3: S3Settings = field(default_factory=S3Settings.from_env)


_S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket naming rule (the SDK otherwise fails deep inside with a bare ValueError)."""


def open_store(config: StoreConfig | str) -> ObjectStore:
    """Open the store a URL names: file://PATH, a plain path, or s3://BUCKET."""
    if isinstance(config, str):
        config = StoreConfig(url=config)
    parsed = urlparse(config.url)
    if parsed.scheme in ("", "file"):
        path = config.url.removeprefix("file://") if parsed.scheme else config.url
        return LocalFolderStore(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidArgumentError(
                "store.url", f"{config.url!r} names no bucket: use s3://BUCKET"
            )
        if not _S3_BUCKET_NAME.fullmatch(parsed.netloc) or ".." in parsed.netloc:
            raise InvalidArgumentError(
                "store.url",
                f"{parsed.netloc!r} is not an S3 bucket name: use 3-63 lowercase letters, digits, "
                "dots and hyphens, starting and ending with a letter or digit (e.g. s3://gflow)",
            )
        return S3Store(parsed.netloc, config.s3)
    raise InvalidArgumentError(
        "store.url", f"unsupported scheme {parsed.scheme!r} in {config.url!r}: use file:// or s3://"
    )
