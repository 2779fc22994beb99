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

``range_neighbours`` finds every pair of faces above a similarity: exactly
(every pair compared) up to ``EXACT_UP_TO`` faces, with an IVF index above,
which misses a few pairs (``bench/RESULTS.md``) but scales to 10^6 faces. The
IVF search probes more cells for lower thresholds, and is exact again where
that would cost as much as comparing every pair (thresholds near 0.4).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from builder.core.errors import is_run_fault
from builder.core.paths import record_file
from builder.core.records import Record

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
            from curation.identity.embedders import load_embedder

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
        from curation.identity.folder import ReferenceFolder

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
                    if is_run_fault(exc):
                        raise
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
        from curation.faces.detect import FacePolicy, image_and_face, load_detector

        if self.detector is None:
            self.detector = load_detector()
        image, face = image_and_face(record_file(root, record.image), record, self.detector, FacePolicy())
        return None if face is None else self.embedder.embed(image, face)


EXACT_UP_TO = 50_000
"""Largest face count searched exactly (FAISS ``IndexFlatIP``); above it the search is approximate (IVF)."""
NPROBE = 32
"""Fewest IVF cells searched per face in the approximate search (``bench/RESULTS.md``)."""
PROBE_SHARE_AT_0_8 = 0.015
"""Share of the IVF cells searched per face at threshold 0.8; it doubles for every 0.1 lower (``probes``)."""
IVF_COST = 4.3
"""The IVF search costs about this many times the exact search's per face compared (measured at 10^5 x 512:
searching 10 % of the cells took 44 % of the exact time, training included, ``bench/RESULTS.md``); from
``1 / IVF_COST`` of the cells on, the exact search is as cheap."""
CHUNK = 65536


def probes(threshold: float | None, nlist: int) -> int:
    """IVF cells to search per face for pairs at or above ``threshold``: ``PROBE_SHARE_AT_0_8`` of ``nlist`` at 0.8,
    twice that per 0.1 lower, at least ``NPROBE``. A pair at a low similarity often lies in a distant cell: on
    random 512-d vectors (the hardest case), 2.5 % of the cells found 99 % of the pairs above 0.6 but 94 % above
    0.4; the share measured to keep recall about 0.99 or more doubles per 0.1 (``bench/RESULTS.md``)."""
    if threshold is None:
        return NPROBE
    share = PROBE_SHARE_AT_0_8 * 2 ** round(10 * (0.8 - threshold), 6)
    return int(min(nlist, max(NPROBE, np.ceil(share * nlist))))


def search_params(count: int, exact_up_to: int | None = None, nprobe: int | None = None,
                  threshold: float | None = None):
    """The ``curation.identity.index.IndexParams`` the range search over ``count`` faces uses: ``flat`` (exact) up
    to ``exact_up_to`` faces (default ``EXACT_UP_TO``), else ``ivf`` with about 4 * sqrt(count) cells trained on a
    seeded sample of 50 per cell (as ``build-dataset index-reference`` builds its ``auto`` index), searching
    ``nprobe`` cells (default ``probes(threshold, nlist)``). When that many cells would cost about as much as
    comparing every pair (low thresholds), the search is exact at any size."""
    from dataclasses import replace
    from types import SimpleNamespace

    from curation.identity.index import IndexParams, resolve_params

    exact_up_to = EXACT_UP_TO if exact_up_to is None else exact_up_to
    if count <= exact_up_to:
        return IndexParams("flat")
    params = resolve_params(SimpleNamespace(type="ivf", auto_threshold=0, nlist=0, train_size=0, nprobe=NPROBE,
                                            seed=0), count)
    chosen = probes(threshold, params.nlist) if nprobe is None else nprobe
    if nprobe is None and chosen * IVF_COST >= params.nlist:
        return IndexParams("flat")
    return replace(params, nprobe=min(chosen, params.nlist))


def describe_search(params) -> dict:
    """What a stage's meta records about its range search: ``{"type": "flat", "exact": True}``, or the IVF
    parameters with ``"exact": False``."""
    out = {k: v for k, v in params.as_dict().items() if v or k == "seed"} if params.type == "ivf" else {"type": "flat"}
    return {**out, "exact": params.type == "flat"}


def range_neighbours(vectors: np.ndarray, threshold: float, exact_up_to: int | None = None,
                     nprobe: int | None = None) -> list[dict[int, float]]:
    """For each vector, the other vectors with cosine similarity at or above ``threshold`` (FAISS range search).

    Up to ``exact_up_to`` (default ``EXACT_UP_TO``) vectors the search is exact (``IndexFlatIP``, every pair
    compared: O(n^2 d)). Above it, an IVF index (``search_params``) compares each vector only with those in
    its ``nprobe`` nearest cells (about O(n^1.5 d); more cells for lower thresholds, ``probes``), so a pair whose
    two vectors fall in far-apart cells can be missed (``bench/range_search.py`` measures how rarely); a pair found from either side is given to both, and
    no pair below ``threshold`` is ever returned. Either way the same vectors in the same order give the
    same neighbours on every run (seeded training; pairs sorted), on the same FAISS build and thread count."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) == 0:
        return []
    params = search_params(len(x), exact_up_to, nprobe, threshold)
    if params.type == "ivf":
        from curation.identity.index import build_index

        index = build_index(x, params)
    else:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    return neighbour_dicts(range_pairs(index, x, threshold), len(x))


def _radius(threshold: float) -> float:
    """FAISS keeps inner products strictly above the radius; the float32 just below ``threshold`` keeps every pair
    at or above it, as the manifest's thresholds read."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def range_pairs(index, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, similarities) of every pair ``index`` finds at or above ``threshold`` for the queries ``x`` (row i
    is ``x[i]``, which must be ``index``'s vector i), from either side: each unordered pair once per direction,
    sorted by (row, col). Queries go in chunks, so only the pairs are held, never an n x n array."""
    rows, cols, sims = [], [], []
    for start in range(0, len(x), CHUNK):
        lims, s, j = index.range_search(x[start:start + CHUNK], _radius(threshold))
        i = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        other = j != i
        rows.append(i[other])
        cols.append(j[other].astype(np.int64))
        sims.append(s[other])
    i, j, s = (np.concatenate(a) for a in (rows, cols, sims))
    # a pair found from one side only is given to both; found from both sides, it has the same similarity
    i, j, s = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, s])
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], s[first]


def neighbour_dicts(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], count: int) -> list[dict[int, float]]:
    """``range_pairs``'s output as ``range_neighbours`` returns it: for each of ``count`` items, {other: sim}."""
    i, j, s = pairs
    bounds = np.searchsorted(i, np.arange(count + 1))
    cols, sims = j.tolist(), s.tolist()
    return [dict(zip(cols[a:b], sims[a:b])) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
