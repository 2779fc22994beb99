"""The ``identity_drift`` stage of an ``edit`` source: drop edits that no longer show their source's person.

Per record: the face of the edit (``record.face`` from the faces stage, or detected here with the curation's face
policy) and the face of the source crop the edit started from (``attributes['source_image']``, stored by the edit
stage; embedded once per source and shard), both embedded with ``edit.identity``'s embedder. The cosine similarity
goes to ``scores['identity_similarity']``; below ``min_similarity`` the record is dropped as ``identity_drift`` with
the score. An edit or source without a face is dropped as ``no_face``, an unreadable one or a failing model as
``error`` (counted, never a crash).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources


class IdentityDriftFilter(Stage):
    """Keep the edits whose face is still the source's person (see the module docstring)."""

    name = "identity_drift"
    columns = (Column("identity_similarity", "float32", "cosine similarity of the edit's face to its source's "
                      "(edit.identity's embedder)", lambda r, meta: r.scores.get("identity_similarity")),)

    def __init__(self, spec, faces, device: str = "cpu"):
        """``spec``: the manifest's ``edit.identity``; ``faces``: ``curation.faces`` (the detection policy)."""
        self.spec, self.faces = spec, faces
        self.requested_device = device
        self.embedder = self.detector = self.policy = None

    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def setup(self) -> None:
        from builder.models.diffusion import resolve_device
        from curation.identity.embedders import load_embedder
        from curation.identity.images import load_detector

        self.embedder = load_embedder(self.spec.embedder, self.spec.model)
        self.detector, self.policy = load_detector(self.faces.min_score, self.faces.min_size,
                                                   resolve_device(self.requested_device))

    def meta(self) -> dict:
        if self.embedder is None:
            return {}
        model = self.embedder.describe()
        return {"backend": model["backend"], "model_sha256": model["sha256"], "dim": model["dim"],
                "min_similarity": self.spec.min_similarity}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        from builder.core.errors import is_run_fault
        from curation.faces.detect import image_and_face

        sources: dict[str, np.ndarray | None] = {}
        for record in records:
            try:
                stored = record.attributes["source_image"]
                if stored not in sources:
                    sources[stored] = self._embed_source(ctx, stored)
                image, face = image_and_face(ctx.resolve(record.image), record, self.detector, self.policy)
                edit = None if face is None else self.embedder.embed(image, face)
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                if is_run_fault(exc):
                    raise
                record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")
                yield record
                continue
            source = sources[stored]
            if source is None or edit is None:
                which = "the source" if source is None else "the edit"
                record.drop = Drop(self.name, "no_face", f"{which} has no face with score >= "
                                   f"{self.policy.min_score:g} and side >= {self.policy.min_size:g} px")
            else:
                similarity = round(float(np.dot(source, edit)), 6)
                record.scores["identity_similarity"] = similarity
                if similarity < self.spec.min_similarity:
                    record.drop = Drop(self.name, "identity_drift", f"similarity {similarity:.4f} to the source "
                                       f"< min_similarity {self.spec.min_similarity:g}",
                                       {"source": record.source or ""})
            yield record

    def _embed_source(self, ctx: ShardContext, stored: str) -> np.ndarray | None:
        from curation.faces.detect import find_face
        from curation.identity.images import decode_rgb

        image = decode_rgb(ctx.resolve(stored).read_bytes())
        face = find_face(self.detector, self.policy, image)
        return None if face is None else self.embedder.embed(image, face)
