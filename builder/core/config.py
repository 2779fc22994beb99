"""Strict pydantic configs and the one reader of YAML config files: safe YAML, validation, and errors that name
the file, the field (with its line) and the fix. The manifest and every other config (training, reference
index, classifier) are read through it."""
from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from builder.core.errors import ManifestError

IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
"""A lower-case identifier: axis, split and labeller names."""


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are frozen, defaults are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def fail(kind: str, message: str, fix: str, at: str = "", **values: object) -> PydanticCustomError:
    """A validation error whose context carries the fix (and, with ``at``, the offending key relative to the
    model that raises it); the reader turns both into the user's message."""
    return PydanticCustomError(kind, message.format(**values), {"fix": fix.format(**values), "at": at})


def load_config(path: str | Path, model: type[BaseModel]):
    """Parse and validate the YAML file ``path`` as ``model``; raise ``ManifestError`` naming the file, field and
    fix."""
    path = Path(path)
    shown = str(path)
    if not path.exists():
        raise ManifestError("manifest file not found", file=shown,
                            fix="check the path; example manifests are in manifests/")
    if path.is_dir():
        raise ManifestError("is a folder, not a manifest file", file=shown, fix="pass the path of a .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"is not UTF-8 text (byte {exc.start})", file=shown,
                            fix="save the manifest as UTF-8 YAML") from None
    return parse_config(text, source=shown, model=model)


def parse_config(text: str, source: str, model: type[BaseModel]):
    """Parse and validate YAML ``text`` (from ``source``, for messages) as ``model``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"(line {mark.line + 1}, column {mark.column + 1}) " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{where}YAML syntax error: {problem}", file=source,
                            fix="fix the YAML at that position (indentation, ':' after keys, quotes)") from None
    if data is None:
        raise ManifestError("is empty", file=source, fix="start from manifests/demo.yaml")
    if not isinstance(data, dict):
        raise ManifestError(f"must be a YAML mapping at the top level, found {type(data).__name__}",
                            file=source, fix="start from manifests/demo.yaml")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(text)
        messages = [_describe(err, lines, model) for err in exc.errors()]
        first = messages[0]
        extra = "".join(f"\n  also: {m[0]} (fix: {m[1]})" for m in messages[1:])
        raise ManifestError(first[0] + extra, file=source, fix=first[1]) from None


def _describe(err: dict[str, Any], lines: dict[tuple, int], root: type[BaseModel]) -> tuple[str, str]:
    """(message, fix) for one pydantic error."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = _clean_loc(err["loc"]) + tuple(p for p in str(ctx.get("at") or "").split(".") if p)
    loc = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
    field_path = ".".join(str(p) for p in loc) or "(top level)"
    line = _nearest_line(loc, lines)
    where = f"field '{field_path}'" + (f" (line {line})" if line else "")
    value = err.get("input")
    shown_value = "" if kind in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"

    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (f"{where}: unknown key",
                f"{hint}remove it; keys allowed here: {', '.join(allowed) or 'none'}")
    if kind == "missing":
        return f"{where}: required field is missing", f"add '{loc[-1]}': {_field_description(loc, root)}"
    if "fix" in ctx:
        return f"{where}: {err['msg']}{shown_value}", str(ctx["fix"])
    return f"{where}: {err['msg']}{shown_value}", f"{_generic_fix(kind, ctx, field_path)} ({_field_description(loc, root)})"


def _generic_fix(kind: str, ctx: dict, field_path: str) -> str:
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(ctx[k] for k in ("gt", "ge", "lt", "le") if k in ctx)
        return f"set {field_path} to a value {bounds[kind]} {limit}"
    if kind.startswith("int_"):
        return f"set {field_path} to a whole number"
    if kind.startswith("float_"):
        return f"set {field_path} to a number"
    if kind.startswith("bool_"):
        return f"set {field_path} to true or false"
    if kind == "literal_error":
        return f"set {field_path} to one of {ctx.get('expected')}"
    if kind == "multiple_of":
        return f"set {field_path} to a multiple of {ctx.get('multiple_of')}"
    if kind == "string_pattern_mismatch":
        return f"set {field_path} to text matching {ctx.get('pattern')}"
    if kind in ("string_too_short", "too_short"):
        return f"give {field_path} at least {ctx.get('min_length', 1)} item(s) or character(s)"
    if kind in ("string_too_long", "too_long"):
        return f"shorten {field_path} to at most {ctx.get('max_length')}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"make {field_path} a mapping of 'key: value' lines"
    if kind == "list_type":
        return f"make {field_path} a list ([a, b] or '- item' lines)"
    if kind == "string_type":
        return f"set {field_path} to text (quote it)"
    return f"set {field_path} to a valid value"


def _clean_loc(loc: tuple) -> tuple:
    """Drop union-branch markers (tags and type names) from a pydantic location."""
    markers = {"int", "float", "str", "bool", "count", "per_class", "constrained-int", "constrained-float"}
    return tuple(p for p in loc if not (isinstance(p, str) and (p in markers or "[" in p)))


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model at ``loc`` below ``root``; list indices step into the list's items (``model_in`` of a
    ``list[Model]`` field is ``Model``)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) and model is not root:
            continue
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        model = model_in(model.model_fields[part].annotation)
    return model


def model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Model``, ``Model | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_description(loc: tuple, root: type[BaseModel]) -> str:
    """The schema description of the field at ``loc`` (or its nearest described parent)."""
    for cut in range(len(loc), 0, -1):
        parent = _model_at(loc[: cut - 1], root)
        name = loc[cut - 1]
        if parent is not None and isinstance(name, str) and name in parent.model_fields:
            return parent.model_fields[name].description or "see manifests/schema.json"
    return "see manifests/schema.json"


def _line_index(text: str) -> dict[tuple, int]:
    """Map every YAML key/item path to its 1-based line number (best effort)."""
    index: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (key.value,)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def _nearest_line(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None
