"""Sample specs of an ``images`` source: which existing images a build labels, in a fixed order.

A folder is listed in sorted relative-path order (hidden files and folders
skipped); a saved ``datasets`` dataset by row. The listing's sha256 (paths and
byte sizes, or the dataset's fingerprint and row count) is part of the build's
identity, so a build resumes only over the same images. Sample ``i`` is the
``i``-th listed image; its class is unknown (``label`` -1) until the labellers
give it one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ManifestError
from .records import Record

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Listing:
    """The images of a source: a folder's relative paths, or a dataset's row count."""

    kind: str  # "folder" or "dataset"
    root: str
    count: int
    sha256: str
    paths: tuple[str, ...] = ()

    def entry(self, index: int) -> str:
        """What sample ``index`` reads: a relative path, or a row number."""
        return self.paths[index] if self.kind == "folder" else str(index)


def list_images(spec) -> Listing:
    """The listing of an ``ImagesSource``, read from disk now (``Manifest.listing`` keeps one per manifest)."""
    return _list_folder(spec) if spec.folder is not None else _list_dataset(spec)


def _list_folder(spec) -> Listing:
    root = Path(spec.folder)
    if not root.is_dir():
        raise ManifestError(f"images.folder '{root}' is not a folder", fix="point images.folder at a folder of face "
                            "images (paths are relative to the directory you run build-dataset from)")
    pattern = root.rglob("*") if spec.recursive else root.glob("*")
    paths = sorted(
        p.relative_to(root).as_posix() for p in pattern
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise ManifestError(f"images.folder '{root}' holds no image ({', '.join(IMAGE_SUFFIXES)})",
                            fix="put the images there" + ("" if spec.recursive else ", or set images.recursive: true"))
    digest = hashlib.sha256()
    for rel in paths:
        digest.update(f"{rel}\t{(root / rel).stat().st_size}\n".encode())
    return Listing("folder", str(root), len(paths), digest.hexdigest(), tuple(paths))


def open_dataset(spec):
    """The dataset split of an ``ImagesSource`` (memory-mapped), checked for the image column."""
    from .saved_datasets import open_split

    return open_split(spec.dataset, spec.split, {"image_column": spec.image_column}, "images", error=ManifestError)


def _list_dataset(spec) -> Listing:
    ds = open_dataset(spec)
    if len(ds) == 0:
        raise ManifestError(f"images.dataset '{spec.dataset}' has no rows", fix="give a dataset with images")
    ident = {"fingerprint": ds._fingerprint, "rows": len(ds), "split": spec.split, "column": spec.image_column}
    return Listing("dataset", str(spec.dataset), len(ds), hashlib.sha256(json.dumps(ident).encode()).hexdigest())


def image_specs(manifest, indices: range) -> list[Record]:
    """Records of the listed images ``indices``: no class, no prompt; ``source`` says which image."""
    from .expand import sample_id

    listing = manifest.listing
    return [Record(sample_id=sample_id(manifest, i), index=i, label=-1, label_name="", au=[], attributes={},
                   prompt="", negative_prompt="", seed=0, source=listing.entry(i)) for i in indices]
