"""Top-K selection per class (SyntFER's pseudo-label strategy): the K most confident images of each class.

Confidence is the labellers' pooled confidence (``record.labelling``); ties are
broken by sample id, so the same records always give the same selection.
Records beyond K in their class are dropped as ``below_top_k``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from builder.core.records import Drop, Record
from builder.core.stage import GlobalStage


class TopKPerClass(GlobalStage):
    name = "select"

    def __init__(self, k: int):
        self.k = k

    def meta(self) -> dict:
        return {"top_k_per_class": self.k}

    def process(self, records: list[Record], root=None) -> Iterator[Record]:
        by_class: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_class[record.label].append(record)
        for members in by_class.values():
            members.sort(key=lambda r: (-_confidence(r), r.sample_id))
            for rank, record in enumerate(members[self.k:], start=self.k + 1):
                record.drop = Drop(self.name, "below_top_k", f"rank {rank} of {len(members)} in class "
                                   f"{record.label_name} (confidence {_confidence(record):.3f}); keeps {self.k}")
        yield from records


def _confidence(record: Record) -> float:
    return float(record.labelling["confidence"]) if record.labelling else 0.0
