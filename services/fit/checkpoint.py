"""Checkpoints of a running fit: where they go (a small protocol) and how they are encoded.

The engine saves its whole state every few frames through a `CheckpointSink`; a restarted job
asks the same sink for the latest one and carries on from the next frame. The lead's store adapter
implements the sink over the object store; `FolderCheckpoints` keeps them in a local folder.
The encoding is a numpy .npz (no pickle) of named arrays plus a JSON header, so loading a
checkpoint can never run code.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common.errors import IntegrityError

logger = logging.getLogger(__name__)

_META_KEY = "__meta__"


class CheckpointSink(Protocol):
    """Where a fit keeps its checkpoints. `frame` is the last frame the checkpoint includes."""

    def save(self, frame: int, data: bytes) -> None: ...

    def load_latest(self) -> tuple[int, bytes] | None: ...


class FolderCheckpoints:
    """Checkpoints as files `frame_NNNNNN.ckpt` in a folder, written atomically; keeps the newest
    `keep` of them."""

    def __init__(self, folder: Path | str, keep: int = 1):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def _paths(self) -> list[Path]:
        return sorted(self.folder.glob("frame_*.ckpt"))

    def save(self, frame: int, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.folder / f"frame_{frame:06d}.ckpt")
        for old in self._paths()[: -self.keep]:
            old.unlink(missing_ok=True)

    def load_latest(self) -> tuple[int, bytes] | None:
        paths = self._paths()
        if not paths:
            return None
        latest = paths[-1]
        return int(latest.stem.split("_")[1]), latest.read_bytes()


def pack(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """Named arrays and a JSON-able header as .npz bytes."""
    buffer = io.BytesIO()
    header = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays, **{_META_KEY: header})
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of `pack`; IntegrityError when the bytes are not a checkpoint."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise IntegrityError(f"fit checkpoint is unreadable: {exc}") from exc
    return arrays, meta
