"""Names the manifest sections share: reserved column names, the built-in model, the added-later marker."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from builder.core.config import IDENT, model_in

__all__ = ["ADDED_LATER", "BUILTIN_TINY_MODEL", "IDENT", "RESERVED_COLUMNS", "AddedLater", "strip_added_later"]

BUILTIN_TINY_MODEL = "builtin:tiny-sd"
RESERVED_COLUMNS = frozenset(
    {"image", "label", "au", "prompt", "negative_prompt", "seed", "sample_id", "expression", "au_cues", "au_names",
     "generator_model", "generator_revision", "generator_weights_sha256", "layout_reference", "target_label",
     "label_disposition", "label_confidence", "label_agreement", "source_file"}
)
"""Record fields that prompt axes may not shadow as dataset columns (stages' own columns are checked by the
pipeline)."""


@dataclass(frozen=True)
class AddedLater:
    """Marks a field added after builds existed (``Annotated[type, ADDED_LATER]``): while it is at its default it
    is left out of the build's identity, so build folders made before it keep their fingerprint."""


ADDED_LATER = AddedLater()


def strip_added_later(model: type[BaseModel], data: dict | None) -> None:
    """Delete from ``data`` (``model``'s JSON dump) every added-later field still at its default, recursively."""
    if data is None:
        return
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        if any(isinstance(m, AddedLater) for m in info.metadata):
            default = info.get_default(call_default_factory=True)
            dumped = default.model_dump(mode="json") if isinstance(default, BaseModel) else default
            if data[name] == dumped:
                del data[name]
                continue
        sub = model_in(info.annotation)
        if sub is not None and isinstance(data[name], dict):
            strip_added_later(sub, data[name])


def added_later_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of every added-later field under ``model``."""
    out = []
    for name, info in model.model_fields.items():
        if any(isinstance(m, AddedLater) for m in info.metadata):
            out.append((*prefix, name))
        sub = model_in(info.annotation)
        if sub is not None:
            out += added_later_fields(sub, (*prefix, name))
    return out
