"""FAISS indexes over L2-normalised vectors: inner product is cosine similarity.

Three types: ``flat`` (``IndexFlatIP``, exact), ``ivf`` (``IndexIVFFlat``:
``nlist`` k-means cells trained on a seeded sample, ``nprobe`` cells searched
per query) and ``hnsw`` (``IndexHNSWFlat``, a navigable small-world graph with
``m`` links per node). ``auto`` is flat below ``auto_threshold`` vectors and
IVF with ``nlist`` about 4 * sqrt(N) (at most N / 39) above. IVF and HNSW are approximate: the
true nearest reference can be missed (``bench/RESULTS.md`` measures recall).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexParams:
    """A resolved index type and the parameters it is built and searched with (0: not used)."""

    type: str
    nlist: int = 0
    nprobe: int = 0
    train_size: int = 0
    m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_params(spec, count: int) -> IndexParams:
    """The concrete index for ``count`` vectors from a spec with the ``ReferenceIndexSpec`` fields."""
    kind = spec.type
    if kind == "auto":
        kind = "flat" if count < spec.auto_threshold else "ivf"
    if kind == "flat":
        return IndexParams("flat")
    if kind == "hnsw":
        return IndexParams("hnsw", m=spec.m, ef_construction=spec.ef_construction, ef_search=spec.ef_search)
    if kind != "ivf":
        raise ValueError(f"unknown index type {kind!r} (expected one of auto, {', '.join(INDEX_TYPES)})")
    # default about 4 * sqrt(N), with at least 39 vectors per cell (FAISS's minimum for k-means)
    nlist = spec.nlist or max(1, min(round(4 * math.sqrt(max(count, 1))), count // 39))
    nlist = max(1, min(nlist, count))  # k-means cannot make more cells than there are vectors
    train = min(count, spec.train_size or 50 * nlist)
    return IndexParams("ivf", nlist=nlist, nprobe=min(spec.nprobe, nlist), train_size=train, seed=spec.seed)


def build_index(vectors: np.ndarray, params: IndexParams):
    """A FAISS index of ``vectors`` (N, D) float32 (an array or a memory map, read in chunks), trained (IVF: on
    a seeded sample) and filled."""
    import faiss

    dim = vectors.shape[1]
    if params.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
    elif params.type == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = params.seed
        rows = np.random.default_rng(params.seed).choice(len(vectors), params.train_size, replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32))
    else:
        raise ValueError(f"unknown index type {params.type!r}")
    add_in_chunks(index, vectors)
    set_search_params(index, params)
    return index


def add_in_chunks(index, vectors: np.ndarray, chunk: int = 65536) -> None:
    """Append ``vectors`` to ``index`` (chunked, so a memory map is read piece by piece)."""
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))


def set_search_params(index, params: IndexParams) -> None:
    """Set the query-time knobs (``nprobe`` for IVF, ``efSearch`` for HNSW) on a built or loaded index."""
    import faiss

    if params.type == "ivf":
        faiss.extract_index_ivf(index).nprobe = params.nprobe
    elif params.type == "hnsw":
        index.hnsw.efSearch = params.ef_search


def search(index, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, rows), both (n, k), best first; row -1 where fewer than k vectors were found."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if len(queries) == 0 or index.ntotal == 0:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    sims, rows = index.search(queries, k)
    return sims, rows


def write_index(index, path: Path) -> None:
    """Write ``index`` to ``path`` through a temporary file and a rename."""
    import faiss

    tmp = Path(path).with_name(f".tmp-{Path(path).name}")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def read_index(path: Path, params: IndexParams):
    """Read an index written by ``write_index`` and set its search parameters."""
    import faiss

    index = faiss.read_index(str(path))
    set_search_params(index, params)
    return index
