"""Shared fixtures: stores (local folder and a real SeaweedFS S3 on loopback) and data paths."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.common.store import LocalFolderStore, S3Settings, S3Store
from services.ops.seaweedfs import DEFAULT_ACCESS_KEY, start_seaweed_s3

TEST_SECRET_KEY = "gflow-test-secret-0123456789"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test frames not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real SeaweedFS server (S3 gateway on 127.0.0.1) for the whole test session."""
    server = start_seaweed_s3(tmp_path_factory.mktemp("seaweed"), TEST_SECRET_KEY)
    yield server
    server.stop()


def s3_settings(endpoint: str, **overrides) -> S3Settings:
    values = dict(
        endpoint=endpoint, access_key=DEFAULT_ACCESS_KEY, secret_key=TEST_SECRET_KEY, secure=False
    )
    values.update(overrides)
    return S3Settings(**values)


@pytest.fixture
def s3_store(seaweed) -> S3Store:
    """A fresh bucket on the real S3 server."""
    return S3Store(f"t-{uuid.uuid4().hex[:12]}", s3_settings(seaweed.endpoint))


@pytest.fixture
def local_store(tmp_path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "store")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request):
    """Each store implementation in turn: the contract tests run against both."""
    return request.getfixturevalue("local_store" if request.param == "local" else "s3_store")
