"""Reading configuration files: one way for every file storerec reads.

The settings (``configs/storerec.toml``), an experiments file and an import's column mapping are
each a TOML file checked by a pydantic model derived from :class:`ConfigModel`: unknown keys are
errors, and values are not coerced (``port = "3000"`` or ``share = "0.5"`` is an error, not a
number). :func:`read_toml` reads a file and :func:`validate_config` checks it; both raise
:class:`ConfigError` with a message that names the file, the dotted key and what to do::

    experiments file configs/experiments.toml is invalid:
      experiment["ab"]: variant shares must add up to 1, they add up to 0.9
      see configs/experiments.example.toml
"""

from __future__ import annotations

import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from storerec.core.errors import UserError

M = TypeVar("M", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """A configuration file or variable is invalid; the message names it, the key and what to do."""


class ConfigModel(BaseModel):
    """Base of every model read from a configuration file: unknown keys are errors, values are
    taken as they are written (no text-to-number or number-to-text conversion), and assignments
    are validated too. Fields holding paths or times accept text (``Field(strict=False)``)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def read_toml(path: str | Path, what: str, named_by: str) -> dict[str, Any]:
    """The TOML file ``path`` as a dict.

    ``what`` names the kind of file in messages (``"config file"``); ``named_by`` says where its
    name came from (``"--mapping"``, ``"experiments.file"``), so that a missing file can be fixed.

    Raises
    ------
    ConfigError
        If the file does not exist, cannot be read or is not valid TOML.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist (set by {named_by})")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


def validate_config(
    model: type[M],
    raw: Mapping[str, Any],
    *,
    header: str,
    hint: str,
    context: dict[str, Any] | None = None,
    sources: Mapping[tuple[str, ...], str] | None = None,
) -> M:
    """``raw`` checked by ``model``.

    Parameters
    ----------
    model
        The :class:`ConfigModel` (or any pydantic model) to validate with.
    raw
        The values, e.g. from :func:`read_toml`.
    header
        First line of the error message; names the file (``"mapping file m.toml is invalid:"``).
    hint
        Last line of the error message: what to read or do (``"see configs/mapping.example.toml"``).
    context
        Passed to the model's validators (e.g. the accepted event types).
    sources
        Dotted key path -> the environment variable that set it; named after the key's problem.

    Raises
    ------
    ConfigError
        One line per problem: ``  <dotted key>: <what is wrong> (got <value> from <variable>)``.
    """
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        lines = [header, *(f"  {_describe(err, model, raw, sources or {})}" for err in exc.errors())]
        if hint:
            lines.append(f"  {hint}")
        raise ConfigError("\n".join(lines)) from None


def _describe(err: Any, model: type[BaseModel], raw: Any, sources: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        msg = f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "path_type":
        msg = "Input should be text (a path)"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = "Input should be a table ([section] or {key = value, ...})"
    else:
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = err.get("input")
    said = kind == "missing" or isinstance(value, (dict, list)) or repr(value) in msg  # nothing to add
    shown = [] if said else [f"got {_short(value)}"]
    names = [var for path, var in sorted(sources.items()) if path[: len(loc)] == loc or loc[: len(path)] == path]
    if names:
        shown.append(f"from {', '.join(names)}")
    return f"{_dotted(loc, raw) or '(file)'}: {msg}" + (f" ({' '.join(shown)})" if shown else "")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dotted(loc: tuple[Any, ...], raw: Any) -> str:
    """``("experiment", 0, "share")`` as ``experiment["ab"].share`` (a list element by its name
    when it has one, else by its position counted from 1)."""
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            out += f'["{name}"]' if isinstance(name, str) and name else f"[{part + 1}]"
        else:
            node = node.get(part) if isinstance(node, dict) else None
            out += f".{part}" if out else str(part)
    return out


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the model accepts at ``loc`` (aliases where set); empty when not a model there."""
    node: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(node, "model_fields", None)
        if not isinstance(fields, dict):
            return []
        match = [f for name, f in fields.items() if part in (name, f.alias)]
        if not match:
            return []
        node = _inner_model(match[0].annotation)
    fields = getattr(node, "model_fields", None)
    return [f.alias or name for name, f in fields.items()] if isinstance(fields, dict) else []


def _inner_model(annotation: Any) -> Any:
    """The model inside ``X``, ``X | None`` or ``list[X]``; else the annotation itself."""
    if get_origin(annotation) in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation
