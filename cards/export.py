"""The release's files for people and the Hub: records per split, parquet shards, the rejected config.

Layout (inside the release folder)::

    records/<split>.jsonl          the released Records (``builder.core.records``), one file per split
    data/<split>-NNNNN-of-MMMMM.parquet    the default config, Hub layout (``datasets`` features kept)
    data/rejected-NNNNN-of-MMMMM.parquet   the 'rejected' config: every dropped sample with stage,
                                           reason and detail (and its image where one was made); only
                                           when something was dropped, because ``datasets`` cannot load
                                           a split without rows (the card says so instead)

Parquet shards hold at most ``MAX_SHARD_BYTES`` of Arrow data each and are
written from the saved dataset, so the same release gives the same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path

from builder.core.paths import record_file
from builder.core.records import Record, write_jsonl

MAX_SHARD_BYTES = 500 * 1024 * 1024
REJECTED = "rejected"


def write_records(splits: dict[str, list[Record]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        write_jsonl(folder / f"{name}.jsonl", records)


def write_parquet(dataset, folder: Path, split: str) -> list[Path]:
    """Write one split of ``dataset`` as ``<split>-NNNNN-of-MMMMM.parquet`` shards; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, math.ceil(dataset.data.nbytes / MAX_SHARD_BYTES))
    paths = []
    for i in range(shards):
        path = folder / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        dataset.shard(shards, i, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths


def rejected_features(names):
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "sample_id": Value("string"), "label": ClassLabel(names=list(names)),
                     "stage": Value("string"), "reason": Value("string"), "detail": Value("string"),
                     "prompt": Value("string"), "source_file": Value("string"),
                     "label_confidence": Value("float32")})


def rejected_row(record: Record, root: Path) -> dict:
    """A dropped record as a row; its image only if one was made and it decodes (a broken file stays out)."""
    return {"image": _image(record, root), "sample_id": record.sample_id, "label": record.label,
            "stage": record.drop.stage, "reason": record.drop.reason, "detail": record.drop.detail,
            "prompt": record.prompt, "source_file": record.source,
            "label_confidence": record.labelling.get("confidence") if record.labelling else None}


def _image(record: Record, root: Path) -> dict | None:
    from PIL import Image

    if not record.image:
        return None
    path = record_file(root, record.image)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im.load()
    except Exception:  # an unreadable file is audited by its reason, not shipped
        return None
    return {"bytes": path.read_bytes(), "path": path.name}


def rejected_dataset(records: list[Record], root: Path, names, cache_dir: Path):
    """The 'rejected' config as a ``datasets.Dataset`` (records in sample order)."""
    from datasets import Dataset, NamedSplit

    ordered = sorted(records, key=lambda r: (r.index, r.drop.stage))

    def gen():
        for record in ordered:
            yield rejected_row(record, root)

    return Dataset.from_generator(gen, features=rejected_features(names), cache_dir=str(cache_dir),
                                  split=NamedSplit(REJECTED))
