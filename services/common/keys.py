"""Content-addressed keys: the same inputs, stage, backend and parameters give the same key.

That is what lets a repeated request be answered from the store and a killed job resume. A
stage's key also holds the digest of its code (`source_digest`), so a store filled by another
version of an engine never answers for this one.
"""

from __future__ import annotations

import ast
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


def content_key(
    stage: str, backend: str, params: Any, inputs: Sequence[str], code: str = ""
) -> str:
    """`<stage>/<digest>` from the stage, its backend, its parameters, its input hashes/keys and
    the digest of the code that computes it (`source_digest`; "" for what is rewritten on every
    run rather than looked up, such as the run report)."""
    payload = canonical_json(
        {"stage": stage, "backend": backend, "params": params, "inputs": list(inputs), "code": code}
    )
    return f"{stage}/{hashlib.sha256(payload.encode()).hexdigest()[:40]}"


SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the services package
SOURCE_PACKAGE = "services"


@functools.cache
def source_digest(module: str) -> str:
    """sha256 of the source of `module` (a `services.` module) and of every `services.` module it
    imports, directly or through others, found by reading their import statements (also those
    inside functions). Any change of that code changes the digest, so a stage result stored by an
    older engine is computed anew rather than returned as this engine's (a stage's key holds it:
    services.common.stage.run_cached). Read once per process."""
    if _module_file(module) is None:
        raise ValueError(f"{module}: no such module under {SOURCE_ROOT / SOURCE_PACKAGE}")
    files = sorted(_imported_sources(module))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(SOURCE_ROOT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _module_file(module: str) -> Path | None:
    """The source file of a `services.` module name, or None (not a module: e.g. a name
    imported from a module, or another package)."""
    if module != SOURCE_PACKAGE and not module.startswith(SOURCE_PACKAGE + "."):
        return None
    base = SOURCE_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_sources(module: str) -> set[Path]:
    """The files of `module` and of every `services.` module it reaches by imports (its packages'
    __init__ files included, which Python runs on the way)."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
                if isinstance(node, ast.Import):
                    pending.extend(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    pending.append(node.module)
                    pending.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return seen


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
