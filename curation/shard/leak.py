"""The ``identity_leak`` stage: drop samples whose face is too close to a real person in the reference index.

Per record: read the image, take ``record.face`` from an earlier face stage or
detect it (with the reference index's face policy), embed it with the
reference index's embedder, and find the nearest reference face. The cosine
similarity goes to ``record.scores["leak_similarity"]`` and the nearest
reference to ``record.face["nearest_reference"]`` (the embedding is not
stored). Similarity >= threshold drops the record as ``identity_leak``; no face
drops it as ``no_face``, an unreadable image or failing model as ``error``.
The threshold is given, or calibrated in ``setup`` from verification pairs at a
target false-match rate (``curation.identity.calibrate``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources

"""Target false-match rate when pairs are given without ``false_match_rate``."""


class IdentityLeakStage(Stage):
    """Reject lookalikes of reference identities (see the module docstring).

    ``spec`` has ``index`` (an index-reference output_dir), ``threshold``
    (float or None), ``pairs`` (a pairs file or folder, or None),
    ``false_match_rate`` (float or None) and ``closest`` (int, used by the report).
    """

    name = "identity_leak"
    columns = (
        Column("leak_similarity", "float32", "cosine similarity to the nearest real reference face",
               lambda r, meta: r.scores.get("leak_similarity")),
        Column("nearest_reference", "string", "that face's id",
               lambda r, meta: ((r.face or {}).get("nearest_reference") or {}).get("id")),
    )
    @property
    def resources(self) -> Resources:
        return device_resources(self.requested_device)

    def __init__(self, spec, device: str = "cpu"):
        self.spec = spec
        self.requested_device = device
        self.reference = None
        self.embedder = None
        self.detector = None
        self.policy = None
        self.threshold: float | None = None
        self.calibration: dict | None = None

    def setup(self) -> None:
        from builder.models.diffusion import resolve_device
        from curation.identity.calibrate import calibrate
        from curation.identity.folder import ReferenceIndex
        from curation.identity.images import load_detector

        spec = self.spec  # the manifest guarantees a threshold, or pairs with a false-match rate
        self.reference = ReferenceIndex(spec.index)
        self.embedder = load_index_embedder(self.reference.info, where=str(spec.index))
        faces = self.reference.info["faces"]
        self.detector, self.policy = load_detector(faces["min_score"], faces["min_size"],
                                                   resolve_device(self.requested_device))
        if spec.pairs is not None:
            self.calibration = calibrate(spec.pairs, self.embedder, self.detector, self.policy, spec.false_match_rate)
            self.threshold = self.calibration["threshold"]
        else:
            self.threshold = float(spec.threshold)

    def meta(self) -> dict:
        if self.reference is None:
            return {}
        info = self.reference.info
        model = self.embedder.describe()
        return {"backend": model["backend"], "model": Path(model["path"]).name, "model_sha256": model["sha256"],
                "dim": model["dim"],
                "reference": {"count": info["count"], "index_type": info["index"]["params"]["type"],
                              "index_sha256": info["index"]["sha256"],
                              "sources": {k: v["listing_sha256"] for k, v in sorted(info["sources"].items())}},
                "threshold": self.threshold,
                "threshold_from": "calibrated" if self.calibration else "given",
                "calibration": self.calibration}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        from curation.faces.detect import per_face

        vectors, embedded = per_face(records, self.name, self.policy, lambda r: self._embed(r, ctx))
        if embedded:
            sims, rows = self.reference.search(np.stack(vectors), 1)
            for record, sim, row in zip(embedded, sims[:, 0], rows[:, 0]):
                self._judge(record, float(sim), int(row))
        yield from records

    def _embed(self, record: Record, ctx: ShardContext) -> np.ndarray | None:
        from curation.faces.detect import image_and_face

        if not record.image:
            raise ValueError("record has no image")
        image, face = image_and_face(ctx.resolve(record.image), record, self.detector, self.policy)
        return None if face is None else self.embedder.embed(image, face)

    def _judge(self, record: Record, sim: float, row: int) -> None:
        if row < 0:  # an approximate index found no candidate: nothing to be close to
            record.scores["leak_similarity"] = -1.0
            record.face["nearest_reference"] = None
            return
        ref_id, ref_source = self.reference.ids[row], self.reference.sources[row]
        record.scores["leak_similarity"] = round(sim, 6)
        record.face["nearest_reference"] = {"id": ref_id, "source": ref_source, "similarity": round(sim, 6)}
        if sim >= self.threshold:
            record.drop = Drop(self.name, "identity_leak",
                               f"similarity {sim:.4f} >= threshold {self.threshold:.4f} to reference {ref_id}",
                               {"reference": ref_id})


def load_index_embedder(info: dict, where: str = "reference index"):
    """The embedder a reference index was built with (``info`` is its index.json), checked by sha256."""
    from builder.core.errors import ModelLoadError
    from curation.identity.embedders import load_embedder

    model = info["model"]
    given = None
    if info["backend"] == "insightface":  # the file it was built from, else the name it was given by
        given = model["path"] if Path(model["path"]).is_file() else model.get("model")
    embedder = load_embedder(info["backend"], given)
    if embedder.sha256 != model["sha256"] or embedder.dim != info["dim"]:
        raise ModelLoadError(f"the {info['backend']} model found now ({embedder.describe()['path']}, sha256 "
                             f"{embedder.sha256}, dim {embedder.dim}) is not the one the reference index was built "
                             f"with (sha256 {model['sha256']}, dim {info['dim']})", file=where,
                             fix="restore the model the index was built with, or rebuild the index into a new "
                                 "output_dir with this model")
    return embedder


def leak_report(similarities: Sequence[float] | None, records: Sequence[Record], threshold: float,
                closest: int = 10) -> dict:
    """Similarity histogram and the ``closest`` (sample, reference) pairs, for the release and the card.

    ``similarities`` align with ``records`` (None: read ``record.scores["leak_similarity"]``); records
    without a nearest reference (no face, error) are left out.
    """
    from curation.identity.calibrate import HIST_BINS, histogram

    if similarities is None:
        similarities = [r.scores.get("leak_similarity") for r in records]
    pairs = [(float(s), r) for s, r in zip(similarities, records, strict=True)
             if s is not None and r.face and r.face.get("nearest_reference")]
    values = [s for s, _ in pairs]
    top = sorted(pairs, key=lambda p: (-p[0], p[1].sample_id))[:closest]
    return {
        "threshold": threshold,
        "count": len(values),
        "at_or_above_threshold": sum(s >= threshold for s in values),
        "max": max(values) if values else None,
        "mean": round(float(np.mean(values)), 6) if values else None,
        "histogram": {"edges": HIST_BINS.tolist(), "counts": histogram(values)},
        "closest": [{"sample_id": r.sample_id, "reference_id": r.face["nearest_reference"]["id"],
                     "reference_source": r.face["nearest_reference"]["source"], "similarity": round(s, 6),
                     "dropped": r.drop is not None} for s, r in top],
    }
