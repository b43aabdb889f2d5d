"""Content-addressed keys: the same inputs, stage, backend and parameters give the same key.

That is what lets a repeated request be answered from the store and a killed job resume.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_json(value: Any) -> str:
    """Stable JSON of dataclasses, mappings and sequences (sorted keys, no spaces)."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def content_key(stage: str, backend: str, params: Any, inputs: Sequence[str]) -> str:
    """`<stage>/<digest>` from the stage, its backend, its parameters and its input hashes/keys."""
    payload = canonical_json(
        {"stage": stage, "backend": backend, "params": params, "inputs": list(inputs)}
    )
    return f"{stage}/{hashlib.sha256(payload.encode()).hexdigest()[:40]}"


def with_weights_digest(config: Any, weights_field: Mapping[str, str]) -> Any:
    """Key parameters of a stage config: with the content digest of the weights file its backend
    reads (`weights_field`: backend -> field), so that a file replaced at the same path is not
    answered with the old file's results; the config alone where the backend reads none."""
    name = weights_field.get(config.backend)
    weights = None if name is None else getattr(config, name)
    if weights is None:
        return config
    return {"config": config, "weights_sha256": file_sha256(weights)}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hashed once per process for each (path, inode, size, mtime);
    "missing" when there is no such file (the backend then refuses the work with its own
    message)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return "missing"
    return _file_sha256(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
