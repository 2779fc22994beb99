"""The 'images' source: label an existing folder or dataset of real face photos, end to end.

Real photos (insightface's portrait and group photo, skimage's astronaut), the
real MTCNN weights and the real FER2013 expert; nothing about a model is faked.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Value, load_from_disk
from huggingface_hub import DatasetCard
from PIL import Image

from builder.cli import main
from builder.example_faces import write_example_faces
from builder.records import Record
from curation.select import TopKPerClass
from tests.conftest import ROOT

EXAMPLE = ROOT / "manifests" / "label-photos.yaml"


@contextmanager
def chdir(folder: Path):  # contextlib.chdir needs Python 3.11
    import os

    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_example_faces(tmp_path_factory.mktemp("faces") / "faces")[0].parent


@pytest.fixture(scope="module")
def photo_build(faces, tmp_path_factory):
    """The shipped example manifest, run from a folder whose out/faces holds the photos plus four bad files."""
    work = tmp_path_factory.mktemp("work")
    folder = work / "out" / "faces"
    shutil.copytree(faces, folder)
    (folder / "broken.jpg").write_bytes((ROOT / "tests" / "__init__.py").read_bytes() + b"\xff\xd8\xff")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(folder / "blank.png")
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))
    Image.fromarray(np.stack([ramp, ramp.T, ramp // 2], -1)).save(folder / "gradient.png")
    import insightface

    shutil.copy(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg", folder / "group.jpg")
    with chdir(work):
        assert main([str(EXAMPLE), "--no-progress"]) == 0
    return work, work / "out" / "label-photos"


def rejected(out: Path, stage: str) -> list[Record]:
    return [Record.from_json(line) for line in (out / "rejected" / f"{stage}.jsonl").read_text().splitlines()]


def test_example_labels_a_folder_of_real_photos(photo_build):
    _, out = photo_build
    stats = json.loads((out / "stats.json").read_text())
    funnel = {name: (s["in"], s["kept"], s["dropped"]) for name, s in stats["stages"].items()}
    assert funnel["ingest"] == (12, 11, {"unreadable_image": 1})
    assert funnel["integrity"] == (11, 10, {"blank_image": 1})
    assert funnel["faces"] == (10, 8, {"multiple_faces": 1, "no_face": 1})
    assert funnel["label"] == (8, 8, {}) and funnel["dedupe"] == (6, 6, {})
    assert [r.source for r in rejected(out, "ingest")] == ["broken.jpg"]
    assert [r.source for r in rejected(out, "integrity")] == ["blank.png"]
    assert sorted(r.source for r in rejected(out, "faces")) == ["gradient.png", "group.jpg"]

    ds = load_from_disk(str(out / "hf"))["train"]
    assert ds.features["label"] == ClassLabel(names=["neutral", "happy", "sad", "surprise", "fear", "disgust",
                                                     "anger"])
    assert ds.features["source_file"] == Value("string") and "prompt" not in ds.features
    rows = {r["source_file"]: r for r in ds}
    names = ds.features["label"].names
    # The smiling astronaut and the broadest smiles of the group photo are happy; the unsmiling
    # person (second from the left, looked at one by one) is neutral.
    assert names[rows["astronaut.png"]["label"]] == "happy"
    assert names[rows["group-4.png"]["label"]] == "happy"
    assert names[rows["group-2.png"]["label"]] == "neutral"
    for row in rows.values():
        assert row["label_disposition"] == "labelled" and row["target_label"] is None
        assert row["label_confidence"] >= 0.5
        assert abs(sum(row["probs_fer2013"]) - 1) < 1e-4
    assert Image.open(out / "shards" / "ingest" / "00000" / "images" / "label-photos-0000000.png").size == (512, 512)


def test_top_k_keeps_the_most_confident_per_class(photo_build):
    _, out = photo_build
    stats = json.loads((out / "stats.json").read_text())
    labelled = [Record.from_json(line) for shard in sorted((out / "shards" / "label").glob("0*"))
                for line in (shard / "records.jsonl").read_text().splitlines()]
    dropped = rejected(out, "select")
    assert stats["stages"]["select"]["dropped"] == {"below_top_k": len(dropped)} and dropped
    released = {r["source_file"] for r in load_from_disk(str(out / "hf"))["train"]}
    for label in {r.label for r in labelled}:
        members = sorted((r for r in labelled if r.label == label),
                         key=lambda r: (-r.labelling["confidence"], r.sample_id))
        assert {r.source for r in members[:3]} <= released
        assert {r.source for r in members[3:]} == {r.source for r in dropped if r.label == label}
    assert stats["released"]["total"] == len(released) == 8 - len(dropped)
    assert stats["labelling"]["dispositions"] == {"labelled": 8}


def test_card_and_stats_of_a_labelled_collection(photo_build):
    _, out = photo_build
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generator"] is None and stats["requested"] == {"total": 12, "classes": None}
    assert stats["source"]["kind"] == "folder" and stats["source"]["count"] == 12
    card = DatasetCard.load(out / "README.md")
    assert "pseudo-labels" in card.data.tags and "synthetic-data" not in card.data.tags
    assert "contains photographs of real people" in card.text
    assert f"{stats['released']['total']} of 12 existing images" in card.text
    for name, s in stats["stages"].items():
        assert f"| {name} | {s['in']} | {s['kept']} |" in card.text


def test_rerun_is_a_no_op_and_a_changed_folder_is_refused(photo_build, capsys, monkeypatch):
    work, out = photo_build
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main([str(EXAMPLE), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    extra = work / "out" / "faces" / "zz-new.png"
    shutil.copy(work / "out" / "faces" / "portrait.png", extra)
    try:
        assert main([str(EXAMPLE), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "different manifest" in err and "images.listing_sha256" in err
    finally:
        extra.unlink()


def test_a_finished_build_releases_from_another_directory(photo_build, tmp_path, capsys, monkeypatch):
    """images.folder is relative to where the build ran; build.json records the listing, so a release (or
    review) of the finished build does not need the source, from any directory."""
    work, out = photo_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert json.loads((copy / "build.json").read_text())["listing"]["count"] == 12
    assert main(["release", str(copy), "--no-review"]) == 0
    assert load_from_disk(str(copy / "hf"))["train"].num_rows == load_from_disk(str(out / "hf"))["train"].num_rows

    recorded = json.loads((copy / "build.json").read_text())
    del recorded["listing"]  # as written before listings were recorded
    (copy / "build.json").write_text(json.dumps(recorded))
    capsys.readouterr()
    assert main(["release", str(copy), "--no-review"]) == 2
    assert "images.folder 'out/faces' is not a folder" in capsys.readouterr().err
    monkeypatch.chdir(work)
    assert main([str(EXAMPLE), "--out", str(copy), "--no-progress"]) == 0  # a resume records it again
    assert "nothing to do" in capsys.readouterr().err
    assert json.loads((copy / "build.json").read_text())["listing"] == json.loads((out / "build.json").read_text())["listing"]


def test_dry_run_of_an_images_manifest(photo_build, capsys, monkeypatch):
    work, _ = photo_build
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main([str(EXAMPLE), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "label 12 existing images from folder out/faces" in text
    assert "stages per shard: ingest, integrity, faces, label, then select, dedupe, release" in text
    assert "the 3 most confident per class" in text


def test_a_datasets_dataset_as_source(faces, tmp_path, capsys):
    from datasets import Dataset, DatasetDict, Image as ImageFeature

    pictures = [Image.open(faces / "astronaut.png"), Image.open(faces / "portrait.png"),
                Image.new("RGB", (64, 64), (0, 0, 0))]
    DatasetDict({"unlabelled": Dataset.from_dict({"photo": pictures}).cast_column("photo", ImageFeature())}
                ).save_to_disk(str(tmp_path / "ds"))
    manifest = {"name": "from-ds", "seed": 1, "labels": {"label_map": "rafdb"},
                "images": {"dataset": str(tmp_path / "ds"), "split": "unlabelled", "image_column": "photo"},
                "labelling": {"experts": [{"name": "fer", "model": "mini-xception-fer2013"}]},
                "output": {"shard_size": 2}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    ds = load_from_disk(str(tmp_path / "out" / "hf"))["train"]
    assert sorted(ds["source_file"]) == ["0", "1"]  # row 2 (all black) is dropped as blank_image
    assert {ds.features["label"].names[x] for x in ds["label"]} == {"happiness"}
    assert rejected(tmp_path / "out", "integrity")[0].drop.reason == "blank_image"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["stages"]["faces"]["kept"] == 2

    manifest["images"]["split"] = "train"
    path.write_text(yaml.safe_dump(manifest))
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: images.split 'train' is not in" in err and "fix: set images.split" in err


def test_exif_rotated_photo_is_stored_upright(faces, tmp_path):
    from builder.ingest import IngestStage
    from builder.manifest import ImagesSource
    from builder.shards import ShardStore, run_stage_on_shard
    from builder.sources import image_specs, list_images

    folder = tmp_path / "photos"
    folder.mkdir()
    upright = Image.open(faces / "astronaut.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    spec = ImagesSource(folder=str(folder))

    class M:  # the two fields image_specs reads
        name, listing = "exif", list_images(spec)

    stage = IngestStage(spec, M.listing)
    stage.setup()
    kept = run_stage_on_shard(stage, ShardStore(tmp_path / "build"), 0, image_specs(M, range(1)))
    stored = Image.open(tmp_path / "build" / kept[0].image)
    assert stored.format == "PNG" and stored.size == upright.size
    diff = np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(upright, dtype=np.int16)).mean()
    assert diff < 3  # only JPEG loss remains


def test_top_k_is_deterministic_and_breaks_ties_by_sample_id():
    def rec(i: int, label: int, confidence: float) -> Record:
        return Record(sample_id=f"s-{i}", index=i, label=label, label_name=str(label), au=[], attributes={},
                      prompt="", negative_prompt="", seed=0, labelling={"confidence": confidence})

    records = [rec(0, 0, 0.9), rec(1, 0, 0.7), rec(2, 0, 0.7), rec(3, 0, 0.95), rec(4, 1, 0.6)]
    for order in (records, records[::-1]):
        out = list(TopKPerClass(2).process([Record.from_json(r.to_json()) for r in order]))
        assert sorted(r.sample_id for r in out if r.drop is None) == ["s-0", "s-3", "s-4"]
        assert {r.sample_id: r.drop.reason for r in out if r.drop} == {"s-1": "below_top_k", "s-2": "below_top_k"}
    out = list(TopKPerClass(3).process([Record.from_json(r.to_json()) for r in records]))
    assert [r.sample_id for r in out if r.drop] == ["s-2"]  # the tie at 0.7 goes to the smaller id
