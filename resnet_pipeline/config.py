"""Typed configuration: one dataclass per concern, read from a section of params.yaml.

params.yaml is the single source of default values. CLI flags only override. Unknown keys are
reported, never ignored (a typo'd key would otherwise silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_relative(path: str | Path) -> str:
    """``path`` relative to the project when it is inside it (what a reader can use in a clone);
    elsewhere, as it is."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)
# params.yaml in the folder the command runs in (as DVC reads it), else the project's.
DEFAULT_PARAMS = Path("params.yaml")
SECTIONS = ("data", "model", "train", "sweep", "evaluate")


class ConfigError(ValueError):
    """A params file or flag value is invalid. The message names the key and what is valid."""


NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def check_name(key: str, value: str, example: str) -> None:
    """A name that becomes part of MLflow filters, run names and file paths: letters, digits, '.', '_'
    and '-' (a quote would break MLflow's filter strings, a '/' a path)."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(f"{key}: {value!r} is not valid; use letters, digits, '.', '_' and '-', starting with a "
                          f"letter or digit (e.g. {example})")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read a params.yaml file into a dict of sections."""
    import yaml  # here, not at import time: the training loop runs where only torch is installed

    if path is None:
        path = DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else PROJECT_ROOT / DEFAULT_PARAMS
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.absolute()} (pass --params with an existing YAML file)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"params file {path} must be a mapping of sections, got {type(params).__name__}")
    unknown = sorted(set(params) - set(SECTIONS), key=str)
    if unknown:  # a misspelt section would otherwise leave every one of its keys at its default
        raise ConfigError(f"params file {path}: unknown section(s) {', '.join(map(str, unknown))}; "
                          f"valid sections are: {', '.join(SECTIONS)}")
    for name, section in params.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"params file {path}: section '{name}' must be a mapping of keys to values, "
                              f"got {type(section).__name__} {section!r}")
    return params


def apply_sets(params: Mapping[str, Any], sets: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``params`` with ``-S section.key=value`` overrides applied (DVC's ``-S``: the value is read as
    YAML, so ``train.workers=4``, ``data.resize_range=[128,160]`` and ``train.run_name=null`` mean what
    they say in params.yaml). The result is checked like the file: an unknown section here, an unknown
    key or a bad value when its section is read."""
    import yaml

    out = {name: dict(section or {}) for name, section in params.items()}
    for item in sets:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not section or not name or "." in name:
            raise ConfigError(f"-S {item!r}: expected section.key=value, e.g. -S train.iterations=2000 "
                              f"or -S data.normalize=per_channel")
        if section not in SECTIONS:
            raise ConfigError(f"-S {item!r}: unknown section {section!r}; valid sections are: {', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"-S {item!r}: the value is not valid YAML ({exc})") from None
        out.setdefault(section, {})[name] = value
    return out


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check (and gently coerce) one value against its dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ConfigError(f"{name}: must not be empty (expected {getattr(tp, '__name__', tp)})")
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        inner = [a for a in args if a is not type(None)]
        for candidate in inner:
            try:
                return _coerce(name, value, candidate)
            except ConfigError:
                continue
        described = [f"one of {', '.join(map(repr, typing.get_args(a)))}" if typing.get_origin(a) is typing.Literal
                     else {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(a, str(a))
                     for a in inner]
        raise ConfigError(f"{name}: {value!r} is not valid; expected {' or '.join(described)}")
    if origin is typing.Literal:
        if value not in args:
            hint = ' (YAML reads unquoted on/off as true/false: write "on" or "off")' if isinstance(value, bool) else ""
            raise ConfigError(f"{name}: {value!r} is not valid; choose one of {', '.join(map(repr, args))}{hint}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)  # YAML writes 6.4e4 as a float
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _fail_int(name, value)
            except ValueError:
                _fail_int(name, value)
        if not isinstance(value, int):
            _fail_int(name, value)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    if isinstance(tp, type) and issubclass(tp, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _fail_int(name: str, value: Any) -> None:
    raise ConfigError(f"{name}: expected an integer, got {value!r}")


def from_dict(cls: type[T], values: Mapping[str, Any] | None, section: str, **overrides: Any) -> T:
    """Build dataclass ``cls`` from a params section, then apply non-None ``overrides`` (CLI flags).

    Unknown keys raise ConfigError naming the section, the key and the valid keys.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in params section '{section}': {', '.join(unknown)}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    values.update({k: v for k, v in overrides.items() if v is not None})
    kwargs = {k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"params section '{section}': {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:  # model code raises plain ValueError (it must not import yaml)
            raise ConfigError(f"params section '{section}': {exc}") from exc
    return obj


def load_section(cls: type[T], section: str, params: str | Path | Mapping[str, Any] | None = None,
                 **overrides: Any) -> T:
    """Read ``section`` of a params file (or an already loaded dict) into ``cls``."""
    if not isinstance(params, Mapping):
        params = load_params(params)
    return from_dict(cls, params.get(section), section, **overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for MLflow params, checkpoints and JSON)."""
    return dataclasses.asdict(cfg)
