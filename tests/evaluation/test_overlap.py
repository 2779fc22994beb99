"""The evaluation's overlap check: test images that are training images (copies, resized or recompressed ones,
mirror images) are refused before training unless ``--allow-overlap``; the result and the card report it.

The build is ``test_evaluate``'s real build of tinted photos (42 images). The clean test images are tinted
copies of the one photo that build left out (insightface's portrait); the leaky test set adds two released
training files as they are, one resized to 2/3 and saved as JPEG, and one mirrored and saved as JPEG.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.core.errors import UserError
from evaluation.overlap import DEFAULT_DISTANCE, Hashes, Source, find
from tests.evaluation.test_evaluate import BUILD_CLASSES, FAST, main, tinted

FER_NAMES = {"anger": "angry", "happy": "happy", "sad": "sad"}


def release_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records" / "train.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sets(built, tmp_path_factory) -> dict:
    """'clean': 6 tinted copies of the portrait; 'leaky': those + 4 copies of training images; 'copies': only the
    4 copies; 'expected': test file -> (training sample id, kind, mirrored) of every copy."""
    from builder.example_faces import example_faces

    root = tmp_path_factory.mktemp("overlap-sets")
    portrait = example_faces()["portrait"]
    rng = np.random.default_rng(7)
    for kind in BUILD_CLASSES:
        for k in range(2):
            for name in ("clean", "leaky"):
                (root / name / FER_NAMES[kind]).mkdir(parents=True, exist_ok=True)
            image = tinted(portrait, kind, rng)
            image.save(root / "clean" / FER_NAMES[kind] / f"portrait-{k}.png")
            image.save(root / "leaky" / FER_NAMES[kind] / f"portrait-{k}.png")
    rows = release_rows(built)
    expected = {}
    for k, (row, how) in enumerate(zip(rows[::10], ("same", "same", "resized", "mirrored"))):
        for name in ("leaky", "copies"):
            folder = root / name / FER_NAMES[row["label_name"]]
            folder.mkdir(parents=True, exist_ok=True)
            source = built / row["image"]
            if how == "same":  # the released file, byte for byte
                target = folder / f"copy-{k}.png"
                shutil.copy(source, target)
            else:
                with Image.open(source) as im:
                    im = im.convert("RGB")
                    if how == "resized":
                        im = im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.BICUBIC)
                    else:
                        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    target = folder / f"copy-{k}.jpg"
                    im.save(target, "JPEG", quality=60 if how == "resized" else 90)
            expected[target.relative_to(root / name).as_posix()] = (
                row["sample_id"], "exact" if how == "same" else "near", how == "mirrored")
    return {"clean": root / "clean", "leaky": root / "leaky", "copies": root / "copies", "expected": expected}


def fresh(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "build"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("shards", "eval"))
    return copy


def run_args(out: Path, test: Path, backbones: dict, *extra) -> list:
    return [out, "--test", test, "--backbone", backbones["resnet"], *FAST, *extra]


def test_a_test_set_with_copies_of_training_images_is_refused_before_anything_is_written(built, sets, backbones,
                                                                                       tmp_path):
    out = fresh(built, tmp_path)
    with pytest.raises(UserError) as err:
        main(run_args(out, sets["leaky"], backbones))
    message = err.value.message
    assert message.startswith(f"--test '{sets['leaky']}' overlaps the training data (the build's 'train' split)")
    assert "2 exact and 2 near duplicate(s) (perceptual hash within 4 bits) among its 10 images" in message
    for test_id, (sample_id, kind, mirrored) in sets["expected"].items():  # all four examples, test order
        assert f"'{test_id}' ~ the build's 'train' split '{sample_id}'" in message
    assert "(same pixels)" in message and "mirror image)" in message
    assert "--allow-overlap" in err.value.fix
    assert not (out / "eval").exists()  # no crop, no hash cache, no result


def test_allow_overlap_runs_and_the_json_and_card_report_it(built, sets, backbones, tmp_path, capsys):
    out = fresh(built, tmp_path)
    assert main(run_args(out, sets["leaky"], backbones, "--allow-overlap", "--name", "leaky")) == 0
    assert "warning: --allow-overlap: the test set overlaps the training data" in capsys.readouterr().err
    result = json.loads((out / "eval" / "leaky.json").read_text())
    overlap = result["overlap"]
    assert {k: overlap[k] for k in ("threshold", "exact", "near", "test_images", "training_images", "allowed")} == {
        "threshold": DEFAULT_DISTANCE, "exact": 2, "near": 2, "test_images": 10, "training_images": {"train": 42},
        "allowed": True}
    found = {e["test"]: (e["training"], e["kind"], e["mirrored"]) for e in overlap["examples"]}
    assert found == sets["expected"]
    assert all(e["training_set"] == "train" for e in overlap["examples"])
    assert all(0 <= e["distance"] <= DEFAULT_DISTANCE for e in overlap["examples"])
    assert [e["distance"] for e in overlap["examples"] if e["kind"] == "exact"] == [0, 0]
    warning = ("> **Overlap with the training data**: 2 exact, 2 near duplicates (pHash distance <= 4) among the 10 "
               "test images; run with `--allow-overlap`")
    assert warning in (out / "eval" / "leaky.md").read_text()
    assert warning in (out / "README.md").read_text()
    assert len(list((out / "eval" / "cache").glob("hashes-*.npz"))) == 2  # the build's split and the test set

    # a clean test set: 0 / 0, and the build's hashes come from the cache
    assert main(run_args(out, sets["clean"], backbones, "--name", "clean")) == 0
    err = capsys.readouterr().err
    assert "hashing 6 test images" in err and "hashing 42 train images" not in err
    clean = json.loads((out / "eval" / "clean.json").read_text())["overlap"]
    assert (clean["exact"], clean["near"], clean["examples"], clean["allowed"]) == (0, 0, [], False)
    line = "Overlap with the training data: 0 exact, 0 near duplicates (pHash distance <= 4)."
    assert line in (out / "eval" / "clean.md").read_text().splitlines()
    assert "**Overlap" not in (out / "eval" / "clean.md").read_text()


def test_a_mixed_in_real_set_is_checked_too(built, sets, backbones, tmp_path):
    out = fresh(built, tmp_path)
    with pytest.raises(UserError) as err:  # the clean images are also real training images now
        main(run_args(out, sets["leaky"], backbones, "--train-real", sets["clean"], "--mix", "0.5"))
    message = err.value.message
    assert f"(the build's 'train' split and --train-real '{sets['clean']}')" in message
    assert "8 exact and 2 near duplicate(s)" in message
    assert f"~ --train-real '{sets['clean']}' 'angry/portrait-0.png' (same pixels)" in message
    assert not (out / "eval").exists()
    # --mix 1 trains on the real set only: copies of the build's images are no overlap then
    assert main(run_args(out, sets["copies"], backbones, "--train-real", sets["clean"], "--mix", "1",
                         "--name", "real-only")) == 0
    overlap = json.loads((out / "eval" / "real-only.json").read_text())["overlap"]
    assert (overlap["exact"], overlap["near"], overlap["training_images"]) == (0, 0, {"train_real": 6})


def hashes(values: list[int], mirrors: list[int] | None = None, pixels: list[int] | None = None,
           ok: list[bool] | None = None) -> Hashes:
    n = len(values)
    h = Hashes.empty(n)
    h.phash[:] = values
    h.mirror[:] = mirrors if mirrors is not None else [v ^ (2**64 - 1) for v in values]
    h.pixels[:, 0] = pixels if pixels is not None else range(100, 100 + n)
    h.ok[:] = ok if ok is not None else [True] * n
    return h


def test_find_counts_each_test_image_once_by_its_closest_match():
    base = 0x0123_4567_89AB_CDEF
    training = [Source("train", ["t0", "t1", "t2"], hashes([base, base ^ 0xFF00_0000_0000_0000, 0],
                                                                     pixels=[1, 2, 3])),
                Source("train_real", ["r0"], hashes([0x5555_5555_5555_5555], pixels=[9]))]
    test = hashes([
        base ^ 0b1111,  # 4 bits from t0: near
        base ^ 0b11111,  # 5 bits: not near at 4
        12345,  # same pixels as r0 (an exact copy, whatever its hash)
        0xAAAA_AAAA_AAAA_AAAA,  # its mirror is r0's hash
        base,  # unreadable: not counted
    ], mirrors=[0x3C3C_3C3C_3C3C_3C3C, 0xC3C3_C3C3_C3C3_C3C3, 0x3C3C_3C3C_3C3C_3C3C, 0x5555_5555_5555_5555 ^ 1, 0], pixels=[50, 51, 9, 52, 1], ok=[True] * 4 + [False])
    report = find(training, ["a", "b", "c", "d", "e"], test)
    assert (report["exact"], report["near"], report["test_images"]) == (1, 2, 4)
    assert report["training_images"] == {"train": 3, "train_real": 1}
    assert [(e["test"], e["training"], e["training_set"], e["kind"], e["distance"], e["mirrored"])
            for e in report["examples"]] == [("a", "t0", "train", "near", 4, False),
                                             ("c", "r0", "train_real", "exact", 0, False),
                                             ("d", "r0", "train_real", "near", 1, True)]
    assert find(training, list("abcde"), test, distance=5)["near"] == 3
    many = hashes([base] * 9, pixels=list(range(200, 209)))
    assert [e["test"] for e in find(training, list("abcdefghi"), many)["examples"]] == list("abcde")  # 5 shown


def test_the_default_distance_catches_reencoded_copies_of_real_photos_and_no_other_photo(portraits):
    """The measurement behind DEFAULT_DISTANCE, on the real photos: a 2/3 resize, JPEG quality 40 and a mirror
    image are near duplicates of their photo; no photo is a near duplicate of another."""
    from builder.example_faces import near_copy
    from evaluation.overlap import image_hashes

    names = sorted(portraits)

    def hashed(images: list) -> Hashes:
        h = Hashes.empty(len(images))
        for i, image in enumerate(images):
            digest, h.phash[i], h.mirror[i] = image_hashes(image.convert("RGB"))
            h.pixels[i] = np.frombuffer(digest, np.uint8)
        h.ok[:] = True
        return h

    originals = [Source("train", names, hashed([portraits[n] for n in names]))]
    for kind in ("resize", "jpeg", "flip"):
        report = find(originals, names, hashed([near_copy(portraits[n], kind) for n in names]), examples=99)
        assert (report["exact"], report["near"]) == (0, len(names)), kind
        assert [e["training"] for e in report["examples"]] == names, kind
    for k in range(len(names)):  # every photo against all the others
        others = [Source("train", names[:k] + names[k + 1:],
                         hashed([portraits[n] for n in names[:k] + names[k + 1:]]))]
        report = find(others, [names[k]], hashed([portraits[names[k]]]))
        assert (report["exact"], report["near"]) == (0, 0), names[k]


def test_hash_cache_is_read_without_pickle_and_matches(sets, tmp_path):
    from evaluation.overlap import Hasher
    from evaluation.sources import SetSpec, open_set

    imageset = open_set(SetSpec(sets["leaky"], "test", "--test"))
    logged = []
    first = Hasher(tmp_path, logged.append).hashes(imageset)
    assert not list(tmp_path.iterdir())  # nothing is written before save()
    hasher = Hasher(tmp_path, logged.append, workers=1)
    assert np.array_equal(hasher.hashes(imageset).phash, first.phash)
    hasher.save()
    (path,) = tmp_path.glob("hashes-*.npz")
    again = Hasher(tmp_path, logged.append).hashes(imageset)
    assert len(logged) == 2  # the third read came from the cache
    for field in ("pixels", "phash", "mirror", "ok"):
        assert np.array_equal(getattr(again, field), getattr(first, field))
    path.write_bytes(b"PK\x03\x04 not a zip")  # damaged: recomputed
    assert np.array_equal(Hasher(tmp_path, logged.append).hashes(imageset).pixels, first.pixels)
    assert len(logged) == 3
