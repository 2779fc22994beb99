"""The 'dedupe' global stage: drop duplicates inside the set and copies of a reference set, by a fixed rule.

Records are visited best first (higher label confidence, then lower sample
index), so the copy that stays is the same on every run and whatever the
shard layout. Passes, each over the records the previous ones kept:

1. Against the reference set (``reference``: an index-reference folder):
   ``reference_exact_duplicate`` (same file bytes as a reference image),
   ``reference_near_duplicate`` (64-bit perceptual hash, or its mirror's,
   within ``near_distance`` bits of a reference image's) and, with
   ``embedding_similarity``, ``reference_embedding_duplicate`` (the face's
   nearest reference face is at least that similar).
2. Inside the set: ``exact_duplicate`` (same decoded pixels as a kept record),
   ``near_duplicate`` (perceptual hash or its mirror's within
   ``near_distance`` bits of a kept record's).
3. Inside the set, with ``embedding_similarity``: ``embedding_duplicate``
   (a kept record's face is at least that similar; FAISS range search over
   every face at once, then the same best-first pass). The search is exact up
   to ``curation.whole_set.embeddings.EXACT_UP_TO`` faces and approximate (IVF) above;
   ``meta()["face_search"]`` says which.

Every detail names the copy that stayed; records without a face skip the
embedding passes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.core.errors import UserError, is_run_fault
from builder.core.paths import record_file
from builder.core.records import Drop, Record
from builder.core.stage import GlobalStage
from curation.hashing import NearIndex, phash, pixel_sha256


def priority(record: Record) -> tuple:
    """Sort key: the record that stays among duplicates sorts first."""
    confidence = record.labelling["confidence"] if record.labelling else 0.0
    return (-confidence, record.index)


@dataclass
class _Hashes:
    record: Record
    file_sha256: str
    pixels: str
    phash: int
    mirror: int


class DedupeStage(GlobalStage):
    name = "dedupe"

    def __init__(self, spec, embeddings=None):
        """``spec``: the manifest's ``curation.dedupe``; ``embeddings``: a ``FaceEmbeddings`` (needed when
        ``spec.embedding_similarity`` is set)."""
        self.spec = spec
        self.embeddings = embeddings
        self.groups = 0
        self.embedded = 0
        self.search = None
        self.reference_count = None

    def preflight(self) -> None:
        if self.spec.reference is None:
            return
        from curation.identity.folder import ReferenceFolder

        info = ReferenceFolder(self.spec.reference).info()
        where = "curation.dedupe.reference"
        if info is None:
            raise UserError(f"{where}: {self.spec.reference} is not a reference index (no index.json)",
                            fix="build one with `build-dataset index-reference CONFIG` and give its output_dir")
        if self.spec.embedding_similarity is not None and info["model"]["sha256"] != self.embeddings.load().sha256:
            raise UserError(f"{where}: the index {self.spec.reference} was built with {info['backend']} "
                            f"({info['model']['sha256'][:12]}), curation.embedder is {self.spec_embedder()}",
                            fix="set curation.embedder to the backend and model the index was built with, or "
                                "rebuild the index with curation.embedder's model")

    def spec_embedder(self) -> str:
        model = self.embeddings.describe()
        return f"{model['backend']} ({model['model_sha256'][:12]})"

    def meta(self) -> dict:
        s = self.spec
        out = {"exact": s.exact, "near_distance": s.near_distance, "duplicate_groups": self.groups}
        if s.embedding_similarity is not None:
            out.update(embedding_similarity=s.embedding_similarity, embedder=self.embeddings.describe(),
                       faces_embedded=self.embedded, face_search=self.search)
        if s.reference is not None:
            out["reference"] = {"index": Path(s.reference).name, "images": self.reference_count}
        return out

    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        self.preflight()
        ordered = sorted(records, key=priority)
        hashes = []
        for record in ordered:
            try:
                hashes.append(_hash(record, root))
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):
                    raise
                record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")
        if self.spec.reference is not None:
            self._against_reference(hashes)
            hashes = [h for h in hashes if h.record.drop is None]
            if self.spec.embedding_similarity is not None:
                self._against_reference_faces([h.record for h in hashes], root)
                hashes = [h for h in hashes if h.record.drop is None]
        stayed: set[str] = set()
        self._inside(hashes, stayed)
        if self.spec.embedding_similarity is not None:
            self._inside_faces([h.record for h in hashes if h.record.drop is None], root, stayed)
        self.groups = len(stayed)
        yield from records

    def _against_reference(self, hashes: list[_Hashes]) -> None:
        from curation.identity.folder import reference_images

        images = reference_images(self.spec.reference)
        self.reference_count = len(images)
        by_bytes = {}
        for image in images:
            by_bytes.setdefault(image["sha256"], image["id"])
        near, ids = None, []
        if self.spec.near_distance is not None:
            near = NearIndex(self.spec.near_distance)
            for image in images:
                if image["phash"] is not None:
                    near.add(image["phash"])
                    ids.append(image["id"])
        for h in hashes:
            if h.file_sha256 in by_bytes:
                h.record.drop = Drop(self.name, "reference_exact_duplicate",
                                     f"same bytes as reference image {by_bytes[h.file_sha256]}",
                                     {"reference": by_bytes[h.file_sha256]})
            elif near is not None and (hit := _nearest(near, h)) is not None:
                dist, pos, mirrored = hit
                h.record.drop = Drop(self.name, "reference_near_duplicate", f"perceptual hash {dist} bits from "
                                     f"reference image {ids[pos]}" + (" (mirror image)" if mirrored else ""),
                                     {"reference": ids[pos]})

    def _against_reference_faces(self, records: list[Record], root: Path) -> None:
        from curation.identity.folder import ReferenceIndex

        reference = ReferenceIndex(self.spec.reference)
        vectors, positions = self.embeddings.vectors(records, root)
        if not positions:
            return
        sims, rows = reference.search(vectors, 1)
        threshold = self.spec.embedding_similarity
        for pos, sim, row in zip(positions, sims[:, 0], rows[:, 0]):
            if row >= 0 and sim >= threshold:
                records[pos].drop = Drop(self.name, "reference_embedding_duplicate",
                                         f"face similarity {sim:.4f} >= {threshold:g} to reference face "
                                         f"{reference.ids[row]}", {"reference": reference.ids[row]})

    def _inside(self, hashes: list[_Hashes], stayed: set[str]) -> None:
        exact: dict[str, Record] = {}
        near = NearIndex(self.spec.near_distance) if self.spec.near_distance is not None else None
        kept: list[Record] = []
        for h in hashes:
            record = h.record
            if self.spec.exact and h.pixels in exact:
                record.drop = Drop(self.name, "exact_duplicate", f"same pixels as {exact[h.pixels].sample_id}",
                                   {"duplicate_of": exact[h.pixels].sample_id})
                stayed.add(exact[h.pixels].sample_id)
                continue
            if near is not None:
                hit = _nearest(near, h)
                if hit is not None:
                    dist, pos, mirrored = hit
                    record.drop = Drop(self.name, "near_duplicate", f"perceptual hash {dist} bits from "
                                       f"{kept[pos].sample_id}" + (" (mirror image)" if mirrored else ""),
                                       {"duplicate_of": kept[pos].sample_id})
                    stayed.add(kept[pos].sample_id)
                    continue
                near.add(h.phash)
            exact.setdefault(h.pixels, record)
            kept.append(record)

    def _inside_faces(self, records: list[Record], root: Path, stayed: set[str]) -> None:
        """``records`` are in priority order; a face drops when a kept, earlier face is similar enough."""
        from curation.whole_set.embeddings import (
            describe_search,
            range_neighbours,
            search_params,
        )

        vectors, positions = self.embeddings.vectors(records, root)
        self.embedded = len(positions)
        self.search = describe_search(search_params(len(positions), threshold=self.spec.embedding_similarity))
        threshold = self.spec.embedding_similarity
        kept: set[int] = set()
        for i, neighbours in enumerate(range_neighbours(vectors, threshold)):
            hits = [(-sim, j) for j, sim in neighbours.items() if j in kept]
            if not hits:
                kept.add(i)
                continue
            sim, j = min(hits)
            record, keeper = records[positions[i]], records[positions[j]]
            record.drop = Drop(self.name, "embedding_duplicate",
                               f"face similarity {-sim:.4f} >= {threshold:g} to {keeper.sample_id}",
                               {"duplicate_of": keeper.sample_id})
            stayed.add(keeper.sample_id)


def _hash(record: Record, root: Path) -> _Hashes:
    from builder.core.images import open_rgb8

    path = record_file(root, record.image)
    data = path.read_bytes()
    rgb = np.asarray(open_rgb8(path))
    return _Hashes(record, hashlib.sha256(data).hexdigest(), pixel_sha256(rgb), phash(rgb), phash(rgb[:, ::-1]))


def _nearest(index: NearIndex, h: _Hashes) -> tuple[int, int, bool] | None:
    """(distance, position, mirrored) of the closest indexed hash to the image or its mirror, or None."""
    hits = [(hit[1], hit[0], mirrored) for mirrored, value in enumerate((h.phash, h.mirror))
            if (hit := index.nearest(value)) is not None]
    return min(hits) if hits else None
