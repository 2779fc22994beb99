"""The images an evaluation reads: a released build's split, and real labelled sets.

A real set is a dataset saved with ``save_to_disk`` (a ``Dataset`` or a
``DatasetDict``; an image column and a label column: a ``ClassLabel``, class
name strings, or integers with ``--*-label-map``) or an image folder
``class_name/*.jpg`` (class folders named by emotion, or by number with a label
map). Every set becomes an ``ImageSet``: class names in its own order, one
label per sample, and an identity hash for the face-crop cache.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError
from builder.expand.images import IMAGE_SUFFIXES
from evaluation.labels import label_order


@dataclass
class ImageSet:
    """Labelled images: ``labels[i]`` indexes ``names``; ``load(i)`` gives an RGB PIL image."""

    role: str  # "train" (the build), "test", "real train"
    names: tuple[str, ...]
    labels: list[int]
    ids: list[str]
    identity: str  # sha256 of what the images are (for the face-crop cache)
    load: Callable[[int], object]
    describe: dict = field(default_factory=dict)
    landmarks: list | None = None  # per sample: the build's 5 face landmarks, or None
    excluded: dict = field(default_factory=dict)  # reason -> count (samples not usable, e.g. unlabelled)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> list[int]:
        out = [0] * len(self.names)
        for label in self.labels:
            out[label] += 1
        return out


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _pil(image):
    """An upright 8-bit RGB PIL image, read as every stage reads images (``builder.core.images.to_rgb8``)."""
    from builder.core.images import to_rgb8

    image.load()
    return to_rgb8(image)


# -- the build ---------------------------------------------------------------
@dataclass(frozen=True)
class Build:
    """What the evaluation needs from a released build folder."""

    out: Path
    manifest: dict  # build.json's manifest
    fingerprint: str
    stats: dict

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.out.name)


def open_build(out: Path) -> Build:
    """The build in ``out``: released (``.release.json`` matches ``build.json``), with its ``stats.json``."""
    out = Path(out)
    path = out / "build.json"
    if not path.is_file():
        raise UserError(f"'{out}' holds no build (no build.json)",
                        fix="give the --out folder of a build made with `build-dataset MANIFEST --out OUT`")
    recorded = json.loads(path.read_text())
    marker = out / ".release.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != recorded["fingerprint"]:
        raise UserError(f"the build in '{out}' is not released (no up-to-date .release.json)",
                        fix="finish it with `build-dataset MANIFEST --out OUT` or `build-dataset release OUT` first")
    stats_path = out / "stats.json"
    if not stats_path.is_file():
        raise UserError(f"'{out}' has no stats.json", fix="release it again with `build-dataset release OUT`")
    return Build(out, recorded["manifest"], recorded["fingerprint"], json.loads(stats_path.read_text()))


def build_split(build: Build, split: str) -> ImageSet:
    """One split of the build: ``OUT/hf`` (``load_from_disk``), else ``OUT/records/<split>.jsonl`` + images.

    The face landmarks the build found (the ``face_landmarks`` column, or the
    records' ``face``) come along, so the crops are the ones the labellers saw.
    """
    out = build.out
    if (out / "hf" / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(out / "hf"))
        if split not in dd:
            raise UserError(f"the build in '{out}' has no '{split}' split (splits: {', '.join(dd)})",
                            fix="pick one with --train-split")
        ds = dd[split]
        names = tuple(ds.features["label"].names)
        ids = list(ds["sample_id"]) if "sample_id" in ds.column_names else [f"{split}#{i}" for i in range(len(ds))]
        if "face_landmarks" in ds.column_names:
            landmarks = list(ds["face_landmarks"])
        else:  # no faces stage: the label stage's detections are in the records
            records = _records(out / "records" / f"{split}.jsonl")
            landmarks = [(records.get(i) or {}).get("landmarks") for i in ids] if records else None
        images = ds.select_columns(["image"])
        return ImageSet("train", names, list(ds["label"]), ids,
                        _digest({"build": build.fingerprint, "split": split, "ids": ids}),
                        lambda i: _pil(images[i]["image"]),
                        {"source": str(out), "kind": "build", "split": split, "read_from": "hf"}, landmarks)
    path = out / "records" / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"the build in '{out}' has neither hf/ nor records/{split}.jsonl",
                        fix="release it again with `build-dataset release OUT`")
    from builder.core.records import read_jsonl
    from builder.manifest.label_maps import LABEL_MAPS

    rows = list(read_jsonl(path))
    names = LABEL_MAPS[build.manifest["labels"]["label_map"]]

    def load(i: int):
        from PIL import Image

        with Image.open(out / rows[i].image) as im:
            return _pil(im)

    ids = [r.sample_id for r in rows]
    return ImageSet("train", tuple(names), [r.label for r in rows], ids,
                    _digest({"build": build.fingerprint, "split": split, "ids": ids}), load,
                    {"source": str(out), "kind": "build", "split": split, "read_from": "records"},
                    [(r.face or {}).get("landmarks") for r in rows])


def _records(path: Path) -> dict:
    """sample_id -> face dict of a release's records file ({} when absent)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            out[data["sample_id"]] = data.get("face")
    return out


# -- real labelled sets --------------------------------------------------------
@dataclass(frozen=True)
class SetSpec:
    """Where a real labelled set is and how to read its labels (``--test*`` / ``--train-real*`` options)."""

    path: Path
    role: str  # "test" or "real train"
    option: str  # "--test" or "--train-real", for messages
    split: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    label_map: str | None = None
    label_base: int = 0


def open_set(spec: SetSpec) -> ImageSet:
    """A real labelled set: a saved ``datasets`` dataset or an image folder ``class/*.jpg``."""
    path = Path(spec.path)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _open_dataset(spec)
    if path.is_dir():
        return _open_folder(spec)
    raise UserError(f"{spec.option} '{path}' is neither a dataset saved with save_to_disk nor a folder",
                    fix="give a save_to_disk folder (image and label columns) or an image folder class_name/*.jpg")


def _names_from_map(spec: SetSpec, largest: int) -> tuple[str, ...]:
    names = label_order(spec.label_map)
    if largest - spec.label_base >= len(names):
        raise UserError(f"{spec.option}: label {largest} is outside the {len(names)} classes of "
                        f"{spec.option}-label-map '{spec.label_map}' (label base {spec.label_base})",
                        fix=f"give the set's real class order, or set {spec.option}-label-base")
    return names


def _open_dataset(spec: SetSpec) -> ImageSet:
    from datasets import ClassLabel, DatasetDict, load_from_disk

    ds = load_from_disk(str(spec.path))
    split = None
    if isinstance(ds, DatasetDict):
        split = spec.split or ("test" if spec.role == "test" else "train")
        if split not in ds:
            raise UserError(f"{spec.option} '{spec.path}' has no split '{split}' (splits: {', '.join(ds)})",
                            fix=f"pick one with {spec.option}-split")
        ds = ds[split]
    for key, column in (("image-column", spec.image_column), ("label-column", spec.label_column)):
        if column not in ds.column_names:
            raise UserError(f"{spec.option}: column '{column}' is not in '{spec.path}' (columns: "
                            f"{', '.join(ds.column_names)})", fix=f"name it with {spec.option}-{key}")
    feature = ds.features[spec.label_column]
    raw = list(ds[spec.label_column])
    excluded = {}
    if spec.label_map is not None:
        try:
            ints = [int(v) for v in raw]
        except (TypeError, ValueError):
            raise UserError(f"{spec.option}-label-map is for integer labels; column '{spec.label_column}' holds "
                            f"{type(raw[0]).__name__} values", fix=f"drop {spec.option}-label-map") from None
        names = _names_from_map(spec, max(ints, default=0))
        labels = [v - spec.label_base for v in ints]
    elif isinstance(feature, ClassLabel):
        names, labels = tuple(feature.names), [int(v) for v in raw]
    elif all(isinstance(v, str) for v in raw):
        names = tuple(sorted(set(raw)))
        labels = [names.index(v) for v in raw]
    else:
        raise UserError(f"{spec.option}: column '{spec.label_column}' holds numbers without class names",
                        fix=f"give their order with {spec.option}-label-map (e.g. rafdb, fer2013, affectnet7)")
    keep = [i for i, v in enumerate(labels) if v >= 0]  # -1: unlabelled rows
    if len(keep) < len(labels):
        excluded["unlabelled"] = len(labels) - len(keep)
    if not keep:
        raise UserError(f"{spec.option} '{spec.path}' has no labelled row", fix="give a labelled set")
    images = ds.select_columns([spec.image_column])
    column = spec.image_column
    fingerprint = getattr(ds, "_fingerprint", None)
    identity = _digest({"dataset": fingerprint, "rows": len(ds), "split": split, "column": column})
    return ImageSet(spec.role, names, [labels[i] for i in keep], [f"row {i}" for i in keep], identity,
                    lambda k: _pil(images[keep[k]][column]),
                    {"source": str(spec.path), "kind": "dataset", "split": split, "image_column": column,
                     "label_column": spec.label_column, "label_map": spec.label_map}, None, excluded)


def _open_folder(spec: SetSpec) -> ImageSet:
    root = Path(spec.path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[int, str]] = []
    for c, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel.parts):
                files.append((c, rel.as_posix()))
    if not files:
        raise UserError(f"{spec.option} folder '{root}' holds no class_name/image ({', '.join(IMAGE_SUFFIXES)})",
                        fix="put each class's images in a sub-folder named by its emotion (happy/, sad/, ...)")
    if all(c.isdigit() for c in classes):
        if spec.label_map is None:
            raise UserError(f"{spec.option} folder '{root}' names its classes by number ({', '.join(classes)})",
                            fix=f"give their order with {spec.option}-label-map (and {spec.option}-label-base 1 "
                            "for 1-based folders, as RAF-DB's)")
        order = _names_from_map(spec, max(int(c) for c in classes))
        names = tuple(order)
        labels = [int(classes[c]) - spec.label_base for c, _ in files]
    else:
        if spec.label_map is not None:
            raise UserError(f"{spec.option}-label-map is for numbered class folders; '{root}' names them "
                            f"({', '.join(classes)})", fix=f"drop {spec.option}-label-map")
        names = tuple(classes)
        labels = [c for c, _ in files]
    stats = [(root / rel).stat() for _, rel in files]
    identity = _digest({"folder": [(rel, st.st_size, st.st_mtime_ns) for (_, rel), st in zip(files, stats)]})

    def load(i: int):
        from PIL import Image

        with Image.open(root / files[i][1]) as im:
            return _pil(im)

    return ImageSet(spec.role, names, labels, [rel for _, rel in files], identity, load,
                    {"source": str(root), "kind": "folder", "label_map": spec.label_map})
