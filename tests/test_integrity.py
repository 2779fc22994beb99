"""The integrity filter on real image files: each failure has its own reason, nothing crashes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from builder.manifest import Integrity
from builder.records import Record
from builder.shards import ShardStore, run_stage_on_shard
from curation.integrity import IntegrityFilter


def record(i: int, image: str | None) -> Record:
    return Record(sample_id=f"t-{i}", index=i, label=0, label_name="neutral", au=[], attributes={},
                  prompt="p", negative_prompt="", seed=i, image=image)


def test_each_bad_image_is_dropped_under_its_own_reason(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "grey.png")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.png").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")

    names = ["good", "black", "grey", "truncated", "text", "empty", "absent"]
    records = [record(i, f"img/{n}.png") for i, n in enumerate(names)] + [record(99, None)]
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(IntegrityFilter(Integrity()), store, 0, records)

    assert [r.sample_id for r in kept] == ["t-0"]
    assert kept[0].scores["pixel_std"] > 50
    reasons = {r.sample_id: r.drop.reason for r in store.rejected("integrity", 0)}
    assert reasons == {
        "t-1": "blank_image", "t-2": "blank_image", "t-3": "unreadable_image", "t-4": "unreadable_image",
        "t-5": "unreadable_image", "t-6": "missing_image", "t-99": "missing_image",
    }
    stats = store.stats("integrity", 0)
    assert stats["in"] == 8 and stats["kept"] == 1
    assert stats["dropped"] == {"blank_image": 2, "missing_image": 2, "unreadable_image": 3}


def test_min_std_threshold(tmp_path):
    ramp = np.tile(np.linspace(100, 104, 32, dtype=np.uint8), (32, 1))
    Image.fromarray(np.stack([ramp] * 3, -1)).save(tmp_path / "faint.png")
    store = ShardStore(tmp_path)
    strict = run_stage_on_shard(IntegrityFilter(Integrity(min_std=2.0)), store, 0, [record(0, "faint.png")])
    lenient = run_stage_on_shard(IntegrityFilter(Integrity(min_std=0.5)), store, 1, [record(0, "faint.png")])
    assert strict == [] and len(lenient) == 1
