"""The reference index folder: append-only vectors and metadata, committed by rewriting ``index.json``.

Layout of ``output_dir``::

    index.json       what is committed: backend and model (sha256), dim, face policy, counts,
                     sources (listing sha256), the FAISS index's type, parameters and sha256
    vectors.f32      float32 rows (count x dim), unit norm; row i is metadata line i
    metadata.jsonl   one line per vector: row, id ('<source>:<item>'), source, item (path in
                     the folder, or dataset row id), dataset_row, box, landmarks, score, faces
                     (how many), sha256 (image bytes), phash (16 hex digits, see
                     curation.hashing), width, height, file_size, mtime_ns
    skipped.jsonl    one line per image not embedded: id, source, item, sha256, reason, detail (and
                     phash when the image decoded but had no face)
    index.faiss      the FAISS index over vectors.f32 (inner product = cosine similarity)

Vectors, metadata and skipped lines are appended batch by batch and
``index.json`` (count, skipped) is replaced after each batch, so a killed run
leaves at most a tail beyond the committed counts, which the next run cuts off.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from builder.core.errors import UserError
from builder.models.files import ConfigPart, Positive

INFO, VECTORS, METADATA, SKIPPED, FAISS = "index.json", "vectors.f32", "metadata.jsonl", "skipped.jsonl", "index.faiss"
FORMAT = 1


class ReferenceFolder:
    """Reads and appends to one reference index folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def info(self) -> dict | None:
        """The committed ``index.json``, or None when there is none yet."""
        path = self.path(INFO)
        if not path.is_file():
            return None
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT:
            raise UserError(f"unsupported reference index format {info.get('format')!r}", file=str(path),
                            fix="rebuild the reference index with this version of build-dataset")
        return info

    def write_info(self, info: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path(f".tmp-{INFO}")
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path(INFO))

    def cut_to(self, count: int, skipped: int, dim: int) -> None:
        """Drop whatever a killed run appended beyond the committed counts."""
        vectors = self.path(VECTORS)
        if vectors.exists() and vectors.stat().st_size > count * dim * 4:
            os.truncate(vectors, count * dim * 4)
        _keep_lines(self.path(METADATA), count)
        _keep_lines(self.path(SKIPPED), skipped)

    def reset(self) -> None:
        """Remove the data files of a first run that was killed before its first commit."""
        for name in (VECTORS, METADATA, SKIPPED, FAISS):
            self.path(name).unlink(missing_ok=True)

    def append(self, vectors: np.ndarray, metadata: list[dict], skipped: list[dict]) -> None:
        """Append one batch (flushed to disk before the caller commits ``index.json``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if len(vectors):
            with open(self.path(VECTORS), "ab") as fh:
                fh.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
                fh.flush()
                os.fsync(fh.fileno())
        for name, lines in ((METADATA, metadata), (SKIPPED, skipped)):
            if lines:
                with open(self.path(name), "a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
                    fh.flush()
                    os.fsync(fh.fileno())

    def vectors(self, count: int, dim: int) -> np.ndarray:
        """The committed vectors (count, dim), memory-mapped read-only."""
        if count == 0:
            return np.zeros((0, dim), np.float32)
        return np.memmap(self.path(VECTORS), dtype="<f4", mode="r", shape=(count, dim))

    def metadata(self, count: int | None = None) -> list[dict]:
        return _read_lines(self.path(METADATA), count)

    def skipped(self, count: int | None = None) -> list[dict]:
        return _read_lines(self.path(SKIPPED), count)


def _read_lines(path: Path, count: int | None) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if count is not None and len(out) >= count:
                break
            out.append(json.loads(line))
    return out


def _keep_lines(path: Path, count: int) -> None:
    """Truncate a JSONL file after its first ``count`` lines (and any partial line)."""
    if not path.is_file():
        return
    end = 0
    with open(path, "rb") as fh:
        for _ in range(count):
            line = fh.readline()
            if not line.endswith(b"\n"):
                break
            end += len(line)
    if path.stat().st_size > end:
        os.truncate(path, end)


def reference_images(root: str | Path) -> list[dict]:
    """Every committed reference image, embedded or skipped: id, sha256 (of its bytes) and phash (the 64-bit
    ``curation.hashing.phash`` as an int; None for skipped images, which were not hashed)."""
    folder = ReferenceFolder(root)
    info = folder.info()
    if info is None:
        raise UserError("is not a reference index (no index.json)", file=str(folder.root),
                        fix="build one with `build-dataset index-reference CONFIG` and point at its output_dir")
    return ([{"id": m["id"], "sha256": m["sha256"], "phash": int(m["phash"], 16)}
             for m in folder.metadata(info["count"])]
            + [{"id": m["id"], "sha256": m["sha256"], "phash": int(m["phash"], 16) if m.get("phash") else None}
               for m in folder.skipped(info["skipped"]) if m.get("sha256")])


class ReferenceIndex:
    """A committed reference index, ready to search (what the ``identity_leak`` stage loads)."""

    def __init__(self, root: str | Path):
        from curation.identity.index import IndexParams, read_index

        self.folder = ReferenceFolder(root)
        where = str(self.folder.path(INFO))
        info = self.folder.info()
        if info is None:
            raise UserError("is not a reference index (no index.json)", file=str(self.folder.root),
                            fix="build one with `build-dataset index-reference CONFIG` and point at its output_dir")
        built = info.get("index")
        if not built or built.get("ntotal") != info["count"] or not self.folder.path(FAISS).is_file():
            raise UserError("the reference index was not finished (its FAISS index is missing or older than its "
                            "vectors)", file=where, fix="run `build-dataset index-reference` on its config again")
        self.info = info
        self.params = IndexParams(**built["params"])
        self.index = read_index(self.folder.path(FAISS), self.params)
        if self.index.ntotal != info["count"] or self.index.d != info["dim"]:
            raise UserError(f"index.faiss holds {self.index.ntotal} x {self.index.d} vectors, index.json says "
                            f"{info['count']} x {info['dim']}", file=where,
                            fix="run `build-dataset index-reference` on its config again")
        lines = self.folder.metadata(info["count"])
        self.ids = [m["id"] for m in lines]
        self.sources = [m["source"] for m in lines]

    @property
    def count(self) -> int:
        return self.info["count"]

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of the ``k`` nearest references of each vector, best first (row -1: none)."""
        from curation.identity.index import search

        return search(self.index, vectors, k)


class _IndexModel(ConfigPart):
    sha256: str
    path: str
    model: str | None = None


class _IndexFaces(ConfigPart):
    min_score: float
    min_size: float


class _IndexBuilt(ConfigPart):
    params: dict
    ntotal: Annotated[int, Field(ge=0)]
    sha256: str


class ReferenceIndexInfo(ConfigPart):
    """What the stages read from a reference index's ``index.json`` (``curation.identity.folder``)."""

    format: Literal[1]
    backend: Literal["dlib", "insightface"]
    model: _IndexModel
    dim: Positive
    count: Annotated[int, Field(ge=0)]
    skipped: Annotated[int, Field(ge=0)]
    faces: _IndexFaces
    index: _IndexBuilt | None = None
    sources: dict = Field(default_factory=dict)
