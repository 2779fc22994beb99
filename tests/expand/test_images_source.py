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
from builder.core.records import Record
from builder.example_faces import write_example_faces
from curation.whole_set.select import TopKPerClass
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


def listed_source(name: str, spec):
    """What ``image_specs`` reads of a manifest: the listing of ``spec`` and the sample ids of ``name``."""
    from builder.expand.images import list_images

    class Source:
        listing = list_images(spec)

        @staticmethod
        def sample_id(i: int) -> str:
            return f"{name}-{i:07d}"

    return Source


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
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature

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
    from builder.core.shards import ShardStore, run_stage_on_shard
    from builder.expand.images import image_specs
    from builder.expand.ingest import IngestStage
    from builder.manifest import ImagesSource

    folder = tmp_path / "photos"
    folder.mkdir()
    upright = Image.open(faces / "astronaut.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    spec = ImagesSource(folder=str(folder))

    M = listed_source("exif", spec)

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


# -- issue 17: formats, damaged files, the listing's skips, write faults --------------------------------------
def photo_manifest(where: Path, folder: Path, name: str, **images) -> Path:
    """The example manifest over ``folder`` (absolute), written to ``where/name.yaml``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = name
    data["images"] = {"folder": str(folder), **images}
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


SUFFIX_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def stored_images(out: Path) -> dict[str, bytes]:
    """Every image file the ingest stage committed, by path relative to the build folder."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "shards" / "ingest").glob("0*/images/*"))}


def records_of(out: Path, stage: str, name: str) -> list[Record]:
    return [Record.from_json(line) for shard in sorted((out / "shards" / stage).glob("0*"))
            for line in (shard / name).read_text().splitlines()]


def test_listing_counts_what_it_skips_and_keeps_fingerprints(tmp_path):
    import hashlib
    import os

    from builder.expand.images import list_images
    from builder.manifest import ImagesSource

    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    for path in (folder / "a.png", folder / "sub" / "b.png", elsewhere / "c.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    (folder / "d.gif").write_bytes(encoded(Image.new("RGB", (8, 8)), "GIF"))
    old = hashlib.sha256("".join(f"{rel}\t{(folder / rel).stat().st_size}\n"
                                 for rel in ("a.png", "d.gif", "sub/b.png")).encode()).hexdigest()
    clean = list_images(ImagesSource(folder=str(folder)))
    assert clean.paths == ("a.png", "d.gif", "sub/b.png") and clean.skipped == ()
    assert clean.sha256 == old  # a folder that skips nothing keeps the fingerprint it always had

    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / ".git").mkdir()
    (folder / ".git" / "x.png").write_bytes(b"")
    hidden = list_images(ImagesSource(folder=str(folder)))
    assert dict(hidden.skipped) == {"hidden": 2} and hidden.reported_skips() == {} and hidden.sha256 == old

    (folder / "notes.txt").write_text("not a picture")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "out.png").symlink_to(elsewhere / "c.png")
    (folder / "out-dir").symlink_to(elsewhere)
    (folder / "sub" / "up").symlink_to(folder)
    (folder / "alias").symlink_to(folder / "sub")  # a linked folder inside: entered
    os.mkfifo(folder / "pipe.png")
    listing = list_images(ImagesSource(folder=str(folder)))
    assert listing.paths == ("a.png", "alias/b.png", "d.gif", "sub/b.png")
    assert listing.reported_skips() == {"dangling_link": 1, "link_loop": 2, "link_outside_folder": 2,
                                        "not_a_file": 1, "unsupported_format": 1}
    assert listing.sha256 != old

    follow = list_images(ImagesSource(folder=str(folder), follow_links_outside=True))
    assert follow.paths == ("a.png", "alias/b.png", "d.gif", "out-dir/c.png", "out.png", "sub/b.png")
    assert "link_outside_folder" not in follow.reported_skips()

    flat = list_images(ImagesSource(folder=str(folder), recursive=False))
    assert flat.paths == ("a.png", "d.gif") and dict(flat.skipped)["subfolder"] == 2  # sub, alias
    assert "subfolder" not in flat.reported_skips()


def test_follow_links_outside_is_left_out_of_the_fingerprint_at_its_default(faces):
    from builder.expand.images import listed
    from builder.manifest import Manifest

    def manifest(data):
        return listed(Manifest.model_validate(data))

    base = yaml.safe_load(EXAMPLE.read_text())
    base["images"]["folder"] = str(faces)
    plain = manifest(base)
    base["images"]["follow_links_outside"] = False
    explicit = manifest(base)
    assert "follow_links_outside" not in plain.identity()["images"]
    assert plain.identity() == explicit.identity()
    base["images"]["follow_links_outside"] = True
    assert manifest(base).identity()["images"]["follow_links_outside"] is True


def test_ingest_stores_bytes_that_match_their_suffix(faces, tmp_path):
    from builder.core.shards import ShardStore, run_stage_on_shard
    from builder.expand.images import image_specs
    from builder.expand.ingest import IngestStage
    from builder.manifest import ImagesSource

    photo = Image.open(faces / "portrait.png").convert("RGB")
    grey16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    folder = tmp_path / "photos"
    folder.mkdir()
    files = {"a-gif-named.png": encoded(photo, "GIF"), "b.tif": encoded(photo, "TIFF"),
             "c.jpeg": encoded(photo, "JPEG", quality=90), "d.bmp": encoded(photo, "BMP"),
             "e.png": encoded(photo, "PNG"), "f-16bit.png": encoded(Image.fromarray(grey16), "PNG"),
             "g-jpeg-named.png": encoded(photo, "JPEG", quality=90), "h.webp": encoded(photo, "WEBP", quality=90),
             "i-rgba.png": encoded(photo.convert("RGBA"), "PNG")}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    spec = ImagesSource(folder=str(folder))

    M = listed_source("formats", spec)

    stage = IngestStage(spec, M.listing)
    (tmp_path / "elsewhere.png").write_bytes(files["e.png"])
    kept = run_stage_on_shard(stage, ShardStore(tmp_path / "build"), 0, image_specs(M, range(len(files))))
    stored = {r.source: tmp_path / "build" / r.image for r in kept}
    assert sorted(stored) == sorted(files)
    for source, path in stored.items():
        with Image.open(path) as im:
            assert im.format == SUFFIX_FORMAT[path.suffix], (source, path.name, im.format)
            assert im.mode == "RGB" or source == "c.jpeg"
    kept_as_is = {s: p.suffix for s, p in stored.items() if p.read_bytes() == files[s]}
    assert kept_as_is == {"c.jpeg": ".jpeg", "e.png": ".png", "g-jpeg-named.png": ".jpg", "h.webp": ".webp"}
    assert np.abs(np.asarray(Image.open(stored["f-16bit.png"]))[..., 0].astype(int)
                  - np.asarray(photo.convert("L")).astype(int)).max() == 0  # v * 257 stored as v

    (folder / "e.png").unlink()
    (folder / "e.png").symlink_to(tmp_path / "elsewhere.png")  # swapped for a link after the listing
    again = list(stage.process(image_specs(M, range(len(files))), ShardStore(tmp_path / "again").context("ingest", 0)))
    dropped = {r.source: r.drop.reason for r in again if r.drop}
    assert dropped == {"e.png": "link_outside_folder"}


@pytest.fixture(scope="module")
def formats_build(faces, tmp_path_factory):
    """A build over a 16-bit grey face, a GIF, TIFF bytes named .png, a cut-out with transparency, a JPEG
    garbled so the decoder fills its tail with grey, and files the listing skips."""
    work = tmp_path_factory.mktemp("formats")
    folder = work / "photos"
    folder.mkdir()
    portrait = Image.open(faces / "portrait.png").convert("RGB")
    Image.fromarray(np.asarray(portrait.convert("L")).astype(np.uint16) * 257).save(folder / "portrait16.png")
    Image.open(faces / "astronaut.png").convert("RGB").save(folder / "astronaut.gif")
    (folder / "group-4.png").write_bytes(encoded(Image.open(faces / "group-4.png").convert("RGB"), "TIFF"))
    cutout = Image.open(faces / "group-2.png").convert("RGBA")
    alpha = np.full(cutout.size[::-1], 255, np.uint8)
    alpha[:, : cutout.width // 8] = 0  # a transparent strip on the left
    cutout.putalpha(Image.fromarray(alpha))
    cutout.save(folder / "group-2.png")
    jpeg = encoded(Image.open(faces / "astronaut.png").convert("RGB"), "JPEG", quality=90)
    (folder / "garbled.jpg").write_bytes(jpeg[: len(jpeg) * 6 // 10] + b"\xff\xd9")
    (folder / "notes.txt").write_text("not a picture")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "dangling.png").symlink_to(work / "missing.png")
    shutil.copy(faces / "group-6.png", work / "outside.png")
    (folder / "outside.png").symlink_to(work / "outside.png")
    manifest = photo_manifest(work, folder, "formats", top_k_per_class=None)
    out = work / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    return folder, out


def test_a_16_bit_grey_face_is_labelled_and_released_as_8_bit(formats_build):
    folder, out = formats_build
    faces_dropped = {r.source: r.drop.reason for r in rejected(out, "faces")}
    assert "portrait16.png" not in faces_dropped, faces_dropped  # was no_face: a white frame after convert("RGB")
    labelled = {r.source: r for r in records_of(out, "label", "records.jsonl")}
    assert labelled["portrait16.png"].labelling["disposition"] == "labelled" and labelled["portrait16.png"].label >= 0
    path = out / labelled["portrait16.png"].image
    with Image.open(path) as im:
        assert (im.format, im.mode, path.suffix) == ("PNG", "RGB", ".png")
        grey = np.asarray(im).astype(int)
    source = np.asarray(Image.open(folder / "portrait16.png")).astype(int)
    assert np.abs(grey[..., 0] - np.rint(source / 257)).max() == 0 and (grey[..., 0] == grey[..., 2]).all()
    released = {r["source_file"]: r for r in load_from_disk(str(out / "hf"))["train"]}
    assert "portrait16.png" in released


def test_released_bytes_match_their_suffix_and_skips_are_counted(formats_build):
    _, out = formats_build
    for rel in stored_images(out):
        with Image.open(out / rel) as im:
            assert im.format == SUFFIX_FORMAT[Path(rel).suffix], rel
    by_source = {r.source: r for r in records_of(out, "ingest", "records.jsonl")}
    assert sorted(by_source) == ["astronaut.gif", "group-2.png", "group-4.png", "portrait16.png"]
    assert all(by_source[s].image.endswith(".png") for s in by_source)
    assert (out / by_source["group-4.png"].image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # was TIFF bytes
    with Image.open(out / by_source["group-2.png"].image) as im:
        assert im.mode == "RGB" and (np.asarray(im)[:, :4] == 255).all()  # transparency on white

    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["ingest"]["dropped"] == {"corrupt_image": 1}
    assert [(r.source, r.drop.reason) for r in rejected(out, "ingest")] == [("garbled.jpg", "corrupt_image")]
    assert "flat mid-grey" in rejected(out, "ingest")[0].drop.detail
    assert stats["source"]["count"] == 5
    assert stats["source"]["skipped"] == {"dangling_link": 1, "link_outside_folder": 1, "unsupported_format": 1}


@pytest.fixture(scope="module")
def uninterrupted(faces, tmp_path_factory):
    """The example manifest over the 8 photos (2 shards of 4), built without a fault."""
    work = tmp_path_factory.mktemp("faults")
    manifest = photo_manifest(work, faces, "faults")
    out = work / "reference"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    return manifest, out


def assert_same_release(out: Path, reference: Path) -> None:
    from tests.conftest import dataset_rows, stage_counts

    assert dataset_rows(out) == dataset_rows(reference)
    assert stage_counts(out) == stage_counts(reference)
    assert stored_images(out) == stored_images(reference)
    for path in sorted((reference / "rejected").glob("*.jsonl")):
        assert (out / "rejected" / path.name).read_text() == path.read_text(), path.name
    assert not list(out.rglob(".tmp-*"))


def test_a_full_disk_while_ingesting_stops_the_run_and_loses_no_image(uninterrupted, tmp_path, monkeypatch, capsys):
    import errno
    import os

    from builder.core.shards import ShardStore

    manifest, reference = uninterrupted
    out = tmp_path / "out"
    real_write = Path.write_bytes
    ingested: list[str] = []

    def full_disk(self, data):
        if "shards/ingest" in self.as_posix():
            ingested.append(self.name)
            if len(ingested) == 6:  # the second image of the second shard
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    capsys.readouterr()
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"\nerror: {out}: cannot write ({out}/shards/ingest/.tmp-00001-" in err, err
    assert "the disk is full" in err and "\n  fix: free space" in err and "Traceback" not in err
    store = ShardStore(out)
    assert store.is_done("label", 0) and not store.is_done("ingest", 1)  # shard 1 was not committed
    assert not list(out.rglob(".tmp-*")) and store.rejected("ingest", 0) == []

    monkeypatch.undo()
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert_same_release(out, reference)


def test_a_file_size_limit_while_ingesting_stops_the_run_and_loses_no_image(uninterrupted, tmp_path):
    """A real EFBIG: the build runs under RLIMIT_FSIZE (SIGXFSZ ignored) below the astronaut photo's size."""
    import subprocess
    import sys

    manifest, reference = uninterrupted
    out = tmp_path / "out"
    limit = 200_000  # astronaut.png, the first listed image, has 424 kB
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
              "from builder.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", script, str(manifest), "--out", str(out), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    assert f"error: {out}: cannot write (" in run.stderr and "a file would exceed the file-size limit" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (out / "shards" / "ingest" / "00000").exists() and not list(out.rglob(".tmp-*"))

    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert_same_release(out, reference)
