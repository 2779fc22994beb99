"""The 'align' stage on real face photos: square crops of exactly crop.size, the eyes where the template puts
them (found again on the crop by MTCNN), small faces warped at their own size and marked, images without a face
dropped, the same bytes on a rerun."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.manifest.annotate import Annotate

SMALL_FACTOR = 3.0
"""g1 shrunk this much has a face region of about 63 source pixels (181 at full size)."""


def record(name: str, image: str, index: int = 0) -> Record:
    return Record(sample_id=name, index=index, label=-1, label_name="", au=[], attributes={}, prompt="",
                  negative_prompt="", seed=0, image=image)


def small(photo: Image.Image, factor: float = SMALL_FACTOR) -> Image.Image:
    """The photo shrunk ``factor`` times (a face of a few dozen pixels)."""
    return photo.resize((round(photo.width / factor), round(photo.height / factor)), Image.Resampling.LANCZOS)


def gradient(size: int = 160) -> Image.Image:
    """A picture without a face."""
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def write_sources(root: Path, people: dict, names=("g1", "g3", "astronaut")) -> list[Record]:
    """Records for photos written into the build folder ``root`` (full-size ``names``, g1 shrunk, a gradient)."""
    folder = root / "source"
    folder.mkdir(parents=True, exist_ok=True)
    images = {name: people[name] for name in names}
    images["g1-small"] = small(people["g1"])
    images["gradient"] = gradient()
    out = []
    for i, (name, image) in enumerate(images.items()):
        image.save(folder / f"{name}.png")
        out.append(record(name, f"source/{name}.png", i))
    return out


def spec(size: int = 128, when_smaller_than: int = 100, model: str = "none", margin: float = 0.3) -> Annotate:
    return Annotate.model_validate({"crop": {"size": size, "margin": margin},
                                    "upscale": {"model": model, "when_smaller_than": when_smaller_than}})


def run_align(root: Path, records: list[Record], annotate: Annotate, shard: int = 0):
    """(kept, rejected, stats) of the align stage over ``records`` in the build folder ``root``."""
    from builder.annotate.align import AlignStage

    stage = AlignStage(annotate, "cpu")
    stage.setup()
    store = ShardStore(root)
    kept = run_stage_on_shard(stage, store, shard, records)
    return kept, store.rejected("align", shard), store.stats("align", shard)


@pytest.fixture(scope="module")
def aligned(people, tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    kept, rejected, stats = run_align(root, write_sources(root, people), spec())
    return {"root": root, "kept": {r.sample_id: r for r in kept}, "rejected": rejected, "stats": stats}


def test_every_face_is_cropped_square_at_the_crop_size_or_marked(aligned):
    kept = aligned["kept"]
    assert sorted(kept) == ["astronaut", "g1", "g1-small", "g3"]
    for name, rec in kept.items():
        path = aligned["root"] / rec.image
        assert rec.image.startswith("shards/align/00000/images/") and path.suffix == ".png"
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.width == im.height
            side = im.width
        assert rec.scores["face_side"] > 0 and len(rec.face["aligned_landmarks"]) == 5
        if name == "g1-small":
            assert 50 < rec.scores["face_side"] < 75, rec.scores
            assert side == rec.scores["upscale_from"] == round(rec.scores["face_side"]), "warped at its own size"
        else:
            assert rec.scores["face_side"] >= 100 and "upscale_from" not in rec.scores
            assert side == 128


def test_face_side_is_the_region_the_crop_covers(aligned, people):
    """The full photo's region is three times the shrunk one's: it is measured in source pixels."""
    kept = aligned["kept"]
    ratio = kept["g1"].scores["face_side"] / kept["g1-small"].scores["face_side"]
    assert ratio == pytest.approx(SMALL_FACTOR, rel=0.06)
    from builder.annotate.align import region_side

    assert region_side(kept["g1"].face["landmarks"], 512, 0.3) == pytest.approx(kept["g1"].scores["face_side"],
                                                                               abs=0.01), "any crop size"


def test_eyes_land_on_the_template(aligned):
    """MTCNN run again on each crop finds the five points within a few pixels of the template."""
    from curation.faces.detect import FacePolicy, find_face, load_detector, template

    detector = load_detector()
    for name, rec in aligned["kept"].items():
        image = np.asarray(Image.open(aligned["root"] / rec.image).convert("RGB"))
        side = image.shape[0]
        expected = template(side, 0.3)
        stored = np.asarray(rec.face["aligned_landmarks"])
        np.testing.assert_allclose(stored[:2], expected[:2], atol=0.03 * side, err_msg=f"{name}: stored eyes")
        np.testing.assert_allclose(stored, expected, atol=0.1 * side, err_msg=f"{name}: stored landmarks")
        found = find_face(detector, FacePolicy(min_size=20), image)
        assert found is not None, name
        eyes = np.asarray(found["landmarks"])[:2]
        error = np.linalg.norm(eyes - expected[:2], axis=1)
        assert error.max() < 0.04 * side, f"{name}: eyes {eyes.tolist()} vs template {expected[:2].tolist()}"
        points = np.asarray(found["landmarks"])
        assert np.linalg.norm(points - stored, axis=1).max() < 0.05 * side, name


def test_a_picture_without_a_face_is_dropped_as_no_face(aligned):
    [rejected] = aligned["rejected"]
    assert rejected.sample_id == "gradient" and rejected.drop.stage == "align" and rejected.drop.reason == "no_face"
    assert aligned["stats"]["dropped"] == {"no_face": 1} and aligned["stats"]["kept"] == 4
    assert aligned["stats"]["meta"]["size"] == 128


def test_a_face_an_earlier_stage_found_is_reused(aligned, tmp_path):
    """With record.face given (by the 'faces' stage), the stage aligns by those landmarks: a deliberately
    shifted face moves the crop."""
    import shutil

    source = aligned["root"] / "source" / "g3.png"
    (tmp_path / "source").mkdir()
    shutil.copy(source, tmp_path / "source" / "g3.png")
    found = aligned["kept"]["g3"].face
    shifted = record("g3", "source/g3.png")
    shifted.face = {"box": found["box"], "score": found["score"], "count": 1,
                    "landmarks": [[x + 10, y] for x, y in found["landmarks"]]}
    [kept], _, _ = run_align(tmp_path, [shifted], spec())
    assert kept.scores["face_side"] == pytest.approx(aligned["kept"]["g3"].scores["face_side"], abs=0.01)
    assert kept.face["landmarks"][0] == shifted.face["landmarks"][0], "no detection replaced it"
    with Image.open(tmp_path / kept.image) as a, Image.open(aligned["root"] / aligned["kept"]["g3"].image) as b:
        assert np.asarray(a).tobytes() != np.asarray(b).tobytes()


def test_every_face_goes_straight_to_the_crop_when_large_enough(people, tmp_path):
    records = write_sources(tmp_path, people, names=("g5",))
    kept, _, _ = run_align(tmp_path, records, spec(size=64, when_smaller_than=40))
    for rec in kept:
        assert "upscale_from" not in rec.scores
        with Image.open(tmp_path / rec.image) as im:
            assert im.size == (64, 64)


def test_same_bytes_twice(people, tmp_path):
    outputs = []
    for run in ("a", "b"):
        root = tmp_path / run
        kept, rejected, _ = run_align(root, write_sources(root, people, names=("g2", "portrait")), spec())
        outputs.append(([r.to_json() for r in kept], [r.to_json() for r in rejected],
                        {r.sample_id: (root / r.image).read_bytes() for r in kept}))
    assert outputs[0] == outputs[1]


def test_a_failed_write_stops_the_run(people, tmp_path, monkeypatch):
    """A full disk is the run's fault, not the sample's: a StorageError, nothing committed."""
    import errno

    from builder.core.errors import StorageError

    records = write_sources(tmp_path, people, names=("g2",))

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(StorageError, match="the disk is full"):
        run_align(tmp_path, records, spec())
    assert not ShardStore(tmp_path).is_done("align", 0)


def test_import_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, builder.annotate.align, builder.annotate.upscale, builder.models.upscalers; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
