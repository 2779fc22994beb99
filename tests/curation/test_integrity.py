"""The integrity filter on real image files: each failure has its own reason, nothing crashes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.manifest import Integrity
from curation.shard.integrity import IntegrityFilter


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


def jpeg(pixels: np.ndarray, **params) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, **params)
    return buf.getvalue()


def picture(height: int = 256, width: int = 192) -> np.ndarray:
    """A textured picture (smooth gradients plus noise), like a photo to a JPEG encoder."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_damaged_files_that_decode_are_corrupt_not_kept(tmp_path, monkeypatch):
    from PIL import ImageFile

    folder = tmp_path / "img"
    folder.mkdir()
    honest = jpeg(picture())
    (folder / "honest.jpg").write_bytes(honest)
    (folder / "filled.jpg").write_bytes(honest[: len(honest) * 6 // 10] + b"\xff\xd9")  # decodes; grey tail
    cut = honest[: len(honest) * 6 // 10]
    (folder / "cut.jpg").write_bytes(cut)
    letterboxed = np.full((384, 192, 3), 128, np.uint8)
    letterboxed[64:320] = picture()
    (folder / "letterboxed.jpg").write_bytes(jpeg(letterboxed))  # honest grey bands above and below
    padded = np.full((320, 192, 3), 255, np.uint8)
    padded[:256] = picture()
    (folder / "padded.jpg").write_bytes(jpeg(padded))  # honest flat white below
    Image.fromarray(picture()).save(folder / "whole.png")
    (folder / "no-iend.png").write_bytes((folder / "whole.png").read_bytes()[:-12])

    names = ["honest", "filled", "cut", "letterboxed", "padded"]
    records = [record(i, f"img/{n}.jpg") for i, n in enumerate(names)] + [record(5, "img/no-iend.png")]
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(IntegrityFilter(Integrity()), store, 0, records)
    assert sorted(r.sample_id for r in kept) == ["t-0", "t-3", "t-4"]
    reasons = {r.sample_id: (r.drop.reason, r.drop.detail) for r in store.rejected("integrity", 0)}
    assert reasons["t-1"][0] == "corrupt_image" and "flat mid-grey" in reasons["t-1"][1]
    assert reasons["t-2"] == ("unreadable_image", reasons["t-2"][1])  # Pillow refuses a cut stream itself
    assert reasons["t-5"][0] == "corrupt_image" and "IEND" in reasons["t-5"][1]
    assert store.stats("integrity", 0)["dropped"] == {"corrupt_image": 2, "unreadable_image": 1}

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a lenient Pillow, set by some other library
    lenient = run_stage_on_shard(IntegrityFilter(Integrity()), store, 1, [record(2, "img/cut.jpg")])
    assert lenient == [] and store.rejected("integrity", 1)[0].drop.reason == "corrupt_image"


def test_sixteen_bit_images_are_measured_scaled(tmp_path):
    """A 16-bit grey picture has its real contrast, not the white frame Pillow's convert('RGB') makes of it."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(IntegrityFilter(Integrity()), store, 0, [record(0, "ramp16.png")])
    assert len(kept) == 1 and abs(kept[0].scores["pixel_std"] - np.std(np.rint(ramp / 257))) < 0.01
