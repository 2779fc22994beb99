"""Sample specs of an ``images`` source: which existing images a build labels, in a fixed order.

A folder is listed in sorted relative-path order; a saved ``datasets`` dataset by row. Every entry of the
folder the listing leaves out is counted under a reason (``SKIP_REASONS``): hidden files and folders,
sub-folders when ``recursive`` is false, files of another format, dangling links, links that resolve
outside the folder (unless ``follow_links_outside``), links that loop, and entries that are not files or
cannot be read. Linked folders are entered like folders.

The listing's sha256 (paths and byte sizes, or the dataset's fingerprint and row count) is part of the
build's identity, so a build resumes only over the same images. It also covers the counts of the
``REPORTED`` skip reasons when there are any (a folder that skips nothing keeps the sha256 it always had);
hidden entries and unread sub-folders are the documented behaviour, counted but not part of it, so a
viewer's ``.DS_Store`` appearing mid-build does not make it another build. Sample ``i`` is the ``i``-th
listed image; its class is unknown (``label`` -1) until the labellers give it one.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from builder.core.errors import ManifestError, OutputDirError
from builder.core.listed_images import inside
from builder.core.records import Record
from builder.manifest import Listing, Manifest
from builder.manifest.label_maps import class_index
from builder.manifest.listing import REPORTED

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def listed(manifest: Manifest, file: str | None = None) -> Manifest:
    """``manifest`` knowing its images source's listing, read from disk now (the manifest itself reads no disk);
    a generation manifest, or one already listed, as is. A missing or empty source is a ``ManifestError`` naming
    ``file`` (the manifest)."""
    if not manifest.needs_listing():
        return manifest
    try:
        return manifest.with_listing(list_images(manifest.collection))
    except ManifestError as exc:
        exc.file = file or exc.file
        raise


def list_images(spec) -> Listing:
    """The listing of an ``ImagesSource`` or ``EditSource``, read from disk now."""
    return _list_folder(spec) if spec.folder is not None else _list_dataset(spec)


def section(spec) -> str:
    """The manifest section of a collection: 'images' or 'edit'."""
    return "edit" if hasattr(spec, "sources_are_synthetic") else "images"


def refuse_out_in_source(manifest, out) -> None:
    """Refuse a build folder ``out`` inside the images source's folder: its own files would become source
    images of the next run (a changed listing), and a source folder is not a place to write."""
    spec = manifest.collection
    if spec is None or spec.folder is None or out is None or not inside(Path(out), Path(spec.folder)):
        return
    raise OutputDirError(f"--out is inside {section(spec)}.folder '{spec.folder}': the build would write its images into "
                         "the folder it lists, and the next run would list them as sources", file=str(out),
                         fix=f"choose an --out folder that is not inside '{spec.folder}' (or move the images to "
                         "a folder of their own); nothing was written")


def _list_folder(spec) -> Listing:
    root = Path(spec.folder)
    if not root.is_dir():
        raise ManifestError(f"{section(spec)}.folder '{root}' is not a folder", fix=f"point {section(spec)}.folder at a folder of face "
                            "images (paths are relative to the directory you run build-dataset from)")
    found, skipped, examples = _walk(root, spec.recursive, spec.follow_links_outside)
    paths = sorted(found)
    if not paths:
        why = f"; skipped: {_summary(skipped, examples)}" if skipped else ""
        raise ManifestError(f"{section(spec)}.folder '{root}' holds no image ({', '.join(IMAGE_SUFFIXES)}){why}",
                            fix=_empty_fix(skipped, section(spec)))
    counts = tuple(sorted(skipped.items()))
    labels = _folder_labels(spec, root, paths)
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(f"{rel}\t{found[rel]}\n".encode())
    for reason, n in counts:
        if reason in REPORTED:
            digest.update(f"skipped\t{reason}\t{n}\n".encode())
    for rel, label in zip(paths, labels):  # only with images.labels: folders without keep their sha256
        digest.update(f"label\t{rel}\t{label}\n".encode())
    return Listing("folder", str(root), len(paths), digest.hexdigest(), tuple(paths), counts, labels)


def _folder_labels(spec, root: Path, paths: list[str]) -> tuple[str, ...]:
    """Each listed image's own label: its folder's name, or its row of the labels CSV ('' when it has none)."""
    labels = getattr(spec, "labels", "none")  # an edit source has none
    if labels == "folder-names":
        return tuple(Path(rel).parent.name for rel in paths)
    if labels == "none":
        return ()
    import csv

    table = Path(spec.labels.csv)
    if not table.is_file():
        raise ManifestError(f"images.labels.csv '{table}' is not a file", fix="give a CSV of file,label rows (paths "
                            "relative to images.folder)")
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"images.labels.csv '{table}' cannot be read ({exc})", fix="save it as UTF-8 CSV of "
                            "file,label rows") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "label"]:
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows, start=1) if len(row) < 2]
    if bad:
        raise ManifestError(f"images.labels.csv '{table}': row {bad[0]} has no label", fix="write file,label on "
                            "every row")
    by_file = {Path(row[0].strip()).as_posix(): row[1].strip() for row in rows}
    outside = [name for name in by_file if Path(name).is_absolute() or ".." in Path(name).parts]
    if outside:
        raise ManifestError(f"images.labels.csv '{table}' names files outside images.folder: {outside[0]}",
                            fix="give paths relative to images.folder, without '..'")
    return tuple(by_file.get(rel, "") for rel in paths)


def _walk(root: Path, recursive: bool, follow_outside: bool) -> tuple[dict[str, int], Counter, dict[str, str]]:
    """(relative path -> byte size of each image, skip counts per reason, one example path per reason)."""
    real_root = root.resolve()
    found: dict[str, int] = {}
    skipped: Counter = Counter()
    examples: dict[str, str] = {}

    def skip(reason: str, rel: str) -> None:
        skipped[reason] += 1
        examples.setdefault(reason, rel)

    stack = [(root, "", frozenset({real_root}))]  # folder, its relative prefix, the real folders above it
    while stack:
        folder, prefix, above = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            skip("unreadable_entry", prefix.rstrip("/") or ".")
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                skip("hidden", rel)
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    if not path.exists():
                        skip("dangling_link", rel)
                        continue
                    if not follow_outside and not inside(path, real_root):
                        skip("link_outside_folder", rel)
                        continue
                if entry.is_dir():
                    real = path.resolve()
                    if not recursive:
                        skip("subfolder", rel)
                    elif real in above:
                        skip("link_loop", rel)
                    else:
                        stack.append((path, rel + "/", above | {real}))
                elif not entry.is_file():
                    skip("not_a_file", rel)
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    skip("unsupported_format", rel)
                else:
                    found[rel] = entry.stat().st_size
            except (OSError, RuntimeError):  # RuntimeError: a link loop found by resolve()
                skip("link_loop" if entry.is_symlink() else "unreadable_entry", rel)
    return found, skipped, examples


def _summary(skipped: Counter, examples: dict[str, str]) -> str:
    return ", ".join(f"{n} {reason} (e.g. {examples[reason]})" for reason, n in sorted(skipped.items()))


def _empty_fix(skipped: Counter, where: str = "images") -> str:
    fix = "put the images there"
    if skipped.get("subfolder"):
        fix += f", or set {where}.recursive: true"
    if skipped.get("link_outside_folder"):
        fix += f", or set {where}.follow_links_outside: true to read the files its links point to outside it"
    if skipped.get("unsupported_format"):
        fix += f"; convert other formats to one of {', '.join(IMAGE_SUFFIXES)}"
    return fix


def open_dataset(spec):
    """The dataset split of an ``ImagesSource`` (memory-mapped), checked for the image column."""
    from builder.core.saved_datasets import open_split

    return open_split(spec.dataset, spec.split, {"image_column": spec.image_column}, section(spec),
                      error=ManifestError)


def _list_dataset(spec) -> Listing:
    ds = open_dataset(spec)
    if len(ds) == 0:
        raise ManifestError(f"{section(spec)}.dataset '{spec.dataset}' has no rows", fix="give a dataset with images")
    ident = {"fingerprint": ds._fingerprint, "rows": len(ds), "split": spec.split, "column": spec.image_column}
    labels = people = ()
    person = getattr(getattr(spec, "source_identity", None), "column", None)
    if person is not None:
        if person not in ds.column_names:
            raise ManifestError(f"edit.source_identity.column '{person}' is not a column of edit.dataset "
                                f"'{spec.dataset}'", fix=f"use one of: {', '.join(ds.column_names)}")
        people = tuple("" if v is None else str(v) for v in ds[person])
        ident["people"] = hashlib.sha256("\n".join(people).encode()).hexdigest()
    if getattr(spec, "labels", "none") != "none":
        column = spec.labels.column
        if column not in ds.column_names:
            raise ManifestError(f"images.labels.column '{column}' is not a column of images.dataset '{spec.dataset}'",
                                fix=f"use one of: {', '.join(ds.column_names)}")
        feature = ds.features[column]
        names = getattr(feature, "names", None)
        labels = tuple("" if v is None else (names[v] if names and isinstance(v, int) else str(v))
                       for v in ds[column])
        ident["labels"] = hashlib.sha256("\n".join(labels).encode()).hexdigest()
    return Listing("dataset", str(spec.dataset), len(ds), hashlib.sha256(json.dumps(ident).encode()).hexdigest(),
                   labels=labels, people=people)


def image_specs(manifest, indices: range) -> list[Record]:
    """Records of the listed images ``indices``: no prompt; ``source`` says which image. The class is the
    image's own label when the source gives labels (mapped onto the manifest's label map by emotion name; the
    raw label is kept in ``attributes['source_label']``, and an unknown one leaves the class at -1, which
    ingest drops), else -1 until the labellers give one."""
    listing = manifest.listing
    names = getattr(getattr(manifest, "labels", None), "names", ())
    out = []
    for i in indices:
        raw = listing.label(i) if hasattr(listing, "label") else None
        label = class_index(raw, names) if raw else None
        label = -1 if label is None else label
        out.append(Record(sample_id=manifest.sample_id(i), index=i, label=label,
                          label_name=names[label] if label >= 0 else "", au=[],
                          attributes={} if raw is None else {"source_label": raw}, prompt="", negative_prompt="",
                          seed=0, source=listing.entry(i)))
    return out
