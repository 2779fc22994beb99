"""The edit source end to end, on the packaged real photos with the built-in tiny pipeline, the real dlib identity
model and the real FER2013 expert: strength 0 returns the sources, identities are checked and counted, splits are
grouped by person, a resumed build is byte-identical; strength > 0 edits deterministically and every drop is
counted."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import dataset_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    from builder.example_faces import write_example_faces

    folder = tmp_path_factory.mktemp("edit") / "faces"
    write_example_faces(folder)
    return folder


def manifest(tmp: Path, faces: Path, **edit) -> Path:
    data = yaml.safe_load((ROOT / "manifests" / "edit-demo.yaml").read_text())
    data["edit"].update(folder=str(faces), **edit)
    data["labelling"].update(relabel=True, min_confidence=0.0, min_agreement=0.0)
    data["curation"]["dedupe"] = {"enabled": False}  # strength 0 makes a person's edits identical on purpose
    data["output"] = {"splits": {"train": 0.5, "validation": 0.25, "test": 0.25}, "shard_size": 6}
    path = tmp / "edit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def unedited(faces, tmp_path_factory):
    """A strength-0 build of the eight photos to three targets (the whole path, sources kept)."""
    from builder import api

    tmp = tmp_path_factory.mktemp("unedited")
    path = manifest(tmp, faces, strength=0.0, targets=["happy", "sad", "neutral"])
    out = tmp / "out"
    api.build(path, out, progress=False, log=lambda *a: None)
    return path, out


def test_strength_zero_returns_the_sources_and_keeps_their_identity(unedited, faces):
    from PIL import Image

    from builder.synthesis.edit import fit

    _, out = unedited
    stats = json.loads((out / "stats.json").read_text())
    rows = [r for split in dataset_rows(out).values() for r in split]
    assert rows, "a strength-0 build keeps faces"
    names = sorted(p.name for p in faces.iterdir())
    for row in rows:
        source, target = row["sample_id"].removeprefix("edit-demo-").split("-")
        assert names[int(source)] == row["source_id"] == row["source_identity"]
        assert row["target_label"] == ["neutral", "happy", "sad"].index(target)  # affectnet7's first classes
        expected = np.asarray(fit(Image.open(faces / row["source_id"]).convert("RGB"), 128, 128))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["image"]))), expected), row["sample_id"]
        assert row["identity_similarity"] >= 0.99  # the same pixels, detected twice
    drift = stats["edit"]["identity"]
    assert drift["measured"] == stats["stages"]["identity_drift"]["in"] and drift["dropped"] == {}
    assert sum(drift["histogram"]["counts"]) == drift["measured"]
    assert stats["edit"]["expression"]["judged"] == stats["stages"]["label"]["in"]
    assert stats["requested"]["classes"] == {"neutral": 8, "happy": 8, "sad": 8, "surprise": 0, "fear": 0,
                                             "disgust": 0, "anger": 0}
    card = (out / "README.md").read_text()
    assert "## Edits" in card and "Consent, as declared by the builder" in card
    assert "edited photographs of real people" in card
    assert (out / "figures" / "identity_similarity.png").is_file()


def test_no_person_is_in_two_splits(unedited):
    _, out = unedited
    people = {split: {r["source_identity"] for r in rows} for split, rows in dataset_rows(out).items()}
    assert len(people) >= 2, people
    splits = list(people)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not people[a] & people[b], (a, b)
    counts = {split: len(rows) for split, rows in dataset_rows(out).items()}
    assert all(n % 3 == 0 for n in counts.values()), "a person's three edits stay together"


def test_a_resumed_edit_build_is_identical(unedited, tmp_path):
    from builder import api

    path, out = unedited
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for stage in ("edit", "identity_drift", "label"):
        shutil.rmtree(copy / "shards" / stage / "00001")
    (copy / ".release.json").unlink()
    api.build(path, copy, progress=False, log=lambda *a: None)
    assert dataset_rows(copy) == dataset_rows(out)


def test_edits_are_deterministic_and_every_drop_is_counted(faces, tmp_path):
    """Strength 0.5 with the random tiny pipeline: the edits are not faces, so the faces stage drops them all,
    each counted; two builds give the same images byte for byte, and they differ from the sources."""
    from PIL import Image

    from builder import api
    from builder.synthesis.edit import fit

    two = tmp_path / "two"
    two.mkdir()
    for name in ("group-1.png", "portrait.png"):
        shutil.copy(faces / name, two / name)
    path = manifest(tmp_path, two, strength=0.5, targets=["happy", "anger"])
    images = []
    for name in ("a", "b"):
        api.build(path, tmp_path / name, progress=False, log=lambda *a: None, allow_empty=True)
        images.append({p.name: p.read_bytes() for p in sorted((tmp_path / name / "shards" / "edit").rglob("*.png"))})
    assert images[0] == images[1] and len(images[0]) == 4 + 2, "4 edits and 2 source crops"
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["stages"]["edit"] == {**stats["stages"]["edit"], "in": 4, "kept": 4}
    funnel = {k: v["dropped"] for k, v in stats["stages"].items()}
    assert sum(sum(d.values()) for d in funnel.values()) == 4, funnel
    edit = Image.open(next((tmp_path / "a" / "shards" / "edit").rglob("edit-demo-0000000-happy.png")))
    source = fit(Image.open(two / "group-1.png").convert("RGB"), 128, 128)
    assert np.abs(np.asarray(edit, int) - np.asarray(source, int)).mean() > 1


def test_the_shipped_demo_validates():
    from builder.manifest.loader import load_manifest

    loaded = load_manifest(ROOT / "manifests" / "edit-demo.yaml")
    assert loaded.edit.targets == ["happy", "sad", "surprise", "anger"] and not loaded.edit.sources_are_synthetic


def test_a_guided_edit_build_records_its_guide(faces, tmp_path):
    """generator.guidance applies to edits: the edit stage loads the guide, records it, the card names it and the
    guard warning (the guide is the only labeller) is raised."""
    from builder import api

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(faces / "portrait.png", one / "portrait.png")
    path = manifest(tmp_path, one, strength=0.25, targets=["happy"])
    data = yaml.safe_load(path.read_text())
    data["generator"]["guidance"] = {"classifier": "mini-xception-fer2013", "scale": 2.0}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    messages = []
    api.build(path, tmp_path / "out", progress=False, log=messages.append, allow_empty=True)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    guide = stats["edit"]["guidance"]
    assert guide["classifier"] == "mini-xception-fer2013" and guide["end_step"] == 2  # round(8 * 0.25) steps
    assert "`mini-xception-fer2013`" in (tmp_path / "out" / "README.md").read_text()
    assert any("is also the only labeller" in m for m in messages), messages


def test_region_face_edits_inside_the_face_box_and_drops_faceless_sources(faces, tmp_path):
    """edit.region: face: a source without a face is dropped as no_face_in_source (counted); one with a face is
    edited (what the mask keeps is shown on latents in test_editing.py)."""
    from PIL import Image

    from builder import api

    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(faces / "portrait.png", two / "portrait.png")
    Image.new("RGB", (128, 128), (120, 110, 100)).save(two / "wall.png")
    path = manifest(tmp_path, two, strength=0.5, targets=["happy", "anger"], region="face")
    api.build(path, tmp_path / "out", progress=False, log=lambda *a: None, allow_empty=True)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stages"]["edit"]["dropped"] == {"no_face_in_source": 2}
    edits = {p.name: np.asarray(Image.open(p), int) for p in (tmp_path / "out" / "shards" / "edit").rglob("*.png")
             if "sources" not in p.parts}
    assert sorted(edits) == ["edit-demo-0000000-anger.png", "edit-demo-0000000-happy.png"]
    happy, anger = edits["edit-demo-0000000-happy.png"], edits["edit-demo-0000000-anger.png"]
    assert not np.array_equal(happy, anger)
