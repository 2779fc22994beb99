"""Deterministic splits, stratified by class and, within a class, by demographic cell."""
from __future__ import annotations

from collections import defaultdict

from builder.core.records import Record
from builder.core.seeding import derive_seed


def allocate(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items by ``fractions`` with largest remainders (ties: split order)."""
    exact = {name: n * f for name, f in fractions.items()}
    counts = {name: int(v) for name, v in exact.items()}
    order = sorted(fractions, key=lambda name: (-(exact[name] - counts[name]), list(fractions).index(name)))
    for name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def class_split_counts(class_sizes: dict[int, int], fractions: dict[str, float]) -> dict[int, dict[str, int]]:
    """Per-class split sizes whose totals match ``allocate`` over all samples.

    Each class gets the floor of its share per split; the leftover samples of
    each class (fewer than the number of splits) go to the splits that are
    furthest below their global target. So tiny classes still fill small
    splits, and both margins (per class, per split) are as exact as rounding allows.
    """
    names = list(fractions)
    target = allocate(sum(class_sizes.values()), fractions)
    counts = {c: {s: int(n * fractions[s]) for s in names} for c, n in class_sizes.items()}
    need = {s: target[s] - sum(counts[c][s] for c in counts) for s in names}
    for c in sorted(class_sizes):
        n = class_sizes[c]
        for _ in range(n - sum(counts[c].values())):
            best = max(names, key=lambda s: (need[s], n * fractions[s] - int(n * fractions[s]), -names.index(s)))
            counts[c][best] += 1
            need[best] -= 1
    return counts


def assign_splits(records: list[Record], fractions: dict[str, float], seed: int,
                  by: tuple[str, ...] | list[str] = ()) -> dict[str, list[Record]]:
    """Split name -> records (sorted by index); each class divided by ``fractions``.

    Within a class, records are ordered by a key drawn from (seed, index), so a
    sample's split depends on which samples were kept, not on shard size,
    worker count or processing order. With ``by`` (attribute names), each
    class's records are first spread evenly by cell (class x values of ``by``):
    a record at rank r of n in its cell sits at (r + 0.5) / n, so every split,
    a contiguous run of that order, gets each cell in proportion.
    """
    by_class: dict[int, list[Record]] = defaultdict(list)
    for rec in records:
        by_class[rec.label].append(rec)
    sizes = class_split_counts({c: len(m) for c, m in by_class.items()}, fractions)
    out: dict[str, list[Record]] = {name: [] for name in fractions}
    for label in sorted(by_class):
        members = _stratified_order(by_class[label], seed, tuple(by))
        start = 0
        for name, count in sizes[label].items():
            out[name].extend(members[start : start + count])
            start += count
    return {name: sorted(recs, key=lambda r: r.index) for name, recs in out.items()}


def assign_group_splits(records: list[Record], fractions: dict[str, float], seed: int,
                        group: str) -> dict[str, list[Record]]:
    """Split name -> records (sorted by index), whole groups at a time: records with the same
    ``attributes[group]`` (e.g. the person an edit shows) always land in the same split.

    Groups are placed largest first (ties by a key drawn from (seed, group)), each into the split furthest below
    its share of ``allocate`` (ties: split order), so split sizes come as close to the fractions as whole groups
    allow; a split can stay empty when there are fewer groups than splits."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.attributes.get(group) or rec.sample_id].append(rec)
    target = allocate(len(records), fractions)
    names = list(fractions)
    out: dict[str, list[Record]] = {name: [] for name in fractions}
    for key in sorted(groups, key=lambda k: (-len(groups[k]), derive_seed(seed, 0, f"split-group/{k}"), k)):
        best = max(names, key=lambda s: (target[s] - len(out[s]), -names.index(s)))
        out[best].extend(groups[key])
    return {name: sorted(recs, key=lambda r: r.index) for name, recs in out.items()}


def _stratified_order(members: list[Record], seed: int, by: tuple[str, ...]) -> list[Record]:
    def key(r: Record):
        return derive_seed(seed, r.index, "split"), r.index

    if not by:
        return sorted(members, key=key)
    cells: dict[tuple, list[Record]] = defaultdict(list)
    for r in members:
        cells[tuple(r.attributes.get(a, "") for a in by)].append(r)
    placed = []
    for cell in sorted(cells):
        ranked = sorted(cells[cell], key=key)
        placed += [((rank + 0.5) / len(ranked), key(r), r) for rank, r in enumerate(ranked)]
    return [r for *_, r in sorted(placed, key=lambda p: (p[0], p[1]))]


FEW_PER_CLASS = 5
"""A split with fewer images of a released class than this is flagged: per-class metrics on it are noise."""


def split_coverage(splits: dict[str, list[Record]], names) -> dict[str, dict]:
    """Per split, the released classes it lacks and those it holds fewer than ``FEW_PER_CLASS`` images of
    (classes with no released image at all are not counted against any split)."""
    released = {r.label for recs in splits.values() for r in recs}
    out = {}
    for split, records in splits.items():
        counts = {c: 0 for c in released}
        for r in records:
            counts[r.label] += 1
        missing = [names[c] for c in sorted(released) if counts[c] == 0]
        few = {names[c]: counts[c] for c in sorted(released) if 0 < counts[c] < FEW_PER_CLASS}
        if missing or few:
            out[split] = {"missing": missing, "few": few}
    return out
