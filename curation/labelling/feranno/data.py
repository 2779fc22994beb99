"""Labelled images for FERAnno training, from a saved dataset or an image folder.

Labels are class names (any spelling of the built-in label maps) or indices in
the config's label map order; a ClassLabel column is mapped by its names.
Examples with an unknown label, a missing file or an unreadable image are
counted under a reason and skipped; a source with no usable example is an error.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from builder.core.errors import UserError
from builder.core.paths import confined
from builder.manifest.label_maps import CANONICAL
from curation.labelling.feranno.config import DataSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def label_index(value, names: tuple[str, ...]) -> int | None:
    """Index of ``value`` (a class name of any built-in spelling, or an index) in ``names``; None if unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) or type(value).__name__.startswith("int"):  # numpy integers too
        value = int(value)
        return value if 0 <= value < len(names) else None
    if isinstance(value, str):
        wanted = CANONICAL.get(value.strip().lower(), value.strip().lower())
        canonical = [CANONICAL.get(n, n) for n in names]
        return canonical.index(wanted) if wanted in canonical else None
    return None


class LabelledImages:
    """``len``, ``label(i)`` and ``image(i)`` (RGB PIL, or None when unreadable); ``skipped`` counts drops."""

    def __init__(self, data: DataSource, names: tuple[str, ...], source: str, field: str = "data"):
        self.names, self.field = names, field
        self.skipped: Counter[str] = Counter()
        self._items: list[tuple[object, int]] = []  # (file path or dataset row index, label index)
        self._rows, self._column = None, None
        if data.dataset is not None:
            self._from_dataset(data, source)
        else:
            self._from_folder(data, source)
        if not self._items:
            raise UserError(f"{field}: no usable labelled image (skipped: {dict(self.skipped) or 'none'})",
                            file=source, fix=f"check {field}.dataset / {field}.image_folder and the labels "
                            f"(class names of {', '.join(names)}, or indices)")

    def __len__(self) -> int:
        return len(self._items)

    def label(self, i: int) -> int:
        return self._items[i][1]

    def labels(self) -> list[int]:
        return [label for _, label in self._items]

    def subset(self, indices: list[int]) -> LabelledImages:
        """The examples at ``indices`` (skipped counts stay with the parent)."""
        part = object.__new__(LabelledImages)
        part.__dict__.update(self.__dict__, skipped=Counter())
        part._items = [self._items[i] for i in indices]
        return part

    def image(self, i: int):
        """Example ``i`` as an RGB PIL image, or None when it cannot be decoded."""
        from PIL import UnidentifiedImageError

        from builder.core.images import open_rgb8, to_rgb8

        where = self._items[i][0]
        try:
            if isinstance(where, Path):
                return open_rgb8(where)
            value = self._rows[where][self._column]
            return to_rgb8(value) if hasattr(value, "convert") else None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
            return None

    # -- sources --------------------------------------------------------------
    def _from_dataset(self, data: DataSource, source: str) -> None:
        from datasets import ClassLabel

        from builder.core.saved_datasets import open_split

        ds = open_split(data.dataset, data.split, {"image_column": data.image_column,
                                                   "label_column": data.label_column}, self.field, source)
        feature = ds.features[data.label_column]
        values = ds[data.label_column]
        if isinstance(feature, ClassLabel):
            values = [feature.int2str(v) if v is not None and v >= 0 else None for v in values]
        self._rows, self._column = ds, data.image_column
        for row, value in enumerate(values):
            self._add(row, label_index(value, self.names))

    def _from_folder(self, data: DataSource, source: str) -> None:
        folder = Path(data.image_folder)
        if not folder.is_dir():
            raise UserError(f"{self.field}.image_folder '{folder}' does not exist", file=source,
                            fix="give a folder with one subfolder per class, or with a metadata.jsonl")
        meta = folder / data.metadata
        if meta.is_file():
            for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    path = confined(folder, str(entry["file_name"]), f"file_name (line {n})", meta)
                    value = entry["label"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.skipped["bad_metadata"] += 1
                    continue
                if not path.is_file():
                    self.skipped["missing_image"] += 1
                else:
                    self._add(path, label_index(value, self.names))
            return
        classes = sorted(p for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"{self.field}.image_folder '{folder}' has neither {data.metadata} nor class subfolders",
                            file=source, fix="put images in '<folder>/<class name>/' or list them in a metadata.jsonl")
        for sub in classes:
            index = label_index(sub.name, self.names)
            for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                self._add(path, index)

    def _add(self, where, index: int | None) -> None:
        if index is None:
            self.skipped["unknown_label"] += 1
        else:
            self._items.append((where, index))


def split_validation(examples: LabelledImages, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): ``fraction`` of each class (rounded; a class of one stays in
    training), chosen by a hash of (seed, example index)."""
    from builder.core.seeding import derive_seed

    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(examples.labels()):
        by_class.setdefault(label, []).append(i)
    train, validation = [], []
    for _, members in sorted(by_class.items()):
        order = sorted(members, key=lambda i: derive_seed(seed, i, "feranno-validation"))
        take = min(len(order) - 1, round(len(order) * fraction)) if len(order) > 1 else 0
        validation += sorted(order[:take])
        train += sorted(order[take:])
    return sorted(train), sorted(validation)
