"""Read a manifest file: safe YAML, validation, and errors that say how to fix them."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ManifestError
from .manifest import Manifest


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate ``path``; raise ``ManifestError`` naming the file, field and fix."""
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
    return parse_manifest(text, source=shown)


def parse_manifest(text: str, source: str = "<manifest>") -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{where}YAML syntax error: {problem}", file=source,
                            fix="fix the YAML at that position (indentation, ':' after keys, quotes)") from None
    if data is None:
        raise ManifestError("is empty", file=source, fix="start from manifests/demo.yaml")
    if not isinstance(data, dict):
        raise ManifestError(f"must be a YAML mapping at the top level, found {type(data).__name__}",
                            file=source, fix="start from manifests/demo.yaml")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(text)
        messages = [_describe(err, lines) for err in exc.errors()]
        first = messages[0]
        extra = "".join(f"\n  also: {m[0]} (fix: {m[1]})" for m in messages[1:])
        raise ManifestError(first[0] + extra, file=source, fix=first[1]) from None


def _describe(err: dict[str, Any], lines: dict[tuple, int]) -> tuple[str, str]:
    """(message, fix) for one pydantic error."""
    loc = _clean_loc(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    field_path = ".".join(str(p) for p in loc) or "(top level)"
    line = _nearest_line(loc, lines)
    where = f"field '{field_path}'" + (f" (line {line})" if line else "")
    value = err.get("input")
    shown_value = "" if kind in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {value!r})"

    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (f"{where}: unknown key",
                f"{hint}remove it; keys allowed here: {', '.join(allowed) or 'none'}")
    if kind == "missing":
        return f"{where}: required field is missing", f"add '{loc[-1]}': {_field_description(loc)}"
    if "fix" in ctx:
        return f"{where}: {err['msg']}{shown_value}", str(ctx["fix"])
    description = _field_description(loc)
    return f"{where}: {err['msg']}{shown_value}", f"set {field_path} to a valid value: {description}"


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-branch markers ('int', 'dict[str,...]') from a location."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part in {"int", "float", "str", "bool"} or "[" in part):
            continue
        out.append(part)
    return tuple(out)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Manifest
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _field_description(loc: tuple) -> str:
    """The schema description of the field at ``loc`` (or its nearest described parent)."""
    for cut in range(len(loc), 0, -1):
        parent = _model_at(loc[: cut - 1])
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
