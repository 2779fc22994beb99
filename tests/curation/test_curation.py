"""Curation on real photos: face checks, dedupe, balance; each drop under its own reason in rejected/."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from builder.cli import main
from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.manifest import Balance, Dedupe, FaceQuality
from curation.hashing import NearIndex, hamming, phash
from curation.shard.face_quality import FaceQualityFilter, sharpness
from curation.whole_set.balance import BalanceStage, water_fill
from curation.whole_set.dedupe import DedupeStage

NAMES = ("neutral", "happy", "sad")


def record(i: int, image: str | None = None, label: int = 0, confidence: float | None = None,
           attributes: dict | None = None) -> Record:
    return Record(sample_id=f"s-{i:03d}", index=i, label=label, label_name=NAMES[label], au=[],
                  attributes=attributes or {}, prompt="", negative_prompt="", seed=0, image=image,
                  labelling={"confidence": confidence} if confidence is not None else None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos and degraded copies, in a build-like folder (paths relative to it)."""
    import insightface
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(data.astronaut())
    variants = {
        "astronaut.png": astronaut,
        "group.png": Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB"),
        "blurred.png": astronaut.filter(ImageFilter.GaussianBlur(3)),
        "dark.png": ImageEnhance.Brightness(astronaut).enhance(0.15),
        "bright.png": ImageEnhance.Brightness(astronaut).enhance(1.9),
        "coffee.png": Image.fromarray(data.coffee()),
    }
    for name, image in variants.items():
        image.save(root / name)
    return root


_SHARDS = iter(range(1000))  # each call writes its own shard of the photos folder


def run_faces(root: Path, names: list[str], **spec) -> dict[str, tuple[str | None, dict]]:
    stage = FaceQualityFilter(FaceQuality(**spec))
    stage.setup()
    records = [record(i, name) for i, name in enumerate(names)]
    run_stage_on_shard(stage, ShardStore(root), next(_SHARDS), records)
    return {r.image: (r.drop.reason if r.drop else None, r.scores) for r in records}


def test_face_checks_on_real_photos(photos):
    """Measured on these photos: sharp faces 113-1176 (Laplacian variance of the aligned 112 px crop), the
    astronaut blurred with radius 2 / 3: 14 / 5.6; face brightness 138 (astronaut), 20 at 0.15x, 208 at 1.9x
    (at 2x MTCNN no longer finds the face); the group photo's second face has 0.95 of the main face's area."""
    out = run_faces(photos, ["astronaut.png", "group.png", "blurred.png", "dark.png", "coffee.png"])
    assert out["astronaut.png"][0] is None
    assert out["astronaut.png"][1]["sharpness"] > 100 and 100 < out["astronaut.png"][1]["brightness"] < 180
    assert out["group.png"][0] == "multiple_faces" and out["group.png"][1]["other_face_ratio"] > 0.9
    assert out["blurred.png"][0] == "blurry"
    assert out["dark.png"][0] == "underexposed"
    assert out["coffee.png"][0] == "no_face"
    assert run_faces(photos, ["bright.png"], max_brightness=200)["bright.png"][0] == "overexposed"
    assert run_faces(photos, ["astronaut.png"], min_size=100)["astronaut.png"][0] == "small_face"  # box: 89 px


def test_faces_stage_keeps_the_main_face_for_later_stages(photos):
    stage = FaceQualityFilter(FaceQuality())
    stage.setup()
    kept = run_stage_on_shard(stage, ShardStore(photos), next(_SHARDS), [record(0, "astronaut.png")])
    face = kept[0].face
    assert face["count"] == 1 and len(face["landmarks"]) == 5 and face["score"] > 0.99


def test_sharpness_of_known_patterns():
    flat = np.full((32, 32), 100.0)
    checker = (np.indices((32, 32)).sum(0) % 2) * 255.0
    assert sharpness(flat) == 0.0
    assert sharpness(checker) == pytest.approx(1020.0**2)  # the Laplacian is +-1020 everywhere
    assert sharpness(checker) > sharpness(np.asarray(Image.fromarray(checker.astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1)), dtype=float))


def test_perceptual_hash_distances():
    """Measured: resize and JPEG q40 move the astronaut's hash 0 bits, a 5 % crop 6, mirroring 32; other
    pictures are 30-36 bits away."""
    from skimage import data

    image = Image.fromarray(data.astronaut())
    h = phash(data.astronaut())
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=40)
    assert hamming(h, phash(np.asarray(image.resize((200, 200))))) <= 2
    assert hamming(h, phash(np.asarray(Image.open(buf).convert("RGB")))) <= 2
    assert hamming(h, phash(np.asarray(image.crop((12, 12, 500, 500))))) <= 8
    assert hamming(h, phash(data.astronaut()[:, ::-1])) > 16
    assert hamming(h, phash(data.coffee())) > 20


def test_near_index_finds_exactly_the_hashes_within_the_radius():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, size=400)]
    index = NearIndex(radius=5)
    for h in hashes:
        index.add(h)
    for trial in range(200):
        query = hashes[trial] ^ sum(1 << int(b) for b in rng.choice(64, size=trial % 9, replace=False))
        brute = min(((hamming(query, h), i) for i, h in enumerate(hashes)))
        got = index.nearest(query)
        assert got == ((brute[1], brute[0]) if brute[0] <= 5 else None)


def test_dedupe_keeps_the_same_copy_every_run(photos, tmp_path):
    from skimage import data

    root = tmp_path
    base = Image.fromarray(data.astronaut())
    base.save(root / "a.png")
    base.save(root / "a-copy.webp", lossless=True)  # same pixels, other bytes
    base.resize((300, 300)).save(root / "a-small.jpg", quality=60)
    base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "a-mirror.png")
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    Image.fromarray(data.chelsea()).save(root / "cat.png")
    files = ["a.png", "a-copy.webp", "a-small.jpg", "a-mirror.png", "coffee.png", "cat.png"]
    confidences = [0.7, 0.9, 0.9, 0.2, 0.5, 0.5]

    def run(order):
        recs = [record(i, files[i], confidence=confidences[i]) for i in order]
        out = list(DedupeStage(Dedupe()).process(recs, root))
        return {r.image: (r.drop.reason, r.drop.detail) if r.drop else None for r in out}

    first = run(range(6))
    assert first == run([5, 3, 1, 4, 0, 2])
    # a-copy.webp (confidence 0.9, index 1) beats a-small.jpg (0.9, index 2) and a.png (0.7)
    assert first["a-copy.webp"] is None and first["coffee.png"] is None and first["cat.png"] is None
    assert first["a.png"] == ("exact_duplicate", "same pixels as s-001")
    assert first["a-small.jpg"][0] == "near_duplicate" and "s-001" in first["a-small.jpg"][1]
    assert first["a-mirror.png"][0] == "near_duplicate" and "mirror image" in first["a-mirror.png"][1]


def test_water_fill_and_balance_targets():
    assert water_fill(10, [2, 8, 8]) == [2, 4, 4]
    assert water_fill(7, [5, 5]) == [4, 3]
    assert water_fill(20, [3, 4]) == [3, 4]
    recs = ([record(i, label=0, confidence=i / 10) for i in range(6)] + [record(10 + i, label=1, confidence=0.5)
            for i in range(3)] + [record(20, label=2, confidence=0.9)])
    stage = BalanceStage(Balance(per_class={"neutral": 4, "happy": 4}), NAMES)
    out = list(stage.process(recs))
    kept = [r.sample_id for r in out if r.drop is None]
    assert kept == ["s-002", "s-003", "s-004", "s-005", "s-010", "s-011", "s-012", "s-020"]  # most confident
    assert {r.drop.reason for r in out if r.drop} == {"over_target"}
    assert stage.report["shortfall"] == {"happy": 1}  # 3 of 4; sad is not capped
    assert stage.report["before"] == {"neutral": 6, "happy": 3, "sad": 1}
    assert stage.report["after"] == {"neutral": 4, "happy": 3, "sad": 1}
    assert stage.report["imbalance_before"] == 6.0 and stage.report["imbalance_after"] == 4.0


def test_balance_uniform_and_per_cell():
    recs = []
    for i in range(12):
        recs.append(record(i, label=i % 2, confidence=0.5, attributes={"age": ["young", "old"][(i // 2) % 2]}))
    recs += [record(100 + i, label=2, confidence=0.5, attributes={"age": "young"}) for i in range(4)]
    stage = BalanceStage(Balance(by=["age"]), NAMES)
    out = list(stage.process(recs))
    after = stage.report["after"]
    assert after == {"neutral": 4, "happy": 4, "sad": 4} and stage.report["shortfall"] == {}
    for label in (0, 1):  # 3 young + 3 old each; 4 kept as 2 + 2
        ages = [r.attributes["age"] for r in out if r.drop is None and r.label == label]
        assert sorted(ages) == ["old", "old", "young", "young"]


def test_curation_in_a_generated_build_with_a_simulated_fp16_overflow(write_manifest, tmp_path, monkeypatch):
    """The tiny pipeline's images are not faces, so the face stage stays off; dedupe and balance run, and a
    decode made NaN for one sample (what fp16 overflow produces) is dropped as nonfinite_output."""
    import torch
    from diffusers import AutoencoderKL

    decode = AutoencoderKL.decode

    def overflowing(self, z, *args, **kwargs):
        out = decode(self, z, *args, **kwargs)
        sample = out.sample if hasattr(out, "sample") else out[0]
        sample[0] = torch.nan
        return out

    monkeypatch.setattr(AutoencoderKL, "decode", overflowing)
    path = write_manifest({"labels": {"counts": {"happy": 6, "sad": 3}},
                           "curation": {"balance": {"per_class": 4}}, "output": {"shard_size": 4}})
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stages"]["generate"]["dropped"] == {"nonfinite_output": 3}  # first of each 4-image batch
    assert list(stats["stages"]) == ["generate", "integrity", "dedupe", "balance", "release"]
    balance = stats["stages"]["balance"]["meta"]
    assert balance["before"]["happy"] + balance["before"]["sad"] == 6 and balance["shortfall"]
    for stage in ("generate", "balance"):
        lines = (tmp_path / "out" / "rejected" / f"{stage}.jsonl").read_text().splitlines()
        assert len(lines) == sum(stats["stages"][stage]["dropped"].values())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Balance" in card and "shortfall" in card


def test_bad_curation_sections(write_manifest, capsys):
    for changes, expected in [
        ({"curation": {"balance": {"by": ["mood"]}}}, "balances by 'mood', which is not a prompt axis"),
        ({"curation": {"balance": {"per_class": {"joy": 3}}}}, "'joy' is not a class of label map affectnet7"),
        ({"curation": {"identity_leak": {"index": "refs", "pairs": "p.csv"}}},
         "needs either 'threshold' or both 'pairs' and 'false_match_rate'"),
        ({"curation": {"dedupe": {"near_distance": 40}}}, "curation.dedupe.near_distance"),
    ]:
        path = write_manifest(changes)
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "fix:" in err, err
