"""Reading one listed image of a folder or a saved dataset, as the ingest and edit stages both do.

A folder entry is read only while it still resolves inside its folder (unless links outside were allowed), and
decoded with ``images.read_checked`` (cut or garbled files raise ``CorruptImage``); a dataset row's image is read
from its encoded bytes (or the file its path names, as ``datasets`` would), checked the same way.
"""
from __future__ import annotations

from pathlib import Path


class OutsideFolder(Exception):
    """A listed path that now resolves outside its folder."""


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to ``folder`` or below it (links followed)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def read_entry(root: str | Path, relative: str, follow_links_outside: bool = False, where: str = "the folder"):
    """(decoded PIL image, its file's bytes) of ``relative`` in ``root``; ``OutsideFolder`` when it now leaves it."""
    from builder.core.images import read_checked

    path = Path(root) / relative
    if not follow_links_outside and not inside(path, root):
        raise OutsideFolder(f"{relative} now resolves to {path.resolve()}, outside {where}")
    data = path.read_bytes()
    return read_checked(data), data


def undecoded(dataset, column: str):
    """``dataset`` with its Image column left encoded ({bytes, path}), so rows are checked like files; another
    column type is left as is (its rows are not images, and ``row_image`` says so)."""
    from datasets import Image

    feature = dataset.features[column]
    return dataset.cast_column(column, Image(decode=False)) if isinstance(feature, Image) else dataset


def row_image(dataset, row: int, column: str):
    """Row ``row``'s image of an ``undecoded`` dataset (its encoded bytes, or the file its path names), decoded and
    checked like a file."""
    from builder.core.images import read_checked

    value = dataset[row][column]
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return read_checked(value["bytes"] or Path(value["path"]).read_bytes())
    raise TypeError(f"row {row} holds {type(value).__name__}, not an image")
