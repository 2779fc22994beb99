"""The whole-set face range search (``curation.whole_set.embeddings.range_neighbours``): exact up to a cutoff, IVF above.

Seeded random unit vectors with planted near-duplicate groups (a source and copies at cosine about
U(0.85, 1.0) to it, as in ``bench/range_search.py``); unrelated random vectors are never near 0.9. The
approximate path is forced on 3,000 vectors with a low ``exact_up_to``.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from builder.core.records import Record
from builder.manifest import Dedupe, Identities
from curation.whole_set import embeddings
from curation.whole_set.dedupe import DedupeStage
from curation.whole_set.embeddings import (
    EXACT_UP_TO,
    NPROBE,
    probes,
    range_neighbours,
    search_params,
)
from curation.whole_set.identities import IdentitiesStage

THRESHOLD = 0.9


def planted(n: int, dim: int = 128, share: float = 0.3, seed: int = 0, low: float = 0.85) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    members = rng.permutation(n)[:int(n * share)]
    for group in np.split(members, np.cumsum(rng.integers(2, 6, size=len(members)))):
        for copy in group[1:]:
            sigma = np.sqrt((1 / rng.uniform(low, 1.0) ** 2 - 1) / dim)
            v = x[group[0]] + sigma * rng.standard_normal(dim)
            x[copy] = v / np.linalg.norm(v)
    return x.astype(np.float32)


def pairs(neighbours: list[dict[int, float]]) -> dict[tuple[int, int], float]:
    return {(min(i, j), max(i, j)): s for i, near in enumerate(neighbours) for j, s in near.items()}


@pytest.fixture(scope="module")
def faces():
    x = planted(3000)
    return x, range_neighbours(x, THRESHOLD)


def test_exact_search_up_to_the_cutoff(faces):
    x, exact = faces
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    truth = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(sims > THRESHOLD, 1)))}
    assert len(truth) > 400, "the planted groups give hundreds of pairs"
    assert set(pairs(exact)) == truth
    for i, near in enumerate(exact):
        assert i not in near
        assert all(abs(s - sims[i, j]) < 1e-5 and i in exact[j] for j, s in near.items())
    assert search_params(3000).type == "flat" and search_params(EXACT_UP_TO).type == "flat"
    big = search_params(EXACT_UP_TO + 1)
    assert (big.type, big.nlist, big.nprobe, big.train_size) == ("ivf", 894, NPROBE, 50 * 894)  # 4 * sqrt(N) cells
    assert range_neighbours(np.zeros((0, 128), np.float32), THRESHOLD) == []


def test_approximate_search_finds_the_near_duplicates_and_nothing_below_the_threshold(faces):
    x, exact = faces
    truth = pairs(exact)
    approx = range_neighbours(x, THRESHOLD, exact_up_to=1000, nprobe=NPROBE)  # 32 of 76 cells: IVF, if no cheaper
    found = pairs(approx)
    assert len(set(found) & set(truth)) >= 0.99 * len(truth)
    assert set(found) <= set(truth)
    assert min(found.values()) > THRESHOLD
    rows = np.array(list(found))
    assert np.abs(np.einsum("ij,ij->i", x[rows[:, 0]], x[rows[:, 1]]) - np.array(list(found.values()))).max() < 1e-5
    assert all(i in approx[j] and approx[j][i] == s for i, near in enumerate(approx) for j, s in near.items())
    # it is approximate: searching one cell of the 76 per face misses pairs (still none below the threshold)
    assert search_params(3000, exact_up_to=1000, nprobe=NPROBE).nlist == 76
    assert search_params(3000, exact_up_to=1000).type == "flat", "left to choose, 32 of 76 cells cost as much as exact"
    narrow = pairs(range_neighbours(x, THRESHOLD, exact_up_to=1000, nprobe=1))
    assert set(narrow) < set(truth) and len(narrow) >= 0.95 * len(truth) and min(narrow.values()) > THRESHOLD


def test_approximate_search_is_deterministic(faces):
    import faiss

    x, _ = faces
    first = range_neighbours(x, THRESHOLD, exact_up_to=1000, nprobe=2)
    assert range_neighbours(x.copy(), THRESHOLD, exact_up_to=1000, nprobe=2) == first
    assert [list(d) for d in first] == [sorted(d) for d in first]  # neighbours in index order
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(2 if threads == 1 else 1)
        assert range_neighbours(x, THRESHOLD, exact_up_to=1000, nprobe=2) == first
    finally:
        faiss.omp_set_num_threads(threads)


class FakeEmbeddings:
    """The planted vectors as the faces of records s-0000...: row i is record index i's face."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def describe(self) -> dict:
        return {"backend": "fake", "model": "none", "model_sha256": "0" * 64, "dim": self.x.shape[1]}

    def vectors(self, records, root):
        return self.x[[r.index for r in records]], list(range(len(records)))


def make_records(n: int) -> list[Record]:
    rng = np.random.default_rng(0)
    return [Record(sample_id=f"s-{i:04d}", index=i, label=0, label_name="neutral", au=[], attributes={}, prompt="",
                   negative_prompt="", seed=0, image=f"img/{i}.png",
                   labelling={"confidence": float(rng.uniform())}) for i in range(n)]


def test_stages_record_which_search_they_used(faces, tmp_path, monkeypatch):
    x, _ = faces
    x = x[:1200]  # a dedupe stage hashes every image: keep it quick
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(1)
    for i in range(len(x)):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")

    def run(stage):
        records = make_records(len(x))
        list(stage.process(records, tmp_path))
        return stage.meta(), {r.sample_id: (r.drop.reason if r.drop else None, (r.face or {}).get("identity"))
                              for r in records}

    def stages():
        return (DedupeStage(Dedupe(exact=False, near_distance=None, embedding_similarity=THRESHOLD),
                            FakeEmbeddings(x)),
                IdentitiesStage(Identities(threshold=THRESHOLD), FakeEmbeddings(x), ["neutral"]))

    exact = [run(stage) for stage in stages()]
    monkeypatch.setattr(embeddings, "EXACT_UP_TO", 1000)
    monkeypatch.setattr(embeddings, "NPROBE", 4)  # of 30 cells (at most 1200 / 39)
    approx = [run(stage) for stage in stages()]
    for (meta, outcome), (meta_approx, outcome_approx) in zip(exact, approx):
        assert meta["face_search"] == {"type": "flat", "exact": True}
        assert meta_approx["face_search"] == {"type": "ivf", "nlist": 30, "nprobe": 4, "train_size": 1200,
                                              "seed": 0, "exact": False}
        assert outcome_approx == outcome  # every planted pair found here, so the same decisions
    from cards.card import _dedupe_lines, _identities_lines

    for lines, (meta, _), (meta_approx, _) in ((_dedupe_lines, exact[0], approx[0]),
                                               (_identities_lines, exact[1], approx[1])):
        assert "approximate" not in " ".join(lines(meta))
        assert "the pair search was approximate (FAISS IVF, 4 of 30 cells probed, more for lower thresholds)" \
            in " ".join(lines(meta_approx))
    dropped = sum(reason == "embedding_duplicate" for reason, _ in exact[0][1].values())
    assert dropped > 50 and exact[0][0]["faces_embedded"] == 1200
    assert exact[1][0]["before"]["identities"] == 1200 - dropped


def test_a_pair_exactly_at_the_threshold_is_found():
    """The manifest's thresholds read 'at or above'; FAISS keeps only what is strictly above its radius."""
    from curation.whole_set.embeddings import range_neighbours

    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.6, 0.8], dtype=np.float32)  # cosine exactly 0.6 in float32
    threshold = float(a @ b)
    for exact_up_to in (10, 0):
        found = range_neighbours(np.stack([a, b, -a]), threshold, exact_up_to=exact_up_to, nprobe=1)
        assert found[0] == {1: pytest.approx(threshold)} and found[1] == {0: pytest.approx(threshold)}


def test_lower_thresholds_probe_more_cells_and_fall_back_to_exact():
    assert probes(None, 4000) == NPROBE
    assert [probes(t, 4000) for t in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5)] == [NPROBE, NPROBE, 60, 120, 240, 480]
    assert probes(0.1, 100) == 100, "never more cells than there are"
    n = 1_000_000
    assert [search_params(n, threshold=t).nprobe for t in (0.9, 0.8, 0.6)] == [NPROBE, 60, 240]
    assert search_params(n, threshold=0.4).type == "flat", "as costly as exact there: exact"
    assert search_params(n, threshold=0.4, nprobe=16).nprobe == 16, "an explicit nprobe is kept"


def test_low_similarity_pairs_are_found_by_probing_more_cells(monkeypatch):
    """Pairs down to cosine 0.3 (ArcFace-like thresholds) in 512-d: a fixed small probe count misses many of the
    pairs above 0.5 (1 cell of 76); the count ``probes`` picks for 0.5 (10) finds them again, and 0.4 is searched exactly."""
    x = planted(3000, dim=512, low=0.3)
    monkeypatch.setattr(embeddings, "NPROBE", 2)  # the floor, so that the share decides at this size (76 cells)
    exact = {t: set(pairs(range_neighbours(x, t))) for t in (0.4, 0.5)}
    assert len(exact[0.5]) > 300
    fixed = set(pairs(range_neighbours(x, 0.5, exact_up_to=1000, nprobe=1)))
    chosen = search_params(3000, exact_up_to=1000, threshold=0.5)
    assert (chosen.type, chosen.nlist, chosen.nprobe) == ("ivf", 76, 10)
    more = set(pairs(range_neighbours(x, 0.5, exact_up_to=1000)))
    assert fixed <= exact[0.5] and more <= exact[0.5]
    assert len(fixed) < 0.9 * len(exact[0.5]) and len(more) >= 0.99 * len(exact[0.5])  # measured 0.83 and 0.997
    assert search_params(3000, exact_up_to=1000, threshold=0.4).type == "flat"
    assert set(pairs(range_neighbours(x, 0.4, exact_up_to=1000))) == exact[0.4]
