"""Content-addressed keys: the same inputs, stage, backend and parameters give the same key.

That is what lets a repeated request be answered from the store and a killed job resume.
"""

from __future__ import annotations

import dataclasses
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
