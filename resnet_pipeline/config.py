"""Typed configuration: one dataclass per concern, read from a section of params.yaml.

params.yaml is the single source of default values. CLI flags only override. Unknown keys are
reported, never ignored (a typo'd key would otherwise silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_relative(path: str | Path) -> str:
    """``path`` relative to the project when inside it (what a reader can use in a clone); elsewhere, as it is."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


# params.yaml in the folder the command runs in (as DVC reads it), else the project's.
DEFAULT_PARAMS = Path("params.yaml")
SECTIONS = ("data", "model", "train", "sweep", "evaluate")
EXTENDS = "extends"  # a params file's key naming the file it starts from (`load_params`)


class ConfigError(ValueError):
    """A params file or flag value is invalid. The message names the key and what is valid."""


def check_name(key: str, value: str, example: str) -> None:
    """A name that becomes part of MLflow filters, run names and file paths: letters, digits, '.', '_'
    and '-' (a quote would break MLflow's filter strings, a '/' a path)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ConfigError(f"{key}: {value!r} is not valid; use letters, digits, '.', '_' and '-', starting with a "
                          f"letter or digit (e.g. {example})")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read a params.yaml file into a dict of sections.

    A file may hold only what it changes from another: ``extends: <path>`` (relative to the file) gives every
    key it does not set, section by section (the pipelines' params files extend the root params.yaml, so that
    what a pipeline changes reads at a glance)."""
    if path is None:
        path = DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else PROJECT_ROOT / DEFAULT_PARAMS
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.absolute()} (pass --params with an existing YAML file)")
    return _read_params(path, ())


def _read_params(path: Path, children: tuple[Path, ...]) -> dict[str, Any]:
    import yaml  # here, not at import time: the training loop runs where only torch is installed

    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"params file {path} must be a mapping of sections, got {type(params).__name__}")
    base = params.pop(EXTENDS, None)
    unknown = sorted(set(params) - set(SECTIONS), key=str)
    if unknown:  # a misspelt section would otherwise leave every one of its keys at its default
        raise ConfigError(f"params file {path}: unknown section(s) {', '.join(map(str, unknown))}; "
                          f"valid sections are: {', '.join(SECTIONS)} (and {EXTENDS}: the file it starts from)")
    for name, section in params.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"params file {path}: section '{name}' must be a mapping of keys to values, "
                              f"got {type(section).__name__} {section!r}")
    if base is None:
        return params
    base_path = path.parent / str(base)
    if not isinstance(base, str) or not base_path.is_file():
        raise ConfigError(f"params file {path}: {EXTENDS}: {base!r} is not a params file (give its path, "
                          f"relative to {path.parent}, e.g. ../../params.yaml)")
    if base_path.resolve() in {p.resolve() for p in (path, *children)}:
        raise ConfigError(f"params file {path}: {EXTENDS}: {base} extends itself, through "
                          f"{' -> '.join(map(str, (*children, path, base_path)))}")
    merged = _read_params(base_path, (*children, path))
    for name, section in params.items():
        merged[name] = {**(merged.get(name) or {}), **(section or {})}
    return merged


def apply_sets(params: Mapping[str, Any], sets: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``params`` with ``-S section.key=value`` overrides applied (DVC's ``-S``: the value is read as YAML, so
    ``train.workers=4``, ``data.resize_range=[128,160]`` and ``train.run_name=null`` mean what they say in
    params.yaml). The result is checked like the file: an unknown section here, an unknown key or a bad value
    when its section is read."""
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


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a numeric field (a lower bound, maybe an upper one), declared beside it as
    ``Annotated[int, Bounds(gt=0)]`` and checked by pydantic, which is imported only when a config is checked
    (the training loop runs where only torch is installed). ``what`` and ``note`` word the error:
    "train.x: must be <what> in [0, 1) (<note>), got 2"."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = False  # refuse inf and nan, which a range check alone would let through
    what: str = ""
    note: str = ""

    def describe(self, integer: bool) -> str:
        """E.g. "a positive integer", "an iteration >= 0", "a training error in (0, 1]"."""
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if high is not None:
            text = f"{self.what} in {'[('[self.gt is not None]}{low:g}, {high:g}{'])'[self.lt is not None]}"
        elif self.gt == 0 and not self.what:
            text = f"a positive {'integer' if integer else 'number'}"
        else:
            text = f"{self.what or ('an integer' if integer else '')} {'>' if self.gt is not None else '>='} {low:g}"
        return text.strip() + (f" ({self.note})" if self.note else "")


def _pydantic_type(tp: Any) -> Any:
    """``tp`` as pydantic checks it: Bounds as constraints, bools strict (pydantic would read 1 or "yes"
    as true), lists also from "a,b" (``-S sweep.depths=20,32``), integers also from "6.4e4"."""
    from pydantic import BeforeValidator, Field, Strict

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        b = tp.__metadata__[0]
        finite = {"allow_inf_nan": False} if b.finite else {}
        return typing.Annotated[_pydantic_type(args[0]), Field(gt=b.gt, ge=b.ge, lt=b.lt, le=b.le, **finite)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(map(_pydantic_type, args))]
    if origin in (list, tuple):
        return typing.Annotated[tp, BeforeValidator(_split)]
    if tp is int:
        return typing.Annotated[int, BeforeValidator(_whole)]
    return typing.Annotated[bool, Strict()] if tp is bool else tp


def _split(value: Any) -> Any:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


def _whole(value: Any) -> Any:
    """YAML reads 6.4e4 as the string "6.4e4" (PyYAML wants 6.4e+4): an integer written so is one."""
    try:
        return int(float(value)) if isinstance(value, str) and float(value).is_integer() else value
    except ValueError:
        return value


@functools.cache
def _schema(cls: type) -> Any:
    """A pydantic validator of a dict of dataclass ``cls``'s fields, unknown keys forbidden. Keys left
    out stay out, so that they keep the dataclass's own defaults."""
    from pydantic import ConfigDict, TypeAdapter, with_config
    from typing_extensions import TypedDict  # pydantic's choice before Python 3.12

    hints = typing.get_type_hints(cls, include_extras=True)
    schema = TypedDict(f"{cls.__name__}Schema",  # type: ignore[misc]
                       {f.name: _pydantic_type(hints[f.name]) for f in dataclasses.fields(cls)}, total=False)
    return TypeAdapter(with_config(ConfigDict(extra="forbid", coerce_numbers_to_str=True))(schema))


def _validated(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """``values`` checked and converted ("0.1" to 0.1, "6.4e4" to 64000) against dataclass ``cls``'s fields."""
    from pydantic import ValidationError

    try:
        return _schema(cls).validate_python(dict(values))
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors(), cls, section)) from None


def _message(errors: list[dict[str, Any]], cls: type, section: str) -> str:
    """pydantic's errors as one line that names the key and what is valid."""
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return (f"unknown key(s) in params section '{section}': {', '.join(unknown)}; "
                f"valid keys are: {', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")
    error = next((e for e in errors if e["type"] in _RANGE_ERRORS), errors[0])  # a union's other members
    name, value = error["loc"][0], error["input"]
    tp = typing.get_type_hints(cls, include_extras=True)[name]
    key = f"{section}.{name}" + "".join(f"[{i}]" for i in error["loc"][1:] if isinstance(i, int))
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    if value is None:
        return f"{key}: must not be empty (expected {' or '.join(map(_describe, options))})"
    if error["type"] == "finite_number":
        return f"{key}: must be a finite number, got {value}"
    if error["type"] in _RANGE_ERRORS:
        (base, bounds), = [typing.get_args(a) for a in options if typing.get_origin(a) is typing.Annotated]
        return f"{key}: must be {bounds.describe(base is int)}, got {value}"
    if len(options) > 1:
        return f"{key}: {value!r} is not valid; expected {' or '.join(map(_describe, options))}"
    if error["type"] == "literal_error":
        hint = ' (YAML reads unquoted on/off as true/false: write "on" or "off")' if isinstance(value, bool) else ""
        return f"{key}: {value!r} is not valid; choose one of {', '.join(map(repr, typing.get_args(tp)))}{hint}"
    return f"{key}: expected {_describe(typing.get_args(tp)[0] if len(error['loc']) > 1 else tp)}, got {value!r}"


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _describe(tp: Any) -> str:
    tp = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {', '.join(map(repr, typing.get_args(tp)))}"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return "a list" if typing.get_origin(tp) in (list, tuple) else names.get(tp, str(tp))


def check_fields(cfg: Any, section: str) -> None:
    """Raise ConfigError naming the key when a field of config dataclass ``cfg`` has the wrong type or
    is out of its declared range (what `from_dict` checks; for configs built in code)."""
    _validated(type(cfg), {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, section)


def from_dict(cls: type[T], values: Mapping[str, Any] | None, section: str, **overrides: Any) -> T:
    """Build dataclass ``cls`` from a params section, then apply non-None ``overrides`` (CLI flags).
    Unknown keys raise ConfigError naming the section, the key and the valid keys."""
    values = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
    obj = cls(**_validated(cls, values, section))
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
