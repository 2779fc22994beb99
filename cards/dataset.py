"""The released Hugging Face dataset: features and rows built from kept records."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builder.manifest import Manifest
from builder.records import Record


def au_description(manifest: Manifest) -> str:
    """Dataset-info description; its last line is JSON with the AU order of the 'au' column (none for
    an images source, whose images have no AU targets)."""
    if manifest.images is not None:
        meta = {"au_names": [], "source": "images"}
        return f"Pseudo-labelled facial expression dataset '{manifest.name}' {manifest.version}.\n" + json.dumps(meta)
    meta = {"au_names": list(manifest.aus.names), "au_set": manifest.aus.au_set, "au_scale": "FACS intensity 0-5"}
    return f"Synthetic facial expression dataset '{manifest.name}' {manifest.version}.\n" + json.dumps(meta)


def au_names_from_info(description: str) -> list[str]:
    """Read the AU order back from a released dataset's ``info.description``."""
    return json.loads(description.strip().splitlines()[-1])["au_names"]


def features(manifest: Manifest):
    from datasets import ClassLabel, Features, Image, List, Value

    cols = {"image": Image(), "label": ClassLabel(names=list(manifest.labels.names))}
    if manifest.images is not None:
        cols.update({"sample_id": Value("string"), "source_file": Value("string")})
    else:
        cols.update({
            "au": List(Value("float32"), length=len(manifest.aus.names)),
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


def row(record: Record, root: Path, provenance: dict | None, names, curation_columns=()) -> dict:
    image = {"bytes": (root / record.image).read_bytes(), "path": Path(record.image).name}
    labelling = labelling_columns(record, names) if record.labelling else {}
    labelling.update(curation_values(record, curation_columns))
    if provenance is None:  # an images source
        return {"image": image, "label": record.label, "sample_id": record.sample_id, "source_file": record.source,
                **labelling}
    return {
        "image": image,
        "label": record.label,
        "au": record.au,
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
    out = {}
    for name, records in splits.items():
        if not records:
            continue  # an empty split cannot be saved; stats and card show it as 0
        ids = "\n".join(r.sample_id for r in records)
        origin = provenance["weights_sha256"] if provenance else f"images:{manifest.identity()['images']}"
        fingerprint = hashlib.sha256(f"{name}\n{origin}\n{ids}".encode()).hexdigest()[:16]

        def gen(records=records):
            for rec in records:
                yield row(rec, root, provenance, manifest.labels.names, curation)

        ds = Dataset.from_generator(
            gen, features=feats, cache_dir=str(cache_dir), split=NamedSplit(name), fingerprint=fingerprint
        )
        ds.info.description = au_description(manifest)
        ds.info.dataset_name = manifest.name
        ds.info.version = manifest.version
        out[name] = ds
    return DatasetDict(out)
