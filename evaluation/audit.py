"""``build-dataset audit``: what attribute classifiers see in a release, compared with what the manifest asked for.

``audit(Audit(...))`` is the Python API (``builder.api.audit`` and the CLI call it); bad input raises
``builder.core.errors.UserError``. Each ``--classifier [ATTRIBUTE=]MODEL`` is a transformers image-classification
model (a Hub id or a ``save_pretrained`` folder; safetensors only, never ``trust_remote_code``; loaded like the
fidelity encoders, ``evaluation.encoders``): its config's ``id2label`` defines the groups (age ranges, gender
presentation, skin tone or ethnicity groups, as the model defines them). The run:

1. open the release (every split, or ``splits``) and each image's prompted attributes (the records'
   ``attributes``, one per prompt axis; a generated release has one dataset column per axis);
2. match the axis values of ATTRIBUTE (``prompts.axes.ATTRIBUTE``, its weights) to the classifier's labels: the
   user's ``--map ATTRIBUTE:VALUE=LABEL[,LABEL...]``, else the same name (exact, then canonical: case, spaces and
   punctuation ignored, then a few synonyms: man/male, woman/female); a label belongs to at most one value,
   labels no value claims count as '(other)';
3. crop the faces like ``build-dataset evaluate`` (``evaluation.faces``: the build's landmarks, else MTCNN, else a
   centre crop, counted) or feed whole images (``faces='whole'``), and predict each image's group;
4. per attribute, overall, per split and per class: the predicted distribution over the classifier's labels,
   and over the axis values: the share prompted in the release (``asked``), the share predicted (``predicted``),
   the manifest's sampling weights (``manifest``), agreement (the share of images whose predicted label belongs
   to the prompted value) and the total variation distance between asked and predicted (``tvd``: half the
   summed absolute difference of shares; 0 same, 1 disjoint) and between the manifest and predicted
   (``tvd_manifest``). An attribute the manifest did not prompt gets the predicted distribution only.

It writes ``OUT/eval/audit.json``, ``OUT/eval/audit-predictions.jsonl`` (one line per image) and
``OUT/eval/audit.png`` (bars: asked vs predicted per attribute); the report (``cards.report``) shows its tables.
A classifier's groups are its makers' categories, and its errors are part of the gap: read the agreement next to
the classifier's own accuracy.
"""
from __future__ import annotations

import json
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError
from evaluation.attribute_classifier import Classifier, load_classifier

KIND = "fer-synth-audit"
OTHER = "(other)"
FACES = ("crop", "whole")
ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]*$")
SYNONYMS = {"man": "male", "men": "male", "boy": "male", "masculine": "male",
            "woman": "female", "women": "female", "girl": "female", "feminine": "female"}
"""Canonical words counted as the same group when names are matched without ``--map``."""


@dataclass(frozen=True)
class Audit:
    """One audit. ``classifiers``: '[ATTRIBUTE=]MODEL' each (ATTRIBUTE: a prompt axis, e.g. age; guessed from the
    labels when left out); ``maps``: 'ATTRIBUTE:VALUE=LABEL[,LABEL...]' each; ``splits``: the release's splits
    (default: all); ``faces``: 'crop' (aligned like evaluate) or 'whole'; ``command``: how it was started."""

    out: Path
    classifiers: tuple[str, ...]
    maps: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    faces: str = "crop"
    revision: str | None = None
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True
    command: tuple[str, ...] = field(default=())

    def check(self) -> None:
        if not self.classifiers:
            raise UserError("audit needs at least one --classifier",
                            fix="give --classifier ATTRIBUTE=MODEL (e.g. age=nateraw/vit-age-classifier)")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size} is below 1", fix="give --batch-size >= 1")
        if self.faces not in FACES:
            raise UserError(f"faces '{self.faces}' is neither crop nor whole", fix="use crop or whole")
        named = [a for a, _ in (split_spec(s) for s in self.classifiers) if a]
        twice = sorted({a for a in named if named.count(a) > 1})
        if twice:
            raise UserError(f"--classifier names attribute {', '.join(twice)} twice",
                            fix="give one classifier per attribute")


def split_spec(spec: str) -> tuple[str | None, str]:
    """'age=PATH' -> ('age', 'PATH'); 'PATH' -> (None, 'PATH')."""
    head, sep, rest = str(spec).partition("=")
    if sep and ATTRIBUTE.match(head) and rest:
        return head, rest
    return None, str(spec)


def canonical(name: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", str(name).lower()).split()
    return " ".join(SYNONYMS.get(w, w) for w in words)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- what was asked ----------------------------------------------------------------------------------------------
def manifest_axes(manifest: dict) -> dict[str, dict]:
    """axis name -> {'values', 'weights' (normalised)} of the recorded manifest's prompts (template set included)."""
    prompts = manifest.get("prompts")
    if not prompts:
        return {}
    try:
        from builder.manifest import Prompts

        axes = {name: (axis.values, axis.weights) for name, axis in Prompts.model_validate(prompts).all_axes.items()}
    except Exception:  # an older manifest layout: its own axes, as recorded
        axes = {name: (a["values"], a.get("weights")) for name, a in (prompts.get("axes") or {}).items()}
    out = {}
    for name, (values, weights) in axes.items():
        weights = list(weights) if weights else [1.0] * len(values)
        total = sum(weights)
        out[name] = {"values": list(values), "weights": [w / total for w in weights]}
    return out


def prompted(out: Path, split: str, ids: list[str]) -> dict[str, list[str | None]]:
    """attribute -> the prompted value of each sample of ``ids`` (records' ``attributes``; hf columns without
    records); attributes no sample has are absent."""
    path = out / "records" / f"{split}.jsonl"
    by_id: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                by_id[row["sample_id"]] = row.get("attributes") or {}
    names = sorted({k for attrs in by_id.values() for k in attrs})
    return {name: [(by_id.get(i) or {}).get(name) for i in ids] for name in names}


@dataclass
class Plan:
    """One audited attribute: its classifier, the axis it is compared with, and the value -> labels mapping."""

    attribute: str
    spec: str
    classifier: Classifier
    axis: dict | None  # {'values', 'weights'} from the manifest, or None
    values: list[str]  # the prompted values (the axis's, then any others the release holds)
    mapping: dict[str, list[str]] = field(default_factory=dict)  # value -> classifier labels
    how: dict[str, str] = field(default_factory=dict)  # value -> given / exact / canonical

    def group_of(self) -> dict[str, str]:
        return {label: value for value, labels in self.mapping.items() for label in labels}


def parse_maps(maps: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for text in maps:
        attribute, sep, rest = text.partition(":")
        value, eq, labels = rest.partition("=")
        items = [x.strip() for x in labels.split(",") if x.strip()]
        if not (sep and eq and ATTRIBUTE.match(attribute.strip()) and value.strip() and items):
            raise UserError(f"--map '{text}' is not ATTRIBUTE:VALUE=LABEL[,LABEL...]",
                            fix="e.g. --map age:young=0-2,3-9,10-19 (a prompt value, then the classifier labels "
                            "that count as it)")
        out.setdefault(attribute.strip(), {})[value.strip()] = items
    return out


def auto_mapping(values: list[str], labels: tuple[str, ...]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """value -> [label] by exact, then canonical name (each label used once)."""
    mapping, how, used = {}, {}, set()
    for kind, key in (("exact", str), ("canonical", canonical)):
        keyed = {}
        for label in labels:
            keyed.setdefault(key(label), []).append(label)
        for value in values:
            if value in mapping:
                continue
            found = [label for label in keyed.get(key(value), []) if label not in used]
            if len(found) == 1:
                mapping[value], how[value] = found, kind
                used.add(found[0])
    return mapping, how


def plan_attributes(specs: list[tuple[str | None, str, Classifier]], maps: dict, axes: dict,
                    release_values: dict[str, list[str]], manifest_file: str | None = None) -> list[Plan]:
    """The attributes to audit and their mappings; UserError for an unknown attribute, value or label
    (``manifest_file``: where the axes were read, named by the messages about them)."""
    known = sorted(set(axes) | set(release_values))
    plans = []
    for attribute, spec, clf in specs:
        if attribute is None:
            scores = {name: len(auto_mapping(_values(name, axes, release_values), clf.labels)[0]) for name in known}
            best = max(scores.values(), default=0)
            found = [n for n, s in scores.items() if s == best and s > 0]
            if len(found) != 1:
                why = (f"its labels match values of {' and '.join(found)}" if found else
                       f"none of its labels ({', '.join(clf.labels[:6])}) is a value of the release's attributes "
                       f"({', '.join(known) or 'none'})")
                raise UserError(f"--classifier '{spec}': which attribute it audits is unclear: {why}",
                                file=clf.info.get("folder"), fix=f"name it: --classifier ATTRIBUTE={spec} "
                                f"(attributes: {', '.join(known) or 'none; any name audits the predictions only'})")
            attribute = found[0]
        values = _values(attribute, axes, release_values)
        plan = Plan(attribute, spec, clf, axes.get(attribute), values)
        given = maps.get(attribute, {})
        if given and not values:
            raise UserError(f"--map {attribute}:...: the release has no prompted attribute '{attribute}' (the "
                            f"manifest's prompt axes: {', '.join(sorted(axes)) or 'none'})", file=manifest_file,
                            fix="map values of a prompt axis, or drop --map for an attribute not prompted")
        for value, labels in given.items():
            if value not in values:
                raise UserError(f"--map {attribute}:{value}=...: '{value}' is not a value of {attribute} (values: "
                                f"{', '.join(values)})", file=manifest_file,
                                fix=f"use one of the manifest's values of prompts.axes.{attribute}")
            bad = [label for label in labels if label not in clf.labels]
            if bad:
                raise UserError(f"--map {attribute}:{value}=...: {', '.join(repr(b) for b in bad)} "
                                f"{'is not a label' if len(bad) == 1 else 'are not labels'} of classifier '{spec}' "
                                f"(labels: {', '.join(clf.labels)})", file=clf.info.get("folder"),
                                fix="use the classifier's labels exactly as its config's id2label writes them")
        claimed: dict[str, str] = {}
        for value, labels in given.items():
            for label in labels:
                if label in claimed and claimed[label] != value:
                    raise UserError(f"--map {attribute}: label '{label}' is given to both '{claimed[label]}' and "
                                    f"'{value}'", fix="give each classifier label to one value at most")
                claimed[label] = value
        rest = [v for v in values if v not in given]
        free = tuple(label for label in clf.labels if label not in claimed)
        auto, how = auto_mapping(rest, free)
        plan.mapping = {v: (given.get(v) or auto.get(v)) for v in values if v in given or v in auto}
        plan.how = {v: ("given" if v in given else how[v]) for v in plan.mapping}
        plans.append(plan)
    return plans


def _values(attribute: str, axes: dict, release_values: dict[str, list[str]]) -> list[str]:
    values = list(axes.get(attribute, {}).get("values") or [])
    return values + [v for v in release_values.get(attribute, []) if v not in values]


# -- comparison --------------------------------------------------------------------------------------------------
def compare(plan: Plan, asked: list[str | None], predicted: list[int]) -> dict:
    """The distributions, agreement and gaps of one attribute over one set of images (see the module docstring)."""
    labels = plan.classifier.labels
    n = len(predicted)
    counts = Counter(labels[p] for p in predicted)
    out = {"images": n, "predicted_labels": {label: counts.get(label, 0) for label in labels}}
    pairs = [(v, labels[p]) for v, p in zip(asked, predicted) if v is not None]
    if not pairs or not plan.mapping:
        return {**out, "compared_images": 0, "groups": [], "asked": {}, "predicted": {}, "manifest": {},
                "agreement": None, "tvd": None, "tvd_manifest": None,
                "unmapped": dict(Counter(v for v, _ in pairs))}
    group = plan.group_of()
    compared = [(v, label) for v, label in pairs if v in plan.mapping]
    groups = [v for v in plan.values if v in plan.mapping] + ([OTHER] if set(labels) - set(group) else [])
    m = len(compared)
    asked_n = Counter(v for v, _ in compared)
    pred_n = Counter(group.get(label, OTHER) for _, label in compared)
    share = (lambda c: {g: c.get(g, 0) / m if m else 0.0 for g in groups})
    asked_s, pred_s = share(asked_n), share(pred_n)
    manifest = {}
    if plan.axis is not None:
        weights = {v: w for v, w in zip(plan.axis["values"], plan.axis["weights"]) if v in plan.mapping}
        total = sum(weights.values())
        manifest = {g: (weights.get(g, 0.0) / total if total else 0.0) for g in groups}
    agree = sum(label in plan.mapping[v] for v, label in compared)
    confusion = {}
    for v, label in pairs:
        confusion.setdefault(v, Counter())[label] += 1
    return {**out, "compared_images": m, "groups": groups,
            "asked_counts": {g: asked_n.get(g, 0) for g in groups},
            "predicted_counts": {g: pred_n.get(g, 0) for g in groups},
            "asked": asked_s, "predicted": pred_s, "manifest": manifest,
            "agreement": agree / m if m else None,
            "tvd": _tvd(asked_s, pred_s) if m else None,
            "tvd_manifest": _tvd(manifest, pred_s) if m and manifest else None,
            "unmapped": dict(Counter(v for v, _ in pairs if v not in plan.mapping)),
            "confusion": {v: {label: c.get(label, 0) for label in labels} for v, c in confusion.items()}}


def _tvd(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(g, 0.0) - q.get(g, 0.0)) for g in set(p) | set(q))


# -- the run -----------------------------------------------------------------------------------------------------
def audit(args: Audit, log=_log) -> dict:
    """The whole run (see the module docstring); returns the result written to OUT/eval/audit.json."""
    from evaluation.fidelity import _release_sets
    from evaluation.sources import open_build

    args.check()
    started = time.perf_counter()
    seconds = {}
    specs = [split_spec(s) for s in args.classifiers]
    maps = parse_maps(args.maps)
    build = open_build(args.out)
    sets = _release_sets(build, args.splits)
    asked = {s.describe["split"]: prompted(build.out, s.describe["split"], s.ids) for s in sets}
    axes = manifest_axes(build.manifest)
    release_values: dict[str, list[str]] = {}
    for per_split in asked.values():
        for name, column in per_split.items():
            seen = release_values.setdefault(name, [])
            seen += sorted({v for v in column if v is not None and v not in seen})
    seconds["open"] = time.perf_counter() - started

    from evaluation.train import resolve_device

    tick = time.perf_counter()
    device = resolve_device(args.device)
    loaded = [(a, s, load_classifier(s, args.revision, device, log)) for a, s in specs]
    seconds["classifiers"] = time.perf_counter() - tick
    plans = plan_attributes(loaded, maps, axes, release_values, str(build.out / "build.json"))
    audited = {p.attribute for p in plans}
    for attribute in maps:
        if attribute not in audited:
            raise UserError(f"--map {attribute}:...: no --classifier audits '{attribute}' (audited: "
                            f"{', '.join(sorted(audited))})", fix=f"add --classifier {attribute}=MODEL, or drop the "
                            "--map")
    twice = sorted(a for a, n in Counter(p.attribute for p in plans).items() if n > 1)
    if twice:
        raise UserError(f"two classifiers audit attribute {', '.join(twice)}", fix="give one classifier per "
                        "attribute, named: --classifier ATTRIBUTE=MODEL")
    for p in plans:
        unmapped = [v for v in p.values if v not in p.mapping]
        if p.values and not p.mapping:
            log(f"warning: {p.attribute}: no prompted value matches a label of {p.spec} "
                f"({', '.join(p.classifier.labels)}); only its predicted distribution is reported (map them with "
                f"--map {p.attribute}:VALUE=LABEL,...)")
        elif unmapped:
            log(f"warning: {p.attribute}: value(s) {', '.join(unmapped)} match no label of {p.spec}; they are left "
                f"out of agreement and gap (map them with --map {p.attribute}:VALUE=LABEL,...)")

    tick = time.perf_counter()
    predictions, faces = _predict(args, build, sets, plans, device, log)
    seconds["predict"] = time.perf_counter() - tick
    result = _result(args, build, sets, asked, plans, predictions, faces, seconds, started)
    _write(build.out, result, _rows(sets, asked, plans, predictions, faces))
    return result


def _predict(args: Audit, build, sets: list, plans: list[Plan], device: str, log):
    """per split: per attribute a list of (label index or None, probability or None); and the face statuses."""
    from tqdm.auto import tqdm

    from evaluation.faces import Cropper, CropSpec, face_images

    cropper = None
    if args.faces == "crop":
        cropper = Cropper(CropSpec.for_build(build.manifest, align=True), build.out / "eval" / "cache", device, log)
    predictions, faces = {}, {}
    total = sum(len(s) for s in sets)
    with tqdm(total=total, unit="img", desc="audit", disable=not args.progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for imageset in sets:
            split = imageset.describe["split"]
            out = {p.attribute: [] for p in plans}
            status = []
            batch, where = [], []

            def flush():
                if batch:
                    for p in plans:
                        labels, probs = p.classifier.predict(batch)
                        for k, i in enumerate(where):
                            out[p.attribute][i] = (labels[k], probs[k])
                    bar.update(len(batch))
                batch.clear()
                where.clear()

            for i, (image, how) in enumerate(face_images(imageset, cropper)):
                status.append(how)
                for p in plans:
                    out[p.attribute].append((None, None))
                if image is None:
                    bar.update(1)
                    continue
                batch.append(image)
                where.append(i)
                if len(batch) >= args.batch_size:
                    flush()
            flush()
            predictions[split], faces[split] = out, status
    return predictions, faces


def _subset(plan: Plan, asked: dict, predictions: dict, keep) -> dict:
    """``compare`` over the images of every split for which ``keep(split, i)`` holds (and that were read)."""
    a, p = [], []
    for split, per_attr in predictions.items():
        column = asked[split].get(plan.attribute) or [None] * len(per_attr[plan.attribute])
        for i, (label, _) in enumerate(per_attr[plan.attribute]):
            if label is not None and keep(split, i):
                a.append(column[i])
                p.append(label)
    return compare(plan, a, p)


def _result(args, build, sets, asked, plans, predictions, faces, seconds, started) -> dict:
    import torch
    import transformers

    class_of = {s.describe["split"]: [s.names[c] for c in s.labels] for s in sets}
    names = sets[0].names
    attributes = []
    for p in plans:
        overall = _subset(p, asked, predictions, lambda s, i: True)
        per_split = {s: _subset(p, asked, predictions, lambda s_, i, s=s: s_ == s) for s in predictions}
        per_class = {c: _subset(p, asked, predictions, lambda s_, i, c=c: class_of[s_][i] == c) for c in names
                     if any(c in v for v in class_of.values())}
        for part in (*per_split.values(), *per_class.values()):
            part.pop("confusion", None)
        attributes.append({
            "attribute": p.attribute, "classifier": {**p.classifier.info, "given": p.spec},
            "labels": list(p.classifier.labels),
            "axis": None if p.axis is None else {"source": f"prompts.axes.{p.attribute}", **p.axis},
            "prompted": bool(p.values),
            "mapping": p.mapping, "mapping_how": p.how,
            "unmapped_values": [v for v in p.values if v not in p.mapping],
            "labels_counted_as_other": [label for label in p.classifier.labels if label not in p.group_of()],
            "overall": overall, "per_split": per_split, "per_class": per_class})
    seconds["total"] = time.perf_counter() - started
    face_counts = Counter(s for statuses in faces.values() for s in statuses)
    return {
        "kind": KIND,
        "format": 1,
        "command": list(args.command) or ["build-dataset", "audit", "(Python API)"],
        "dataset": {"out": str(build.out), "name": build.name, "version": build.manifest.get("version"),
                    "fingerprint": build.fingerprint, "label_map": build.manifest["labels"]["label_map"],
                    "splits": [s.describe["split"] for s in sets], "read_from": sets[0].describe.get("read_from")},
        "images": sum(len(s) for s in sets),
        "faces": {"mode": args.faces, "counts": dict(sorted(face_counts.items())),
                  "definition": "crop: aligned face crops as build-dataset evaluate makes them (the build's landmarks, "
                  "else MTCNN; no face: a centre crop, counted as no_face); whole: the whole image; either way the "
                  "classifier's own image processor resizes and normalises"},
        "definitions": {
            "asked": "share of the compared images whose prompt had each value (the release, after curation)",
            "manifest": "the manifest's sampling weights of the mapped values, renormalised",
            "predicted": "share of the compared images whose predicted label maps to each value ('(other)': a "
            "label no value claims)",
            "agreement": "share of the compared images whose predicted label is one of its prompted value's labels",
            "tvd": "total variation distance, 0.5 * sum |asked - predicted| over the groups (0 same, 1 disjoint)",
            "tvd_manifest": "the same between the manifest's weights and the predicted shares",
            "compared_images": "readable images whose prompted value maps to at least one classifier label"},
        "attributes": attributes,
        "summary": [{"attribute": a["attribute"], "classifier": a["classifier"]["given"],
                     "agreement": a["overall"]["agreement"], "tvd": a["overall"]["tvd"],
                     "tvd_manifest": a["overall"]["tvd_manifest"], "images": a["overall"]["images"],
                     "compared_images": a["overall"]["compared_images"]} for a in attributes],
        "settings": {"faces": args.faces, "batch_size": args.batch_size, "maps": list(args.maps),
                     "splits": list(args.splits)},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "device": plans[0].classifier.device,
                        "threads": torch.get_num_threads()},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "files": {"json": "audit.json", "predictions": "audit-predictions.jsonl", "figure": "audit.png"},
    }


def _rows(sets, asked, plans, predictions, faces) -> list[dict]:
    rows = []
    for s in sets:
        split = s.describe["split"]
        for i, sample in enumerate(s.ids):
            row = {"split": split, "id": sample, "class": s.names[s.labels[i]], "face": faces[split][i]}
            for p in plans:
                label, prob = predictions[split][p.attribute][i]
                row[p.attribute] = {"prompted": (asked[split].get(p.attribute) or [None] * len(s))[i],
                                    "predicted": None if label is None else p.classifier.labels[label],
                                    "probability": prob}
            rows.append(row)
    return rows


def figure(result: dict, path: Path) -> None:
    """One panel per attribute: manifest weights, asked (prompted in the release) and predicted shares per group;
    an attribute the manifest did not prompt: the predicted shares of the classifier's labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = result["attributes"]
    widths = [max(3.0, 0.9 * len(a["overall"]["groups"] or a["labels"]) + 1.0) for a in attrs]
    fig, axes = plt.subplots(1, len(attrs), figsize=(sum(widths), 3.4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, a in zip(axes[0], attrs):
        o = a["overall"]
        if o["groups"]:
            groups = o["groups"]
            series = [("manifest", o["manifest"], "#c7c7c7"), ("asked", o["asked"], "#4c72b0"),
                      ("predicted", o["predicted"], "#dd8452")]
            series = [s for s in series if s[1]]
            width = 0.8 / len(series)
            for k, (name, values, colour) in enumerate(series):
                ax.bar([g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))],
                       [values.get(g, 0.0) for g in groups], width, label=name, color=colour)
            title = (f"{a['attribute']}: agreement {100 * o['agreement']:.0f}%, TVD {o['tvd']:.2f}"
                     if o["agreement"] is not None else a["attribute"])
        else:
            groups = a["labels"]
            n = max(1, o["images"])
            ax.bar(range(len(groups)), [o["predicted_labels"][g] / n for g in groups], 0.6, label="predicted",
                   color="#dd8452")
            title = f"{a['attribute']} (not prompted)"
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of images", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary(result: dict) -> str:
    parts = [f"{s['attribute']}: agreement {_pct(s['agreement'])}, TVD {_num(s['tvd'])}"
             if s["agreement"] is not None else f"{s['attribute']}: predicted only" for s in result["summary"]]
    return (f"audit of {result['images']} images ({result['faces']['mode']}): " + "; ".join(parts)
            + f" -> {Path(result['dataset']['out']) / 'eval' / 'audit.json'}")


def _write(out: Path, result: dict, rows: list[dict]) -> None:
    from builder.core.build_folder import lock_build_folder
    from builder.core.shards import write_durably

    folder = out / "eval"
    with lock_build_folder(out):
        folder.mkdir(exist_ok=True)
        write_durably(folder / "audit-predictions.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        figure(result, folder / "audit.png")
        write_durably(folder / "audit.json", json.dumps(result, indent=1) + "\n")
