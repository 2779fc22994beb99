"""Review a release in the FiftyOne App, and read the reviewer's tags back.

``review_dataset(out)`` creates or updates one persistent FiftyOne dataset per build (named
``fer-synth/<manifest name>-<fingerprint[:8]>``), keyed by ``sample_id``: a rerun updates every field,
adds what is new, deletes samples the release no longer has, and keeps the tags a reviewer set. Every
released sample (``OUT/records/<split>.jsonl``) and every dropped one (``OUT/rejected/<stage>.jsonl``,
tagged ``rejected`` and ``rejected:<stage>``) is in it; the fields are listed in ``FIELDS``. Saved views
(rules in ``dataset.info["views"]``): ``low-confidence``, ``disagreement``, ``high-leak-similarity``,
``rejected`` and ``class-<name>`` per class.

``collect_review(out)`` reads the reviewer's tags back into ``OUT/review.json``:

- ``reject`` -> ``"reject"``;
- ``relabel:<class>`` -> ``"relabel:<class>"`` (a class of the build's label set, else ``UserError``);
- both on one sample: ``reject`` wins, with a warning; other tags are ignored.

``build-dataset release OUT`` applies that file as its last global stage (``curation.whole_set.review``).
The database and App processes are handled by ``cards.review_app``.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from builder.core.build_folder import require_release
from builder.core.errors import OutputDirError, UserError
from builder.core.paths import record_file
from builder.core.records import Record, read_jsonl

PREFIX = "fer-synth/"
REJECT = "reject"
RELABEL = "relabel:"
AUTO_TAG = "rejected"  # tags the review sets itself: 'rejected' and 'rejected:<stage>'
LOW_CONFIDENCE_MARGIN = 0.1
LEAK_FRACTION = 0.9  # of the leak threshold
LEAK_TOP = 0.1  # top decile of leak similarity

FIELDS = {
    "sample_id": "the record's id (unique; the key a rerun updates by)",
    "index": "sample index in the manifest",
    "split": "released split, None for a rejected sample",
    "label_name": "the sample's class (after the label stage; empty for an unlabelled image)",
    "ground_truth": "Classification: the target (prompted) class; None for existing images",
    "predictions": "Classification: the labelling's final class, confidence = pooled probability",
    "expert_<name>": "Classification per labeller (experts, FERAnno): argmax class, confidence = its probability",
    "agreement": "labelling agreement", "disagreement": "labellers' top classes differ or agreement < 1",
    "disposition": "labelling disposition (confirmed, relabelled, labelled, rejected, reviewer_relabelled)",
    "au": "AU intensity targets as named float sub-fields (au.AU1, au.AU12...), like the released 'au' column; "
          "their order in dataset.info['au_names']",
    "prompt": "generation prompt", "seed": "generator seed", "source": "the existing image it came from",
    "<attribute>": "each demographic/prompt axis of the manifest as a string field",
    "<score>": "each stage measurement in record.scores (leak_similarity, sharpness, brightness, face_score...)",
    "nearest_reference": "id of the nearest reference face (identity-leak gate)",
    "nearest_reference_source": "its source", "identity": "identity cluster (sample id of its first face)",
    "face": "Detection: the main face box, confidence = detector score", "face_landmarks": "Keypoints: 5 points",
    "face_count": "faces found",
    "duplicate_of": "dedupe rejects: the sample that stayed", "duplicate_of_reference": "...or the reference image",
    "duplicate_group": "sample id of the kept copy, on it and on its duplicates",
    "drop_stage": "stage that dropped the sample", "drop_reason": "its reason", "drop_detail": "its detail",
}
RESERVED = {"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at",
            "dataset_id", "frames"}
OWN = {name for name in FIELDS if not name.startswith(("<", "expert_"))}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Release:
    """What a finished build folder gives the review."""

    out: Path
    manifest: object
    fingerprint: str
    stats: dict
    released: dict  # split -> list[Record]
    rejected: list

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.manifest.labels.names)


def build_manifest(out: Path):
    """(manifest, fingerprint) recorded in ``out/build.json``. Unlike a resumed build, the images source is
    not listed again: reviewing does not need it, so the review works from any directory."""
    from builder.manifest.recorded import recorded_manifest

    manifest, fingerprint, _ = recorded_manifest(out)
    if manifest.needs_listing():
        raise OutputDirError(f"'{out}' was built by an older build-dataset that did not record its images listing",
                             fix="run the build once with this version (`build-dataset MANIFEST --out OUT`: it "
                             "resumes, records the listing and changes nothing else), then review")
    return manifest, fingerprint


def dataset_name(out: Path) -> str:
    manifest, fingerprint = build_manifest(out)
    return f"{PREFIX}{manifest.name}-{fingerprint[:8]}"


def load_release(out: Path) -> Release:
    """The released and rejected records of a finished release (``OUT/records``, ``OUT/rejected``)."""
    out = Path(out).resolve()
    manifest, fingerprint = build_manifest(out)
    require_release(out, fingerprint)
    if not (out / "records").is_dir():
        raise OutputDirError(f"'{out}' has no records/ (released by an older build-dataset)",
                             fix="release it again: build-dataset release OUT --no-review")
    order = list(manifest.output.splits)
    files = sorted((out / "records").glob("*.jsonl"),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))
    released = {p.stem: list(read_jsonl(p)) for p in files}
    rejected = [r for p in sorted((out / "rejected").glob("*.jsonl")) for r in read_jsonl(p)]
    stats = json.loads((out / "stats.json").read_text())
    return Release(out, manifest, fingerprint, stats, released, rejected)


def _field(name: str, taken: set[str], prefix: str) -> str:
    clean = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not clean or not clean[0].isalpha() or clean in RESERVED or clean in taken:
        clean = prefix + clean
    return clean


class _Layout:
    """Field names for a release's attributes, scores and labellers (collision-free, stable per build)."""

    def __init__(self, release: Release):
        records = [r for rs in release.released.values() for r in rs] + release.rejected
        taken = set(OWN) | RESERVED
        self.attributes = {}
        for key in sorted({k for r in records for k in r.attributes}):
            self.attributes[key] = _field(key, taken, "attr_")
            taken.add(self.attributes[key])
        self.scores = {}
        for key in sorted({k for r in records for k in r.scores}):
            self.scores[key] = key if key == "leak_similarity" else _field(key, taken, "score_")
            taken.add(self.scores[key])
        labellers = sorted({n for r in records if r.labelling for n in r.labelling.get("experts", {})})
        self.experts = {n: _field(f"expert_{n}", taken, "x_") for n in labellers}
        related = {r.sample_id: r.drop.related for r in records if r.drop and r.drop.stage == "dedupe"
                   and r.drop.related}
        self.keeper = {sid: rel["duplicate_of"] for sid, rel in related.items() if "duplicate_of" in rel}
        self.reference = {sid: rel["reference"] for sid, rel in related.items() if "reference" in rel}


def _fields(record: Record, split: str | None, release: Release, layout: _Layout, groups: set[str]) -> dict:
    import fiftyone as fo

    names = release.names
    lab = record.labelling or {}
    target = lab.get("target") if record.labelling else (record.label_name or None)
    f = {"sample_id": record.sample_id, "index": record.index, "split": split,
         "label_name": record.label_name or None,
         "ground_truth": fo.Classification(label=target) if target else None,
         "predictions": (fo.Classification(label=lab["final"], confidence=float(lab["confidence"]))
                         if record.labelling else None),
         "agreement": float(lab["agreement"]) if record.labelling else None,
         "disposition": lab.get("disposition"),
         "au": _au(record, release), "prompt": record.prompt or None, "seed": record.seed,
         "source": record.source}
    tops = set()
    for name, field in layout.experts.items():
        probs = lab.get("experts", {}).get(name)
        if probs:
            best = max(range(len(probs)), key=probs.__getitem__)
            tops.add(best)
            f[field] = fo.Classification(label=names[best], confidence=float(probs[best]))
        else:
            f[field] = None
    f["disagreement"] = (len(tops) > 1 or float(lab["agreement"]) < 1.0) if record.labelling else None
    for key, field in layout.attributes.items():
        f[field] = record.attributes.get(key)
    for key, field in layout.scores.items():
        f[field] = float(record.scores[key]) if key in record.scores else None
    face = record.face or {}
    nearest = face.get("nearest_reference") or {}
    f.update(nearest_reference=nearest.get("id"), nearest_reference_source=nearest.get("source"),
             identity=face.get("identity"), face_count=face.get("count"),
             duplicate_of=layout.keeper.get(record.sample_id),
             duplicate_of_reference=layout.reference.get(record.sample_id),
             drop_stage=record.drop.stage if record.drop else None,
             drop_reason=record.drop.reason if record.drop else None,
             drop_detail=record.drop.detail if record.drop else None)
    f["duplicate_group"] = f["duplicate_of"] or (record.sample_id if record.sample_id in groups else None)
    f["face"], f["face_landmarks"] = _face_labels(face, record_file(release.out, record.image) if record.image
                                                  else None)
    return f


def _face_labels(face: dict, image: Path | None):
    """(Detection, Keypoints) of the main face in relative coordinates, or (None, None)."""
    import fiftyone as fo

    if not face.get("box") or image is None:
        return None, None
    try:
        from PIL import Image

        with Image.open(image) as im:
            width, height = im.size
    except Exception:
        return None, None
    x1, y1, x2, y2 = face["box"]
    box = [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height]
    det = fo.Detection(label="face", bounding_box=box, confidence=face.get("score"))
    points = [(x / width, y / height) for x, y in face.get("landmarks") or []]
    return det, (fo.Keypoints(keypoints=[fo.Keypoint(label="face", points=points)]) if points else None)


def au_names(release: Release) -> list[str]:
    """The AU names of the build's ``au`` targets (none for an images source, whose records have no AUs)."""
    m = release.manifest
    return list(m.aus.names) if m.images is None and m.aus is not None else []


def _au(record: Record, release: Release):
    """The record's AU targets as a document of named floats, as in the released ``au`` struct (None without)."""
    import fiftyone as fo

    names = au_names(release)
    if not names or not record.au:
        return None
    return fo.DynamicEmbeddedDocument(**{name: float(v) for name, v in zip(names, record.au, strict=True)})


def _declare(dataset, layout: _Layout, aus: list[str] = ()) -> None:
    """Declare every field with its type up front, so None values and a rerun's updates are always valid.

    ``au`` is a document with one float per AU (``aus``); a dataset an older review made with ``au`` as a list of
    floats gets the field declared anew (every sample's value is rewritten by the same run)."""
    import fiftyone as fo

    string, floats = (fo.StringField, {}), (fo.FloatField, {})

    def doc(kind):
        return fo.EmbeddedDocumentField, {"embedded_doc_type": kind}

    schema = {"sample_id": string, "index": (fo.IntField, {}), "split": string, "label_name": string,
              "ground_truth": doc(fo.Classification), "predictions": doc(fo.Classification),
              "agreement": floats, "disagreement": (fo.BooleanField, {}), "disposition": string,
              "au": doc(fo.DynamicEmbeddedDocument), "prompt": string, "seed": (fo.IntField, {}),
              "source": string, "nearest_reference": string, "nearest_reference_source": string,
              "identity": string, "face_count": (fo.IntField, {}), "face": doc(fo.Detection),
              "face_landmarks": doc(fo.Keypoints), "duplicate_of": string, "duplicate_of_reference": string,
              "duplicate_group": string, "drop_stage": string, "drop_reason": string, "drop_detail": string}
    schema.update({f: doc(fo.Classification) for f in layout.experts.values()})
    schema.update({f: string for f in layout.attributes.values()})
    schema.update({f: floats for f in layout.scores.values()})
    schema.update({f"au.{name}": floats for name in aus})  # after "au": the document is declared first
    have = dataset.get_field_schema(flat=True)
    if "au" in have and not isinstance(have["au"], fo.EmbeddedDocumentField):
        dataset.delete_sample_field("au")
        have = dataset.get_field_schema(flat=True)
    for name, (ftype, kwargs) in schema.items():
        if name not in have:
            dataset.add_sample_field(name, ftype, **kwargs)


def _tags(record: Record) -> list[str]:
    return [AUTO_TAG, f"{AUTO_TAG}:{record.drop.stage}"] if record.drop else []


def _is_auto(tag: str) -> bool:
    return tag == AUTO_TAG or tag.startswith(AUTO_TAG + ":")


def _filepath(record: Record, out: Path) -> str:
    # a sample without an image (unreadable input) still needs a path: a missing file shows as broken
    return str(record_file(out, record.image)) if record.image else str(out / "missing" / f"{record.sample_id}.png")


def review_dataset(out: Path, name: str | None = None, log=_stderr):
    """Create or update the build's FiftyOne dataset (see the module docstring); return it."""
    from cards.review_app import connect

    release = load_release(out)
    name = name or f"{PREFIX}{release.manifest.name}-{release.fingerprint[:8]}"
    connect(log)
    import fiftyone as fo

    layout = _Layout(release)
    groups = set(layout.keeper.values())
    wanted = {}
    for split, records in release.released.items():
        for record in records:
            wanted[record.sample_id] = (record, split)
    for record in release.rejected:
        wanted.setdefault(record.sample_id, (record, None))

    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name)
    other = dataset.info.get("fingerprint")
    if other != release.fingerprint and (other is not None or len(dataset)):
        whose = f"another build (fingerprint {other[:12]})" if other else "no build-dataset review"
        raise UserError(f"FiftyOne dataset '{name}' exists and belongs to {whose}",
                        fix="pick another --name, or delete that dataset")
    dataset.info["fingerprint"] = release.fingerprint  # first, so an interrupted first run can be rerun
    dataset.persistent = True
    dataset.save()
    _declare(dataset, layout, au_names(release))
    dataset.create_index("sample_id", unique=True)
    existing = set(dataset.values("sample_id")) if len(dataset) else set()
    stale = existing - set(wanted)
    if stale:
        dataset.delete_samples(dataset.match(fo.ViewField("sample_id").is_in(sorted(stale))))
    updated = 0
    if existing - stale:
        for sample in dataset.match(fo.ViewField("sample_id").is_in(sorted(existing - stale))).iter_samples(
                autosave=True, progress=False):
            record, split = wanted[sample.sample_id]
            sample.filepath = _filepath(record, release.out)
            for key, value in _fields(record, split, release, layout, groups).items():
                sample[key] = value
            sample.tags = [t for t in sample.tags if not _is_auto(t)] + _tags(record)
            updated += 1
    new = [fo.Sample(filepath=_filepath(record, release.out), tags=_tags(record),
                     **_fields(record, split, release, layout, groups))
           for sid, (record, split) in sorted(wanted.items(), key=lambda kv: kv[1][0].index) if sid not in existing]
    if new:
        dataset.add_samples(new, progress=False)
    dataset.default_classes = list(release.names)
    dataset.info.update(_info(release, layout))
    dataset.save()
    views = save_views(dataset, release)
    dataset.info["views"] = views
    dataset.save()
    dataset.compute_metadata(progress=False, warn_failures=False)
    log(f"FiftyOne dataset '{name}': {len(dataset)} samples ({len(new)} added, {updated} updated, "
        f"{len(stale)} removed; {len(dataset.match_tags(AUTO_TAG))} rejected); saved views: {', '.join(views)}")
    return dataset


def _info(release: Release, layout: _Layout) -> dict:
    m = release.manifest
    return {"build": str(release.out), "fingerprint": release.fingerprint, "manifest": m.name, "version": m.version,
            "label_names": list(release.names), "au_names": au_names(release),
            "attributes": layout.attributes, "scores": layout.scores, "labellers": layout.experts,
            "columns": release.stats.get("columns", {}),  # what each released column holds, as the stages declare it
            "review_tags": {REJECT: "drop the sample", f"{RELABEL}<class>": "give it this class: "
                            + ", ".join(release.names)}}


def save_views(dataset, release: Release) -> dict[str, str]:
    """(Re)save the review views; return name -> rule."""
    from fiftyone import ViewField as F

    views = {}

    def save(name, view, rule):
        dataset.save_view(name, view, description=rule, overwrite=True)
        views[name] = rule

    labelling = release.manifest.labelling
    if labelling is not None:
        cut = round(labelling.min_confidence + LOW_CONFIDENCE_MARGIN, 6)
        low = dataset.match((F("predictions") != None) & (F("predictions.confidence") < cut))  # noqa: E711
        save("low-confidence", low.sort_by("predictions.confidence"),
             f"labelled samples with confidence < {cut:g} (labelling.min_confidence + {LOW_CONFIDENCE_MARGIN:g})")
        save("disagreement", dataset.match(F("disagreement") == True).sort_by("agreement"),  # noqa: E712
             "labellers' top classes differ, or agreement < 1")
    sims = sorted(s for s in dataset.values("leak_similarity") if s is not None and s >= 0) \
        if "leak_similarity" in dataset.get_field_schema() else []
    if sims:
        threshold = (release.stats.get("identity_leak") or {}).get("threshold")
        top = sims[min(len(sims) - 1, int(len(sims) * (1 - LEAK_TOP)))]
        cut = min(top, LEAK_FRACTION * threshold) if threshold else top
        rule = f"leak_similarity >= {cut:.4f} (top {LEAK_TOP:.0%} of the judged faces" + (
            f", or >= {LEAK_FRACTION:g} x the threshold {threshold:g})" if threshold else ")")
        high = dataset.match((F("leak_similarity") != None) & (F("leak_similarity") >= cut))  # noqa: E711
        save("high-leak-similarity", high.sort_by("leak_similarity", reverse=True), rule)
    save("rejected", dataset.match_tags(AUTO_TAG), "samples a stage dropped (tag 'rejected')")
    for name in release.names:
        save(f"class-{_slug(name)}", dataset.match(F("label_name") == name), f"label_name == '{name}'")
    return views


def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", name.lower()).strip("-") or "class"


def collect_review(out: Path | str, name: str | None = None, log=_stderr) -> dict[str, str]:
    """Read the reviewer's tags from the build's FiftyOne dataset into ``OUT/review.json``; return the decisions.

    ``name``: the dataset (default: the one ``build-dataset review OUT`` made for this build). Decisions are
    ``{sample_id: "reject" | "relabel:<class>"}``, sorted by sample id; the file is
    ``{"dataset": name, "decisions": ...}``, written atomically. Raises ``UserError`` when the dataset does
    not exist or belongs to another build, and for an unknown class or two different relabel tags on one
    sample (naming the sample and the valid classes).
    """
    from cards.review_app import connect
    from curation.whole_set.review import (
        build_sample_ids,
        check_sample_ids,
        write_review,
    )

    out = Path(out)
    manifest, fingerprint = build_manifest(out)
    names = tuple(manifest.labels.names)
    name = name or f"{PREFIX}{manifest.name}-{fingerprint[:8]}"
    connect(log)
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise UserError(f"no FiftyOne dataset '{name}' to read review tags from",
                        fix=f"run `build-dataset review {out}` and tag samples in the App (or give --name)")
    dataset = fo.load_dataset(name)
    other = dataset.info.get("fingerprint")
    if other != fingerprint:
        raise UserError(f"FiftyOne dataset '{name}' belongs to another build (fingerprint {str(other)[:12]}, this "
                        f"build {fingerprint[:12]})", fix="give the --name of this build's review dataset")
    decisions = {}
    for sample_id, tags in sorted(zip(*dataset.values(["sample_id", "tags"]))):
        relabels = sorted({t[len(RELABEL):].strip() for t in tags if t.startswith(RELABEL)})
        for cls in relabels:
            if cls not in names:
                raise UserError(f"sample {sample_id} in FiftyOne dataset '{name}' is tagged '{RELABEL}{cls}', "
                                f"but '{cls}' is not a class of this dataset",
                                fix=f"retag it with relabel:<class>, one of: {', '.join(names)}")
        if REJECT in tags:
            if relabels:
                log(f"warning: sample {sample_id} is tagged both '{REJECT}' and "
                    f"{', '.join(RELABEL + c for c in relabels)}: it is rejected")
            decisions[sample_id] = REJECT
        elif len(relabels) > 1:
            raise UserError(f"sample {sample_id} in FiftyOne dataset '{name}' has two relabel tags: "
                            f"{', '.join(RELABEL + c for c in relabels)}", fix="keep one of them")
        elif relabels:
            decisions[sample_id] = RELABEL + relabels[0]
    check_sample_ids(decisions, build_sample_ids(manifest), f"FiftyOne dataset '{name}'")
    target = write_review(out, decisions, name, "fiftyone")
    counts = Counter(d.split(":")[0] for d in decisions.values())
    log(f"review decisions from '{name}': {counts.get('reject', 0)} reject, {counts.get('relabel', 0)} relabel "
        f"-> {target}")
    return decisions
