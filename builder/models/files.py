"""Reading model files someone else made, as data: a safetensors file checked before the library sees it (a
pickle is refused, a truncated file named), and a model folder's JSON config validated field by field.

Every loader of the tool's own model folders (AU adapter, FERAnno) and the reference checks
(``builder.references``) read through these, so a damaged or hostile file gets one clear message naming it.
No torch at import.
"""
from __future__ import annotations

import difflib
import json
import struct
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from builder.core.errors import ModelLoadError

SAFETENSORS_MAX_HEADER = 100_000_000
"""The safetensors library refuses larger headers."""
PICKLE_PROBLEM = ("is a pickled torch checkpoint (torch.save), not a safetensors file: pickles are refused because "
                  "loading one can run code")


def first_line(exc: BaseException, where: str = "") -> str:
    """The first line of an exception's message, or its type (``where`` it happened) when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else f"{type(exc).__name__}{' ' + where if where else ''}"


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (pickled, truncated, not one at all), or None.

    Reads the 8-byte header length and the JSON header only: the tensors' data must end exactly at the end of
    the file, as the safetensors library requires.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
                return PICKLE_PROBLEM
            if len(head) < 8:
                return f"is empty or truncated ({size} bytes): not a safetensors file"
            length = struct.unpack("<Q", head)[0]
            if length > min(size - 8, SAFETENSORS_MAX_HEADER):
                return (f"is truncated or not a safetensors file (its header would be {length} bytes, the file has "
                        f"{size})")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            _, stop = entry["data_offsets"]
            end = max(end, int(stop))
        except (TypeError, KeyError, ValueError):
            return f"is not a valid safetensors file (tensor {name!r} has no data_offsets)"
    data = size - 8 - length
    if end > data:
        return f"is truncated: its header describes {end} bytes of tensor data, the file holds {data}"
    if end < data:
        return f"is not a valid safetensors file ({data - end} bytes follow its tensor data)"
    return None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file whose ``safetensors_problem`` is None.

    Reads the JSON header only, no tensor data: enough to compare a file's tensors with a model before any
    library loads them.
    """
    with open(path, "rb") as fh:
        length = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(length).decode("utf-8"))
    return {name: tuple(int(n) for n in entry.get("shape", ())) for name, entry in header.items()
            if name != "__metadata__"}


def load_safetensors(path: str | Path, fix: str) -> dict:
    """The tensors of a safetensors file; ``ModelLoadError`` naming the file for a pickled, truncated or
    unreadable one (never the safetensors library's own error)."""
    path = Path(path)
    problem = safetensors_problem(path)
    if problem:
        raise ModelLoadError(problem, file=str(path), fix=fix)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the weights ({first_line(exc)})", file=str(path), fix=fix) from None


def read_json_config(path: str | Path, schema: type[BaseModel], what: str, fix: str) -> BaseModel:
    """``path`` (a JSON object) validated as ``schema``; ``ModelLoadError`` naming the file and every bad field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"not a valid {what}: not UTF-8 text (byte {exc.start})", file=str(path),
                             fix=fix) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"not a valid {what}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                             file=str(path), fix=fix) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the {what} ({exc.strerror or type(exc).__name__})", file=str(path),
                             fix=fix) from None
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise ModelLoadError(f"not a valid {what}: it must be a JSON object {{...}}, found a {kind}",
                             file=str(path), fix=fix)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_field_error(err, schema) for err in exc.errors())
        raise ModelLoadError(f"not a valid {what}: {problems}", file=str(path), fix=fix) from None


def _field_error(err: dict, schema: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return f"field '{loc}': required field is missing"
    if err["type"] == "extra_forbidden":
        allowed = sorted(schema.model_fields) if len(err["loc"]) == 1 else []
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f", did you mean '{close[0]}'?" if close else ""
        return f"field '{loc}': unknown key{hint}" + (f" (keys allowed: {', '.join(allowed)})" if allowed else "")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    message = err["msg"].removeprefix("Value error, ")
    return f"field '{loc}': {message}{shown}" if err["loc"] else message


class ConfigFile(BaseModel):
    """A model folder's JSON config: JSON types exactly (no "4" for 4), no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Positive = Annotated[int, Field(gt=0)]
"""A positive integer field."""


class ConfigPart(BaseModel):
    """A nested part of a model folder's config: strict types, extra keys allowed (written by newer versions)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
