"""The 'dedupe' global stage: drop exact and near duplicates, keeping one copy by a fixed rule.

Records are visited best first (higher label confidence, then lower sample
index), so the copy that stays is the same on every run and whatever the
shard layout. A record is an ``exact_duplicate`` when its decoded pixels equal
a kept record's, a ``near_duplicate`` when its 64-bit perceptual hash, or the
hash of its mirror image, is within ``near_distance`` bits of a kept one's
(``curation.hashing``). The detail names the copy that stayed.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from builder.records import Drop, Record
from builder.stage import GlobalStage

from .hashing import NearIndex, phash, pixel_sha256


def priority(record: Record) -> tuple:
    """Sort key: the record that stays among duplicates sorts first."""
    confidence = record.labelling["confidence"] if record.labelling else 0.0
    return (-confidence, record.index)


class DedupeStage(GlobalStage):
    name = "dedupe"

    def __init__(self, spec):
        self.spec = spec
        self.groups = 0

    def meta(self) -> dict:
        return {"exact": self.spec.exact, "near_distance": self.spec.near_distance, "duplicate_groups": self.groups}

    def process(self, records: list[Record], root: Path) -> Iterator[Record]:
        from PIL import Image

        exact: dict[str, Record] = {}
        near = NearIndex(self.spec.near_distance) if self.spec.near_distance is not None else None
        kept: list[Record] = []
        stayed: set[str] = set()
        for record in sorted(records, key=priority):
            try:
                with Image.open(root / record.image) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except Exception as exc:  # a bad sample is counted and skipped, never a crash
                record.drop = Drop(self.name, "error", f"{type(exc).__name__}: {exc}")
                continue
            if self.spec.exact:
                digest = pixel_sha256(rgb)
                if digest in exact:
                    record.drop = Drop(self.name, "exact_duplicate", f"same pixels as {exact[digest].sample_id}")
                    stayed.add(exact[digest].sample_id)
                    continue
            if near is not None:
                hashes = (phash(rgb), phash(rgb[:, ::-1]))
                hits = [(hit[1], hit[0], mirrored) for mirrored, h in enumerate(hashes)
                        if (hit := near.nearest(h)) is not None]
                if hits:
                    dist, pos, mirrored = min(hits)
                    record.drop = Drop(self.name, "near_duplicate", f"perceptual hash {dist} bits from "
                                       f"{kept[pos].sample_id}" + (" (mirror image)" if mirrored else ""))
                    stayed.add(kept[pos].sample_id)
                    continue
                near.add(hashes[0])
            if self.spec.exact:
                exact[digest] = record
            kept.append(record)
        self.groups = len(stayed)
        yield from records
