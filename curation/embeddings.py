"""Face identity embeddings of a build's kept records, for the whole-set stages (embedding dedupe, identities).

Each record's face is ``record.face`` (from the ``faces`` stage) or, when no
stage has looked, the primary MTCNN face under the default ``FacePolicy``.
Embeddings are computed once per build and embedder and cached in the build
folder, under ``cache/face-embeddings/<backend>-<sha256[:12]>/``, in the
reference-index folder layout (``curation.identity.folder``: vectors and
metadata appended batch by batch, ``index.json`` committed last). A release
run again, or resumed after a kill, embeds only the records it has not seen.
A record's image and face are fixed by the build's fingerprint, so a cached
vector never goes stale within its build folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.records import Record

BATCH = 64
CACHE = Path("cache") / "face-embeddings"


class FaceEmbeddings:
    """Embeds records' faces with one embedder (``spec``: ``backend``, ``model``) and caches the vectors."""

    def __init__(self, spec):
        self.spec = spec
        self.embedder = None
        self.detector = None
        self.stats = {"computed": 0, "from_cache": 0}
        self._memo: dict[str, np.ndarray | None] = {}

    def load(self):
        """The embedder (loaded on first use)."""
        if self.embedder is None:
            from .identity.embedders import load_embedder

            self.embedder = load_embedder(self.spec.backend, self.spec.model)
        return self.embedder

    def describe(self) -> dict:
        model = self.load().describe()
        return {"backend": model["backend"], "model": Path(model["path"]).name, "model_sha256": model["sha256"],
                "dim": model["dim"]}

    def vectors(self, records: list[Record], root: Path) -> tuple[np.ndarray, list[int]]:
        """(unit vectors (n, dim), positions in ``records`` they belong to); records without a face are left out."""
        missing = [r for r in records if r.sample_id not in self._memo]
        if missing:
            self._fill(missing, root)
        positions = [i for i, r in enumerate(records) if self._memo[r.sample_id] is not None]
        dim = self.load().dim
        if not positions:
            return np.zeros((0, dim), np.float32), []
        return np.stack([self._memo[records[i].sample_id] for i in positions]).astype(np.float32), positions

    def _fill(self, records: list[Record], root: Path) -> None:
        from .identity.folder import ReferenceFolder

        embedder = self.load()
        folder = ReferenceFolder(root / CACHE / f"{embedder.describe()['backend']}-{embedder.sha256[:12]}")
        info = folder.info()
        if info is None:
            folder.reset()
            info = {"format": 1, "kind": "face-embedding-cache", "model_sha256": embedder.sha256,
                    "dim": embedder.dim, "count": 0, "skipped": 0}
        folder.cut_to(info["count"], info["skipped"], info["dim"])
        cached = folder.vectors(info["count"], info["dim"])
        for row, line in enumerate(folder.metadata(info["count"])):
            self._memo[line["sample_id"]] = np.array(cached[row])
        for line in folder.skipped(info["skipped"]):
            self._memo[line["sample_id"]] = None
        todo = [r for r in records if r.sample_id not in self._memo]
        self.stats["from_cache"] += len(records) - len(todo)
        for start in range(0, len(todo), BATCH):
            vectors, metadata, skipped = [], [], []
            for record in todo[start:start + BATCH]:
                try:
                    vector = self._embed(record, root)
                except Exception as exc:  # a bad sample is counted and left out, never a crash
                    vector, reason = None, f"error: {type(exc).__name__}: {exc}"
                else:
                    reason = "no_face"
                self._memo[record.sample_id] = vector
                self.stats["computed"] += 1
                if vector is None:
                    skipped.append({"sample_id": record.sample_id, "reason": reason})
                else:
                    vectors.append(vector)
                    metadata.append({"sample_id": record.sample_id, "image": record.image})
            folder.append(np.array(vectors, np.float32).reshape(-1, info["dim"]), metadata, skipped)
            info = {**info, "count": info["count"] + len(metadata), "skipped": info["skipped"] + len(skipped)}
            folder.write_info(info)

    def _embed(self, record: Record, root: Path) -> np.ndarray | None:
        from .faces import FacePolicy, image_and_face, load_detector

        if self.detector is None:
            self.detector = load_detector()
        image, face = image_and_face(root / record.image, record, self.detector, FacePolicy())
        return None if face is None else self.embedder.embed(image, face)


def range_neighbours(vectors: np.ndarray, threshold: float) -> list[dict[int, float]]:
    """For each vector, the other vectors with cosine similarity >= ``threshold`` (FAISS exact range search)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    out: list[dict[int, float]] = [{} for _ in range(len(x))]
    if len(x) == 0:
        return out
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, ids = index.range_search(x, float(threshold))
    for i in range(len(x)):
        for j, s in zip(ids[lims[i]:lims[i + 1]], sims[lims[i]:lims[i + 1]]):
            if j != i:
                out[i][int(j)] = float(s)
    return out
