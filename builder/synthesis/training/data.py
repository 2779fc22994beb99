"""Training examples for the AU adapter: (image, caption, AU vector), from a dataset or an image folder.

Unreadable images and malformed metadata lines are counted under a reason and
skipped; a source with no usable example is an error.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from builder.core.errors import UserError
from builder.core.paths import confined
from builder.synthesis.training.config import TrainData


class TrainExamples:
    """Random access to examples; images are decoded on access."""

    def __init__(self, data: TrainData, au_names: tuple[str, ...], source: str):
        self.au_names = au_names
        self.missing_au = data.missing_au
        self.skipped: Counter[str] = Counter()
        self.unmeasured: Counter[str] = Counter()  # AU name -> rows where it was empty and read as 0
        if data.dataset is not None:
            self._from_dataset(data, source)
        else:
            self._from_folder(data, source)
        if not self.items:
            raise UserError(f"no usable training example (skipped: {dict(self.skipped) or 'none'})", file=source,
                            fix="check data.dataset / data.image_folder and the metadata")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """(RGB PIL image, caption, AU list) of example ``i``."""
        from builder.core.images import open_rgb8, to_rgb8

        image, caption, au = self.items[i]
        return (open_rgb8(image) if isinstance(image, (str, Path)) else to_rgb8(image)), caption, au

    def _from_dataset(self, data: TrainData, source: str) -> None:
        from builder.core.saved_datasets import open_split

        ds = open_split(data.dataset, data.split, {"image_column": data.image_column, "caption_column":
                                                   data.caption_column, "au_column": data.au_column}, "data", source)
        self._check_au_feature(ds.features[data.au_column], data.au_column, source)
        self.items = []
        for row in ds:
            au = self._au(row[data.au_column])
            if au is None:
                self.skipped["bad_au"] += 1
                continue
            self.items.append((row[data.image_column], row[data.caption_column] or "", au))

    def _from_folder(self, data: TrainData, source: str) -> None:
        folder = Path(data.image_folder)
        meta = folder / data.metadata
        if not meta.is_file():
            raise UserError(f"'{meta}' does not exist", file=source,
                            fix="put a metadata.jsonl next to the images (one JSON object per line)")
        self.items = []
        for entry, image in metadata_entries(folder, meta, self.skipped):
            try:
                caption, au = str(entry.get("caption", "")), self._au(entry["au"])
            except (KeyError, TypeError):
                self.skipped["bad_metadata"] += 1
                continue
            if au is None:
                self.skipped["bad_au"] += 1
            elif not image.is_file():
                self.skipped["missing_image"] += 1
            elif not _readable(image):
                self.skipped["unreadable_image"] += 1
            else:
                self.items.append((image, caption, au))

    def _check_au_feature(self, feature, column: str, source: str) -> None:
        """A struct column (a release's ``au``: one named float per AU) must name AUs of the config's set, or
        every row would be skipped; a list column is read by position and checked row by row."""
        if not isinstance(feature, dict):
            return
        unknown = [name for name in feature if name not in self.au_names]
        if unknown:
            from builder.manifest.au_sets import AU_SETS

            fits = [name for name, aus in AU_SETS.items() if set(feature) <= set(aus)]
            raise UserError(f"data.au_column '{column}' holds AUs {', '.join(unknown)}, which are not in the "
                            f"config's au_set ({', '.join(self.au_names)})", file=source,
                            fix=f"set au_set to one that has every AU of the column ({', '.join(fits)})" if fits
                            else "train on a column whose AUs belong to one AU set")

    def _au(self, value) -> list[float] | None:
        """An AU vector in the AU set's order, from a list (in that order) or a {name: intensity} mapping (a
        release's ``au`` struct, or a metadata line; AUs it leaves out are 0); None if invalid. An empty (null)
        intensity is an AU the detector did not measure: 0 and counted with ``missing_au: zero``, else invalid."""
        if isinstance(value, dict):
            if not set(value) <= set(self.au_names):
                return None
            value = [value.get(name, 0.0) for name in self.au_names]
        if isinstance(value, (list, tuple)) and len(value) == len(self.au_names) and None in value:
            if self.missing_au == "skip":
                return None
            self.unmeasured.update(name for name, v in zip(self.au_names, value) if v is None)
            value = [0.0 if v is None else v for v in value]
        if not isinstance(value, (list, tuple)) or len(value) != len(self.au_names):
            return None
        try:
            vector = [float(v) for v in value]
        except (TypeError, ValueError):
            return None
        return vector if all(0.0 <= v <= 5.0 for v in vector) else None


def metadata_entries(folder: Path, meta: Path, skipped: Counter):
    """(entry, image path) of each line of a metadata.jsonl: a JSON object whose ``file_name`` stays inside
    ``folder`` (else a UserError naming the line); lines that are not JSON objects with a file_name are counted
    in ``skipped['bad_metadata']``."""
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image = confined(folder, str(entry["file_name"]), f"file_name (line {n})", meta)
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped["bad_metadata"] += 1
            continue
        yield entry, image


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
