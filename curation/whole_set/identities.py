"""The 'identities' global stage: group faces into identities, report diversity, optionally cap each identity.

Faces are embedded by ``curation.embedder`` (``curation.whole_set.embeddings``) and
visited best first (label confidence, then sample index, as in dedupe). A face
joins the most similar identity whose founder is at or above ``threshold``
(FAISS range search over all faces, exact up to ``curation.whole_set.embeddings.EXACT_UP_TO``
faces, approximate (IVF) above; ties go to the earlier founder), else it
founds a new identity; so the grouping is the same on every run. The founder's
sample id names the identity and goes into ``record.face["identity"]``. With
``max_per_identity`` the identity's first that many images stay and the rest
are dropped as ``identity_cap``. Records without a face are kept and counted.

The stats give the number of identities, images per identity (mean, largest,
a histogram of identity sizes), the share of singletons, the effective number
of identities (exp of the entropy of the images' identity distribution: equal
to the count when identities are equally large), the largest identities
with their classes, and which search found the neighbours (``face_search``).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from builder.core.records import Drop, Record
from builder.core.stage import Column, GlobalStage
from curation.whole_set.dedupe import priority

SIZE_BINS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 50), (51, 100), (101, None))


def leader_clusters(neighbours: list[dict[int, float]]) -> list[int]:
    """Founder of each item's identity, items in priority order: join the most similar earlier founder."""
    founder: list[int] = []
    founders: set[int] = set()
    for i, near in enumerate(neighbours):
        hits = [(-sim, j) for j, sim in near.items() if j < i and j in founders]
        if hits:
            founder.append(min(hits)[1])
        else:
            founder.append(i)
            founders.add(i)
    return founder


def diversity(sizes: list[int]) -> dict:
    """Summary of identity sizes (images per identity)."""
    total = sum(sizes)
    if not total:
        return {"identities": 0, "images": 0}
    entropy = -sum(n / total * math.log(n / total) for n in sizes)
    hist = {}
    for lo, hi in SIZE_BINS:
        label = str(lo) if lo == hi else (f"{lo}+" if hi is None else f"{lo}-{hi}")
        count = sum(1 for n in sizes if n >= lo and (hi is None or n <= hi))
        if count:
            hist[label] = count
    return {"identities": len(sizes), "images": total, "mean_images": round(total / len(sizes), 3),
            "max_images": max(sizes), "singletons": sum(1 for n in sizes if n == 1),
            "effective_identities": round(math.exp(entropy), 3), "size_histogram": hist}


class IdentitiesStage(GlobalStage):
    name = "identities"
    columns = (Column("identity", "string", "the sample id that founded its identity",
                      lambda r, meta: (r.face or {}).get("identity")),)

    def __init__(self, spec, embeddings, names):
        """``spec``: the manifest's ``curation.identities``; ``embeddings``: a ``FaceEmbeddings``; ``names``:
        the class names."""
        self.spec = spec
        self.embeddings = embeddings
        self.names = list(names)
        self.report: dict = {}

    def meta(self) -> dict:
        return {"threshold": self.spec.threshold, "max_per_identity": self.spec.max_per_identity,
                "embedder": self.embeddings.describe(), **self.report}

    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        from curation.whole_set.embeddings import (
            describe_search,
            range_neighbours,
            search_params,
        )

        ordered = sorted(records, key=priority)
        vectors, positions = self.embeddings.vectors(ordered, root)
        founders = leader_clusters(range_neighbours(vectors, self.spec.threshold))
        members: dict[int, list[Record]] = {}
        for i, founder in enumerate(founders):
            record = ordered[positions[i]]
            record.face = {**(record.face or {}), "identity": ordered[positions[founder]].sample_id}
            members.setdefault(founder, []).append(record)
        cap = self.spec.max_per_identity
        if cap is not None:
            for group in members.values():
                for record in group[cap:]:
                    record.drop = Drop(self.name, "identity_cap", f"identity {group[0].sample_id} already has "
                                       f"{cap} images", {"identity": group[0].sample_id})
        before = [len(g) for g in members.values()]
        after = [sum(r.drop is None for r in g) for g in members.values()]
        largest = sorted(members.values(), key=lambda g: (-len(g), g[0].index))[:self.spec.largest]
        self.report = {
            "without_face": len(records) - len(positions),
            "face_search": describe_search(search_params(len(positions), threshold=self.spec.threshold)),
            "before": diversity(before),
            "after": diversity([n for n in after if n]),
            "largest": [{"identity": g[0].sample_id, "images": len(g),
                         "kept": sum(r.drop is None for r in g),
                         "classes": dict(Counter(self.names[r.label] for r in g if r.label >= 0).most_common())}
                        for g in largest],
        }
        yield from records
