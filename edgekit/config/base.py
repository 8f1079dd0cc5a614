"""Strict, frozen pydantic models and the YAML loader that turns validation failures into
one line per problem: ``file: key.path: value given must be ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys forbidden, frozen after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _key_text(part: Any) -> str:
    """A key as it can be printed on one line: a name with control characters, line or record
    separators, or nothing printable in it is shown quoted and escaped (``'\\x1e'``)."""
    text = str(part)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def _loc(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_key_text(part)}" if out else _key_text(part)
    return out or "<root>"


def _user_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """The key path as the user wrote it: pydantic puts a tagged union's tag value (``backend.
    onnxruntime.devcie``) and validator names into the path; walk the input and keep only the
    parts that index it."""
    out: list[Any] = []
    node = data
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
                continue
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            if node.get("type") == part or (nxt is not None and nxt in node):
                continue  # the union's tag (given or defaulted), not a key
            out.append(part)
            node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            out.append(part)
            node = None
    return tuple(out)


def format_validation_error(err: ValidationError, source: str, prefix: str = "", data: Any = None) -> str:
    """One line per problem: file, key path, value given and what is allowed.

    ``data`` is the validated input; with it, tagged-union tags are dropped from key paths."""
    lines = []
    for e in err.errors():
        key = _loc(_user_loc(tuple(e["loc"]), data), prefix)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key (remove it or check the spelling)")
            continue
        if e["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing")
            continue
        given = e.get("input")
        given_s = repr(given) if not isinstance(given, dict) else "{...}"
        if len(given_s) > 60:
            given_s = given_s[:57] + "..."
        msg = msg[0].lower() + msg[1:] if msg else msg
        lines.append(f"{source}: {key}: {given_s} {msg}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; ConfigError on a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found (check the path)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where}: invalid YAML ({problem}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_model(model: type[M], data: Any, source: str, prefix: str = "") -> M:
    """Validate ``data`` into ``model``; ConfigError with one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, prefix, data)) from None
