"""Configuration dataclasses to and from JSON, with errors that name the field at fault.

Stage requests carry their engine's config dataclass as `config_json`; the same dataclasses are
the command line (through tyro), so a flag, a JSON field and a Python attribute share one name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from services.common.errors import InvalidArgumentError
from services.common.keys import canonical_json

T = TypeVar("T")


def _convert(value: Any, hint: Any, field: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error = None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, field)
            except InvalidArgumentError as exc:
                last_error = exc
        raise last_error or InvalidArgumentError(field, f"{value!r} fits none of {hint}")
    if origin is Literal:
        if value not in args:
            raise InvalidArgumentError(field, f"{value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InvalidArgumentError(field, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        converted = [_convert(v, inner, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, field)
    if hint is Path:
        if not isinstance(value, str):
            raise InvalidArgumentError(field, f"expected a path string, got {value!r}")
        return Path(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise InvalidArgumentError(field, f"expected {hint.__name__}, got {value!r}")
    return value


def from_dict(config_type: type[T], values: Any, field: str = "config") -> T:
    """Build a dataclass from a JSON-like dict; unknown or ill-typed fields are refused by name."""
    if not isinstance(values, dict):
        raise InvalidArgumentError(field, f"expected a JSON object, got {values!r}")
    hints = typing.get_type_hints(config_type)
    known = {f.name for f in dataclasses.fields(config_type) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgumentError(
            f"{field}.{unknown[0]}", f"unknown field; known fields are {sorted(known)}"
        )
    kwargs = {k: _convert(v, hints[k], f"{field}.{k}") for k, v in values.items()}
    return config_type(**kwargs)


def to_json(config: Any) -> str:
    """Canonical JSON of a config dataclass (for requests and for content keys)."""
    return canonical_json(config)


def parse_config_json(text: str, config_type: type[T], field: str = "config_json") -> T:
    """Config from a request's JSON text; empty text gives the defaults."""
    if not text:
        return config_type()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(field, f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidArgumentError(field, "JSON nested too deeply") from exc
    return from_dict(config_type, values, field)


def refuse_server_fields(config: Any, env_by_field: dict[str, str], field: str) -> None:
    """Fields that choose server files (weights paths) or how far to trust them are the
    server's configuration: a remote caller must leave them at their defaults, so it can neither
    make a server load a file it picks nor probe which files exist through error messages."""
    defaults = type(config)()
    for name, env in env_by_field.items():
        if getattr(config, name) != getattr(defaults, name):
            raise InvalidArgumentError(
                f"{field}.{name}",
                f"is the server's configuration (its operator sets {env}), not a request "
                "field: leave it out",
            )


def with_env_paths(config: T, env_by_field: dict[str, str]) -> T:
    """Fill path fields left None from environment variables (weights mounted in containers)."""
    updates = {
        name: Path(os.environ[env])
        for name, env in env_by_field.items()
        if getattr(config, name) is None and os.environ.get(env)
    }
    return dataclasses.replace(config, **updates) if updates else config
