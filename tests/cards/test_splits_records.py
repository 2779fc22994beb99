"""Splits are stratified and deterministic; records round-trip through JSON lines."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from builder.core.records import Drop, Record, read_jsonl, write_jsonl
from cards.splits import allocate, assign_splits, class_split_counts


def rec(index: int, label: int) -> Record:
    return Record(sample_id=f"s-{index}", index=index, label=label, label_name=str(label), au=[0.5],
                  attributes={"age": "old"}, prompt="p", negative_prompt="", seed=index)


def test_allocate_sums_and_rounds():
    assert allocate(28, {"train": 0.8, "validation": 0.1, "test": 0.1}) == {"train": 22, "validation": 3, "test": 3}
    assert allocate(3, {"a": 0.5, "b": 0.5}) == {"a": 2, "b": 1}


@pytest.mark.parametrize("sizes", [{0: 4, 1: 4, 2: 4, 3: 4, 4: 4, 5: 4, 6: 4}, {0: 1, 1: 50, 2: 7}, {0: 1000, 3: 333}])
def test_class_split_counts_match_both_margins(sizes):
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    counts = class_split_counts(sizes, fractions)
    assert {c: sum(v.values()) for c, v in counts.items()} == sizes
    totals = Counter()
    for per_class in counts.values():
        totals.update(per_class)
    assert dict(totals) == allocate(sum(sizes.values()), fractions)
    for c, per_class in counts.items():
        for split, n in per_class.items():
            assert abs(n - sizes[c] * fractions[split]) < 1 + 1e-9


def test_assign_splits_is_deterministic_and_stratified():
    records = [rec(i, i % 3) for i in range(300)]
    fractions = {"train": 0.7, "test": 0.3}
    a = assign_splits(records, fractions, seed=5)
    b = assign_splits(list(reversed(records)), fractions, seed=5)
    assert {k: [r.sample_id for r in v] for k, v in a.items()} == {k: [r.sample_id for r in v] for k, v in b.items()}
    assert Counter(r.label for r in a["test"]) == {0: 30, 1: 30, 2: 30}
    ids = [r.sample_id for v in a.values() for r in v]
    assert len(ids) == len(set(ids)) == 300
    c = assign_splits(records, fractions, seed=6)
    assert [r.sample_id for r in c["test"]] != [r.sample_id for r in a["test"]]



def test_splits_are_stratified_by_demographic_cell_within_each_class():
    """Cells of very different sizes (60 / 30 / 10 per class): each split gets every cell in proportion; without
    ``by`` a random draw can leave the small cell out of the test split."""
    ages = ["young"] * 60 + ["middle"] * 30 + ["old"] * 10
    records = [Record(sample_id=f"s-{i}", index=i, label=i % 2, label_name=str(i % 2), au=[],
                      attributes={"age": ages[(i // 2) % 100]}, prompt="", negative_prompt="", seed=i)
               for i in range(200)]
    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    out = assign_splits(records, fractions, seed=3, by=["age"])
    for split, frac in fractions.items():
        assert Counter(r.label for r in out[split]) == {0: 100 * frac, 1: 100 * frac}  # class margins exact
        for label in (0, 1):
            cells = Counter(r.attributes["age"] for r in out[split] if r.label == label)
            for age, n in (("young", 60), ("middle", 30), ("old", 10)):
                assert abs(cells[age] - n * frac) <= 1, (split, label, age, cells)
    again = assign_splits(list(reversed(records)), fractions, seed=3, by=["age"])
    assert {k: [r.sample_id for r in v] for k, v in out.items()} == {k: [r.sample_id for r in v]
                                                                    for k, v in again.items()}

def test_record_jsonl_round_trip(tmp_path):
    kept = rec(1, 2)
    kept.scores["pixel_std"] = 12.5
    dropped = rec(2, 0)
    dropped.drop = Drop("integrity", "blank_image", "pixel std 0.00 < min_std 2")
    write_jsonl(tmp_path / "r.jsonl", [kept, dropped])
    assert list(read_jsonl(tmp_path / "r.jsonl")) == [kept, dropped]


def test_records_refuse_nan_scores():
    r = rec(1, 1)
    r.scores["x"] = math.nan
    with pytest.raises(ValueError):
        r.to_json()


def test_group_splits_never_split_a_group_and_come_close_to_the_fractions():
    from builder.core.records import Record
    from cards.splits import assign_group_splits

    records = [Record(sample_id=f"s-{i}", index=i, label=i % 7, label_name="", au=[], prompt="", negative_prompt="",
                      seed=0, attributes={"source_identity": f"person-{i // 7}"}) for i in range(7 * 20)]
    fractions = {"train": 0.7, "validation": 0.15, "test": 0.15}
    splits = assign_group_splits(records, fractions, seed=3, group="source_identity")
    where = {}
    for split, recs in splits.items():
        for r in recs:
            assert where.setdefault(r.attributes["source_identity"], split) == split
    assert {s: len(r) for s, r in splits.items()} == {"train": 98, "validation": 21, "test": 21}
    assert assign_group_splits(list(reversed(records)), fractions, 3, "source_identity") == splits
    assert assign_group_splits(records, fractions, 4, "source_identity") != splits, "the seed decides"
