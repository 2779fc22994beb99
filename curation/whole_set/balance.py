"""The 'balance' global stage: undersample to a target count per class, optionally per class x cell.

Targets: one count for every class, class name -> count (classes not listed
are not capped), or, by default, the smallest present class's count for every
present class. With ``by`` (prompt axes), a class's target is spread as evenly
as the cells' sizes allow (water-filling in cell order). Within a class or
cell the records with the higher label confidence, then the lower sample
index, stay. Dropped: ``over_target``. The stats get the counts before and
after, the imbalance ratio (largest / smallest present class) before and
after, and the shortfall of every class that has fewer samples than its target.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from builder.core.records import Drop, Record
from builder.core.stage import GlobalStage
from curation.whole_set.dedupe import priority


def water_fill(target: int, sizes: list[int]) -> list[int]:
    """Split ``target`` over bins of capacity ``sizes`` as evenly as possible, earlier bins first on ties."""
    alloc = [0] * len(sizes)
    remaining = target
    while remaining > 0:
        open_bins = [i for i, size in enumerate(sizes) if alloc[i] < size]
        if not open_bins:
            break
        share, extra = divmod(remaining, len(open_bins))
        for rank, i in enumerate(open_bins):
            give = min(sizes[i] - alloc[i], share + (1 if rank < extra else 0))
            alloc[i] += give
            remaining -= give
    return alloc


def imbalance(counts: dict[str, int]) -> float | None:
    present = [c for c in counts.values() if c > 0]
    return round(max(present) / min(present), 4) if present else None


class BalanceStage(GlobalStage):
    name = "balance"

    def __init__(self, spec, label_names):
        self.spec = spec
        self.label_names = tuple(label_names)
        self.report: dict = {}

    def meta(self) -> dict:
        return {"by": list(self.spec.by), **self.report}

    def targets(self, before: dict[str, int]) -> dict[str, int | None]:
        """Target per class name; None means not capped."""
        per_class = self.spec.per_class
        if per_class is None:
            smallest = min((c for c in before.values() if c > 0), default=0)
            return {n: smallest if before[n] > 0 else 0 for n in self.label_names}
        if isinstance(per_class, int):
            return {n: per_class for n in self.label_names}
        return {n: per_class.get(n) for n in self.label_names}

    def process(self, records: list[Record], root: Path | None = None) -> Iterator[Record]:
        by_class: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_class[record.label].append(record)
        before = {n: len(by_class.get(i, [])) for i, n in enumerate(self.label_names)}
        targets = self.targets(before)
        for label, members in by_class.items():
            target = targets[self.label_names[label]]
            if target is None or target >= len(members):
                continue
            cells: dict[tuple, list[Record]] = defaultdict(list)
            for record in members:
                cells[tuple(record.attributes.get(axis, "") for axis in self.spec.by)].append(record)
            keys = sorted(cells)
            for key, quota in zip(keys, water_fill(target, [len(cells[k]) for k in keys])):
                ranked = sorted(cells[key], key=priority)
                for rank, record in enumerate(ranked[quota:], start=quota + 1):
                    cell = ", ".join(f"{a}={v}" for a, v in zip(self.spec.by, key))
                    record.drop = Drop(self.name, "over_target", f"rank {rank} in class {record.label_name}"
                                       + (f" cell {cell}" if cell else "") + f" whose quota is {quota}")
        after = Counter(self.label_names[r.label] for r in records if r.drop is None)
        after = {n: after.get(n, 0) for n in self.label_names}
        self.report = {
            "target": targets, "before": before, "after": after,
            "shortfall": {n: t - before[n] for n, t in targets.items() if t is not None and before[n] < t},
            "imbalance_before": imbalance(before), "imbalance_after": imbalance(after),
        }
        yield from records
