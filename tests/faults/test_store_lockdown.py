"""Finding 1: the local SeaweedFS has no side door. Its filer and volume HTTP ports refuse
reads, listings, writes and deletes that carry no JWT signed with its keys (which only the S3
gateway holds), while the signed S3 path works; its folder and secret files are the owner's."""

from __future__ import annotations

import collections
import json
import stat
import urllib.error
import urllib.request
import uuid

import pytest

from services.common.errors import FailedPreconditionError
from services.common.store import S3Store
from services.ops import seaweedfs
from tests.conftest import s3_settings

pytestmark = pytest.mark.s3


def _status(method: str, url: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_filer_and_volume_ports_refuse_unsigned_reads_and_writes(seaweed):
    bucket = f"lock-{uuid.uuid4().hex[:8]}"
    store = S3Store(bucket, s3_settings(seaweed.endpoint))
    store.put("secret/artifact", b"stored through S3")
    filer = f"http://127.0.0.1:{seaweed.ports['-filer.port']}/buckets/{bucket}/secret"
    assert {
        "filer read": _status("GET", f"{filer}/artifact"),
        "filer listing": _status("GET", f"{filer}/"),
        "filer write": _status("PUT", f"{filer}/planted", b"forged"),
        "filer delete": _status("DELETE", f"{filer}/artifact"),
    } == dict.fromkeys(("filer read", "filer listing", "filer write", "filer delete"), 401)
    master = f"http://127.0.0.1:{seaweed.ports['-master.port']}"
    with urllib.request.urlopen(f"{master}/dir/assign", timeout=10) as response:
        fid = json.loads(response.read())["fid"]  # a file id, but no signed token with it
    volume = f"http://127.0.0.1:{seaweed.ports['-volume.port']}/{fid}"
    assert _status("POST", volume, b"forged") == 401
    assert _status("GET", volume) == 401
    assert store.get("secret/artifact") == b"stored through S3"  # nothing lost, nothing planted
    assert store.list("secret/") == ["secret/artifact"]


def test_store_folder_and_identities_are_the_owners_only(seaweed):
    workdir = seaweed.log_path.parent
    assert _mode(workdir) == 0o700
    assert _mode(workdir / "identities.json") == 0o600


def test_a_disk_too_full_for_seaweedfs_is_refused_before_it_starts(tmp_path, monkeypatch):
    """Below its free-space floor weed answers every write with HTTP 500: say so up front."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(
        seaweedfs.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**29, 2**29)
    )
    with pytest.raises(FailedPreconditionError, match=r"only 0\.5 GiB free under .*weed-data"):
        seaweedfs.start_seaweed_s3(tmp_path, "secret")
    assert not (tmp_path / "weed.log").exists()
