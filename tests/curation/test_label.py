"""Expert labelling with MTCNN face detection in front, on real photos and real weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.manifest import ExpertSpec, FaceCrop, Labelling
from builder.manifest.label_maps import LABEL_MAPS, canonical
from curation.faces.detect import FacePolicy, align, load_detector
from curation.labelling.experts import load_experts

RAFDB = LABEL_MAPS["rafdb"]


def insightface_image(name: str) -> np.ndarray:
    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / name
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def detector():
    return load_detector()


@pytest.fixture(scope="module")
def fer_expert():
    return load_experts([ExpertSpec(name="fer2013", model="mini-xception-fer2013")])[0]


def expert_top(expert, image, detection, labels=RAFDB) -> str:
    crop = align(image, detection.landmarks, 112, FaceCrop().margin)
    probs = expert.predict(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255, labels)[0]
    return canonical(labels[int(np.argmax(probs))])


def test_real_expert_labels_the_smiling_faces_happy(detector, fer_expert):
    from skimage import data

    policy = FacePolicy()
    for image in (data.astronaut(), insightface_image("Tom_Hanks_54745.png")):
        faces = policy.keep(detector.detect(image))
        assert len(faces) == 1
        assert expert_top(fer_expert, image, faces[0]) == "happy"

    # t1.jpg: six people. Looked at one by one, left to right: slight smile with closed eyes (not asserted),
    # not smiling, broad smile, broad smile, not smiling (profile), smiling.
    group = insightface_image("t1.jpg")
    faces = sorted(policy.keep(detector.detect(group)), key=lambda d: d.box[0])
    assert len(faces) == 6, "two tiny low-score detections in the background are filtered out by the policy"
    tops = [expert_top(fer_expert, group, f) for f in faces]
    assert [tops[i] for i in (2, 3, 5)] == ["happy"] * 3
    assert "happy" not in (tops[1], tops[4])


def test_detections_and_landmarks_are_plausible(detector):
    from skimage import data

    face = FacePolicy().keep(detector.detect(data.astronaut()))[0]
    x1, y1, x2, y2 = face.box
    assert 170 < x1 < 200 and 50 < y1 < 80 and 255 < x2 < 285 and 160 < y2 < 190 and face.score > 0.99
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    assert lex < nx < rex and lmx < rmx, "left/right order as seen in the image"
    assert max(ley, rey) < ny < min(lmy, rmy), "eyes above the nose above the mouth"
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
    assert detector.detect(np.full((200, 200, 3), 127, np.uint8)) == []


def test_alignment_puts_the_landmarks_on_the_template():
    from curation.faces.detect import similarity_transform, template

    target = template(64, 0.2)
    angle, scale = 0.4, 2.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (target - 32) @ rotation.T * scale + np.array([150.0, 120.0])
    np.testing.assert_allclose(similarity_transform(points, target)[:, :2] @ points.T
                               + similarity_transform(points, target)[:, 2:], target.T, atol=1e-9)
    image = np.zeros((300, 300, 3), np.uint8)
    yy, xx = np.mgrid[0:300, 0:300]
    for x, y in points:
        image[(xx - x) ** 2 + (yy - y) ** 2 < 9] = 255
    out = align(image, points, 64, 0.2)[..., 0].astype(float)
    ys, xs = np.nonzero(out > 60)
    for x, y in target:  # each dot's centre of mass lands within 0.25 px of its template point
        near = (abs(xs - x) < 4) & (abs(ys - y) < 4)
        w = out[ys[near], xs[near]]
        assert abs(np.average(xs[near], weights=w) - x) < 0.25 and abs(np.average(ys[near], weights=w) - y) < 0.25


def record(i: int, image: str | None, label: str) -> Record:
    return Record(sample_id=f"s-{i}", index=i, label=RAFDB.index(label), label_name=label, au=[], attributes={},
                  prompt="p", negative_prompt="", seed=i, image=image)


def run_label_stage(tmp_path, labelling: Labelling, records):
    from curation.labelling.stage import LabelStage

    stage = LabelStage(labelling, RAFDB, "cpu")
    stage.setup()
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(stage, store, 0, records)
    return stage, kept, {r.sample_id: r for r in store.rejected("label", 0)}


@pytest.fixture
def photo_folder(tmp_path):
    from skimage import data

    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.full((128, 128, 3), 127, np.uint8)).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_label_stage_dispositions_on_real_photos(photo_folder):
    spec = Labelling(experts=[ExpertSpec(name="fer2013", model="mini-xception-fer2013")])
    records = [record(0, "img/astronaut.png", "happiness"), record(1, "img/astronaut.png", "sadness"),
               record(2, "img/grey.png", "happiness"), record(3, "img/broken.png", "happiness")]
    stage, kept, rejected = run_label_stage(photo_folder, spec, records)
    assert [r.sample_id for r in kept] == ["s-0"]
    confirmed = kept[0].labelling
    assert confirmed["disposition"] == "confirmed" and confirmed["final"] == "happiness" and confirmed["confidence"] > 0.9
    assert len(confirmed["experts"]["fer2013"]) == len(RAFDB) and kept[0].face["count"] == 1
    assert {k: r.drop.reason for k, r in rejected.items()} == {"s-1": "label_mismatch", "s-2": "no_face",
                                                               "s-3": "error"}
    assert rejected["s-1"].labelling["target"] == "sadness", "predictions are kept on rejected records for review"
    assert stage.meta()["experts"][0]["unknown_classes"] == [], "FER2013's seven classes cover RAF-DB's"

    relabel = spec.model_copy(update={"relabel": True})
    again = photo_folder / "again"
    shutil.copytree(photo_folder / "img", again / "img")
    _, kept, _ = run_label_stage(again, relabel, [record(1, "img/astronaut.png", "sadness")])
    assert kept[0].label_name == "happiness" and kept[0].labelling["disposition"] == "relabelled"
    assert kept[0].labelling["target"] == "sadness"


def test_a_labelled_build_records_labelling_and_warns_about_the_guide(tmp_path, write_manifest, run_cli):
    manifest = write_manifest({
        "generator": {"guidance": {"classifier": "mini-xception-fer2013"}},
        "labelling": {"experts": [{"name": "fer2013", "model": "mini-xception-fer2013"}],
                      "faces": {"min_score": 0.0, "min_size": 8}},
    })
    result = run_cli(str(manifest), "--out", str(tmp_path / "out"), "--no-progress", "--allow-empty")  # not faces
    assert result.returncode == 0, result.stderr
    assert "also the only labeller" in result.stdout + result.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    lab = stats["labelling"]
    assert lab["guide_is_only_labeller"] and lab["experts"][0]["sha256"].startswith("59534287")
    label_stage = stats["stages"]["label"]
    assert label_stage["in"] == stats["stages"]["integrity"]["kept"]
    assert sum(lab["dispositions"].values()) + label_stage["dropped"].get("no_face", 0) == label_stage["in"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "also the only labeller" in card and "`probs_<name>`" in card
