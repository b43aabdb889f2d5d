"""Configuration dataclasses to and from JSON, with errors that name the field at fault.

Stage requests carry their engine's config dataclass as `config_json`; the same dataclasses are
the command line (through tyro), so a flag, a JSON field and a Python attribute share one name.
Each config dataclass checks its own fields in `__post_init__` (so JSON, flags and Python
construction are checked alike); a stage server takes its runtime dataclass (device, budgets)
from its environment (`runtime_from_env`), never from a request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from services.common.errors import InvalidArgumentError, UnavailableError
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
    try:
        return config_type(**kwargs)
    except InvalidArgumentError as exc:  # from __post_init__: name the field as the JSON does
        raise InvalidArgumentError(f"{field}.{exc.field}", exc.description) from None


def check_choices(config: Any) -> None:
    """Refuse a Literal field whose value is not one of its choices (a Python caller is not
    checked by tyro or `from_dict`), naming the field."""
    for name, hint in typing.get_type_hints(type(config)).items():
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        if choices and getattr(config, name) not in choices:
            raise InvalidArgumentError(
                name, f"{getattr(config, name)!r} is not one of {list(choices)}"
            )


_BOOLS = {"true": True, "false": False}


def with_settings(config: T, settings: tuple[str, ...], flag: str) -> T:
    """`config` with the name=value `settings` applied, each value converted to the type of the
    field's current value (the benches' --set flags, to measure a change before it is made);
    InvalidArgumentError names `flag` and the setting that names no such field or does not
    convert."""
    changes: dict[str, object] = {}
    for setting in settings:
        field, sep, value = setting.partition("=")
        if not sep or field not in {f.name for f in dataclasses.fields(config)}:
            raise InvalidArgumentError(
                flag, f"{setting!r} is not name=value of a {type(config).__name__} field"
            )
        kind = type(getattr(config, field))
        try:
            changes[field] = _BOOLS[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError, TypeError):
            raise InvalidArgumentError(flag, f"{setting!r}: {field} is {kind.__name__}") from None
    return dataclasses.replace(config, **changes)


def check_device(value: str, field: str = "device") -> None:
    """Refuse a torch device name other than auto, cpu, cuda or cuda:N, naming the field."""
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise InvalidArgumentError(field, f"{value!r}: use auto, cpu, cuda or cuda:N")


def check_positive(name: str, value: float | None) -> None:
    """Refuse a value that is set (not None) but not a finite number > 0, naming the field."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(name, f"{value} must be a finite number > 0")


def resolve_torch_device(name: str) -> str:
    """The torch device a checked `device` name (check_device) runs on: auto is cuda when torch
    sees one, else cpu; a cuda device asked for where there is none is UNAVAILABLE."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnavailableError(
            f"device: {name!r} was asked for but torch sees no CUDA device; "
            "use device='auto' or 'cpu'"
        )
    return name


def runtime_env_name(stage: str, field: str) -> str:
    """The environment variable that sets a stage server's runtime field, e.g. GFLOW_FIT_DEVICE."""
    return f"GFLOW_{stage}_{field}".upper()


def runtime_from_env(runtime_type: type[T], stage: str) -> T:
    """A stage's runtime dataclass (how it computes: device, budgets) from the serving process's
    environment, GFLOW_<STAGE>_<FIELD> per field (`runtime_env_name`), defaults for the rest.
    Values are JSON where they parse as JSON (8, null), else strings (cuda:1); a bad one is
    refused naming its variable."""
    values = {}
    for item in dataclasses.fields(runtime_type):
        raw = os.environ.get(runtime_env_name(stage, item.name))
        if raw is not None:
            try:
                values[item.name] = json.loads(raw)
            except json.JSONDecodeError:
                values[item.name] = raw
    try:
        return from_dict(runtime_type, values, "")
    except InvalidArgumentError as exc:
        name = runtime_env_name(stage, exc.field.rsplit(".", 1)[-1])
        raise InvalidArgumentError(name, exc.description) from None


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


def parse_request_config(text: str, config_type: type[T], runtime_type: type, stage: str) -> T:
    """`parse_config_json` of a stage request, whose config says what to compute: a field of
    the stage's runtime (device, budgets) is refused naming the variable its operator sets."""
    try:
        return parse_config_json(text, config_type)
    except InvalidArgumentError as exc:
        name = exc.field.removeprefix("config_json.")
        if name not in {f.name for f in dataclasses.fields(runtime_type)}:
            raise
        raise InvalidArgumentError(
            exc.field,
            f"is how the server computes, not what: its operator chooses it "
            f"({runtime_env_name(stage, name)}), a request cannot; leave it out",
        ) from None


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


def with_env_weights(config: T, weights_field: dict[str, str], env_by_field: dict[str, str]) -> T:
    """The weights path of the config's backend (`weights_field`: backend -> field), when left
    None, from its environment variable (weights mounted in containers); a backend that reads
    no weights is left as it is, so its content key stays that of an embedded run."""
    name = weights_field.get(config.backend)
    if name is None or getattr(config, name) is not None or not os.environ.get(env_by_field[name]):
        return config
    return dataclasses.replace(config, **{name: Path(os.environ[env_by_field[name]])})
