"""The released Hugging Face dataset: features and rows built from kept records."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builder.manifest import Manifest
from builder.paths import record_file
from builder.records import Record


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


def features(manifest: Manifest):
    from datasets import ClassLabel, Features, Image, List, Value

    cols = {"image": Image(), "label": ClassLabel(names=list(manifest.labels.names))}
    if manifest.images is not None:
        cols.update({"sample_id": Value("string"), "source_file": Value("string")})
    else:
        cols.update({
            "au": au_feature(manifest.aus.names),
            "prompt": Value("string"),
            "negative_prompt": Value("string"),
            "seed": Value("int64"),
            "sample_id": Value("string"),
        })
        cols.update({axis: Value("string") for axis in manifest.prompts.all_axes})
        if manifest.generator.layout is not None:
            cols["layout_reference"] = Value("string")
    if manifest.labelling is not None:
        cols.update({
            "target_label": ClassLabel(names=list(manifest.labels.names)),
            "label_disposition": Value("string"),
            "label_confidence": Value("float32"),
            "label_agreement": Value("float32"),
        })
        cols.update({f"probs_{name}": List(Value("float32"), length=len(manifest.labels.names))
                     for name in manifest.labelling.labeller_names})
    cols.update(curation_features(manifest))
    if manifest.images is None:
        cols.update({
            "generator_model": Value("string"),
            "generator_revision": Value("string"),
            "generator_weights_sha256": Value("string"),
        })
    return Features(cols)


def labelling_columns(record: Record, names) -> dict:
    """The label-calibration columns of a labelled record (see ``features``)."""
    lab = record.labelling
    target = list(names).index(lab["target"]) if lab["target"] is not None else None
    return {"target_label": target, "label_disposition": lab["disposition"],
            "label_confidence": lab["confidence"], "label_agreement": lab["agreement"],
            **{f"probs_{name}": probs for name, probs in lab["experts"].items()}}


def curation_features(manifest: Manifest) -> dict:
    """Columns of the curation stages that ran: face measurements, the leak gate's verdict, the identity."""
    from datasets import List, Value

    curation, cols = manifest.curation, {}
    if curation.faces.enabled:
        cols.update({"face_box": List(Value("float32"), length=4),
                     "face_landmarks": List(List(Value("float32"), length=2), length=5),
                     "face_score": Value("float32"), "sharpness": Value("float32"), "brightness": Value("float32")})
    if curation.identity_leak is not None:
        cols.update({"leak_similarity": Value("float32"), "nearest_reference": Value("string")})
    if curation.identities is not None:
        cols["identity"] = Value("string")
    return cols


def curation_values(record: Record, columns) -> dict:
    face = record.face or {}
    values = {"face_box": face.get("box"), "face_landmarks": face.get("landmarks"),
              "face_score": face.get("score"), "sharpness": record.scores.get("sharpness"),
              "brightness": record.scores.get("brightness"), "leak_similarity": record.scores.get("leak_similarity"),
              "nearest_reference": (face.get("nearest_reference") or {}).get("id"), "identity": face.get("identity")}
    return {key: values[key] for key in columns}


def row(record: Record, root: Path, provenance: dict | None, names, curation_columns=(), aus=()) -> dict:
    """The released row of a kept record; ``names`` are the classes, ``aus`` the AU names of its ``au`` struct."""
    image = {"bytes": record_file(root, record.image).read_bytes(), "path": Path(record.image).name}
    labelling = labelling_columns(record, names) if record.labelling else {}
    labelling.update(curation_values(record, curation_columns))
    if provenance is None:  # an images source
        return {"image": image, "label": record.label, "sample_id": record.sample_id, "source_file": record.source,
                **labelling}
    return {
        "image": image,
        "label": record.label,
        "au": dict(zip(aus, record.au, strict=True)),
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "seed": record.seed,
        "sample_id": record.sample_id,
        **record.attributes,
        "generator_model": provenance["model"],
        "generator_revision": provenance["revision"],
        "generator_weights_sha256": provenance["weights_sha256"],
        **labelling,
    }


def build_dataset_dict(splits: dict[str, list[Record]], manifest: Manifest, provenance: dict | None, root: Path,
                       cache_dir: Path):
    """A ``DatasetDict`` written through an on-disk Arrow cache (memory does not grow with size)."""
    from datasets import Dataset, DatasetDict, NamedSplit

    feats = features(manifest)
    curation = list(curation_features(manifest))
    aus = tuple(manifest.aus.names) if manifest.images is None else ()
    out = {}
    for name, records in splits.items():
        if not records:
            continue  # an empty split cannot be saved; stats and card show it as 0
        ids = "\n".join(r.sample_id for r in records)
        origin = provenance["weights_sha256"] if provenance else f"images:{manifest.identity()['images']}"
        fingerprint = hashlib.sha256(f"{name}\n{origin}\n{ids}".encode()).hexdigest()[:16]

        def gen(records=records):
            for rec in records:
                yield row(rec, root, provenance, manifest.labels.names, curation, aus)

        ds = Dataset.from_generator(
            gen, features=feats, cache_dir=str(cache_dir), split=NamedSplit(name), fingerprint=fingerprint
        )
        ds.info.description = au_description(manifest)
        ds.info.dataset_name = manifest.name
        ds.info.version = manifest.version
        out[name] = ds
    return DatasetDict(out)
