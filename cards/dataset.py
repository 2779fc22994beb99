"""The released Hugging Face dataset: features and rows built from kept records."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builder.core.paths import record_file
from builder.core.records import Record
from builder.manifest import Manifest


def au_description(manifest: Manifest) -> str:
    """Dataset-info description; its last line is JSON with the AU set and order (none for an images source,
    whose images have no AU targets). The ``au`` column names its AUs itself (``au_feature``); this line is
    for ``save_to_disk`` readers and releases made before it did (the parquet files do not keep it)."""
    if manifest.images is not None:
        meta = {"au_names": [], "source": "images"}
        return f"Pseudo-labelled facial expression dataset '{manifest.name}' {manifest.version}.\n" + json.dumps(meta)
    meta = {"au_names": list(manifest.aus.names), "au_set": manifest.aus.au_set, "au_scale": "FACS intensity 0-5"}
    return f"Synthetic facial expression dataset '{manifest.name}' {manifest.version}.\n" + json.dumps(meta)


def au_feature(names) -> dict:
    """The ``au`` column: a struct of one float32 per AU, named and in the manifest's AU order, so the names
    travel with the data (``save_to_disk``, the parquet files, ``load_dataset`` and the Hub's viewer)."""
    from datasets import Value

    return {name: Value("float32") for name in names}


def au_names(dataset) -> list[str]:
    """The AU order of a released ``Dataset``'s ``au`` column: the struct's field names; for a release made
    before the column was a struct (a list of floats), the order in ``info.description``."""
    feature = dataset.features["au"]
    if isinstance(feature, dict):
        return list(feature)
    return au_names_from_info(dataset.info)


def au_names_from_info(info) -> list[str]:
    """The AU order from a released dataset's ``info`` (a ``DatasetInfo`` or its ``description``): the JSON on
    the description's last line. Only ``load_from_disk`` keeps it; ``au_names`` works on every release."""
    description = getattr(info, "description", info) or ""
    try:
        return json.loads(description.strip().splitlines()[-1])["au_names"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise ValueError("this dataset's info.description holds no AU order (the parquet files and the Hub do not "
                         "keep it): read the names from the 'au' column's features instead, "
                         "list(dataset.features['au'])") from None


def feature(dtype: str, manifest: Manifest):
    """The ``datasets`` feature of a declared column type (``builder.core.stage.Column``)."""
    from datasets import ClassLabel, List, Value

    if dtype in ("string", "float32", "int64"):
        return Value(dtype)
    if dtype == "label":
        return ClassLabel(names=list(manifest.labels.names))
    if dtype == "classes":
        return List(Value("float32"), length=len(manifest.labels.names))
    if dtype == "aus" or dtype.startswith("aus:"):
        return au_feature(_au_names(dtype, manifest))
    if dtype.startswith("float32[") and dtype.endswith("]"):
        sizes = [int(n) for n in dtype[len("float32["):-1].split(",")]
        out = Value("float32")
        for size in reversed(sizes):
            out = List(out, length=size)
        return out
    raise ValueError(f"unknown column type {dtype!r}")


def _au_names(dtype: str, manifest: Manifest) -> tuple[str, ...]:
    """The AU names of an 'aus' column: the manifest's AU set, or the set named after 'aus:'."""
    from builder.manifest.au_sets import AU_SETS

    return AU_SETS[dtype.split(":", 1)[1]] if ":" in dtype else tuple(manifest.aus.names)


def features(manifest: Manifest, columns):
    """The released dataset's features: ``image``, ``label``, then every stage's declared ``columns``
    ((stage name, Column) pairs, in pipeline order)."""
    from datasets import ClassLabel, Features, Image

    cols = {"image": Image(), "label": ClassLabel(names=list(manifest.labels.names))}
    cols.update({column.name: feature(column.dtype, manifest) for _, column in columns})
    return Features(cols)


def row(record: Record, root: Path, columns, metas: dict, manifest: Manifest) -> dict:
    """The released row of a kept record: its image and label, then each declared column's value (``metas``:
    stage name -> the stage's meta, which some columns read, e.g. the generator's provenance)."""
    values = {"image": {"bytes": record_file(root, record.image).read_bytes(), "path": Path(record.image).name},
              "label": record.label}
    for stage, column in columns:
        value = column.value(record, metas.get(stage, {}))
        if column.dtype == "label" and isinstance(value, str):
            value = list(manifest.labels.names).index(value)
        elif column.dtype == "aus" or column.dtype.startswith("aus:"):
            value = dict(zip(_au_names(column.dtype, manifest), value, strict=True)) if value else None
        values[column.name] = value
    return values


def build_dataset_dict(splits: dict[str, list[Record]], manifest: Manifest, provenance: dict | None, root: Path,
                       cache_dir: Path, columns, metas: dict):
    """A ``DatasetDict`` written through an on-disk Arrow cache (memory does not grow with size)."""
    from datasets import Dataset, DatasetDict, NamedSplit

    feats = features(manifest, columns)
    out = {}
    for name, records in splits.items():
        if not records:
            continue  # an empty split cannot be saved; stats and card show it as 0
        ids = "\n".join(r.sample_id for r in records)
        origin = (provenance["weights_sha256"] + (f":{manifest.listing.sha256}" if manifest.edit else "")
                  if provenance else f"images:{manifest.identity()['images']}")
        fingerprint = hashlib.sha256(f"{name}\n{origin}\n{ids}".encode()).hexdigest()[:16]

        def gen(records=records):
            for rec in records:
                yield row(rec, root, columns, metas, manifest)

        ds = Dataset.from_generator(
            gen, features=feats, cache_dir=str(cache_dir), split=NamedSplit(name), fingerprint=fingerprint
        )
        ds.info.description = au_description(manifest)
        ds.info.dataset_name = manifest.name
        ds.info.version = manifest.version
        out[name] = ds
    return DatasetDict(out)
