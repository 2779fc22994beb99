"""Open one split of a dataset saved with ``save_to_disk``, with the errors every config shares."""
from __future__ import annotations

from pathlib import Path

from builder.core.errors import UserError


def open_split(path: str | Path, split: str, columns: dict[str, str], field: str, file: str | None = None,
               error: type[UserError] = UserError):
    """The ``split`` of the dataset at ``path`` (a Dataset or a DatasetDict), memory-mapped.

    ``columns`` maps config keys (``image_column``...) to the column names that
    must exist; ``field`` is the config section named in messages ("data",
    "images"...). Raises ``error`` naming ``file``, the field and the fix.
    """
    from datasets import DatasetDict, load_from_disk

    root = Path(path)
    if not (root / "dataset_info.json").is_file() and not (root / "dataset_dict.json").is_file():
        raise error(f"{field}.dataset '{root}' is not a dataset saved with save_to_disk", file=file,
                    fix="give the folder written by Dataset.save_to_disk or DatasetDict.save_to_disk")
    ds = load_from_disk(str(root))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise error(f"{field}.split '{split}' is not in {root} (splits: {', '.join(ds)})", file=file,
                        fix=f"set {field}.split to one of the dataset's splits")
        ds = ds[split]
    for key, column in columns.items():
        if column not in ds.column_names:
            raise error(f"{field}.{key} '{column}' is not a column of {root}", file=file,
                        fix=f"use one of: {', '.join(ds.column_names)}")
    return ds
