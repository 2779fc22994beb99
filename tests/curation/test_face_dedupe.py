"""Embedding dedupe, dedupe against a reference set, and identity clusters, on real photos with real dlib weights.

Photos and near copies come from ``builder.example_faces`` (see tests/people.py). Measured with dlib on
them: a 12-15 % crop or a 5 degree rotation keeps the face at cosine similarity 0.993-1.000 to the
original, while the crop moves its perceptual hash 24-32 bits (as far as another picture) and the
rotation 4-12 (12 for g1), so only the embedding pass catches those copies; different people are at
most 0.898 similar. 0.95 separates the two.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from huggingface_hub import DatasetCard
from PIL import Image

from builder.cli import main
from builder.core.records import Record
from builder.manifest import Dedupe, FaceEmbedder, Identities
from curation.whole_set.dedupe import DedupeStage
from curation.whole_set.embeddings import CACHE, FaceEmbeddings
from curation.whole_set.identities import IdentitiesStage, diversity, leader_clusters
from tests.conftest import ROOT
from tests.fixtures.people import THRESHOLD, augment

NAMES = ("neutral", "happy", "sad")


def write_photos(people: dict, folder: Path, names: list[str]) -> None:
    """``name`` or ``name-kind`` (a near copy of person ``name``) as folder/<entry>.png; 'coffee' has no face."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for entry in names:
        person, _, kind = entry.partition("-")
        image = Image.fromarray(data.coffee()) if person == "coffee" else people[person]
        (augment(image, kind) if kind else image).save(folder / f"{entry}.png")


def make_records(names: list[str], confidences: dict[str, float], label: int = 0) -> list[Record]:
    return [Record(sample_id=f"s-{i:02d}", index=i, label=label, label_name=NAMES[label], au=[], attributes={},
                   prompt="", negative_prompt="", seed=0, image=f"img/{name}.png",
                   labelling={"confidence": confidences.get(name, 0.5)}) for i, name in enumerate(names)]


def outcome(records: list[Record]) -> dict[str, tuple[str, str] | None]:
    return {Path(r.image).stem: (r.drop.reason, r.drop.detail) if r.drop else None for r in records}


def run_stage(make_stage, names, confidences, root, order=None):
    recs = make_records(names, confidences)
    by_id = {r.sample_id: r for r in recs}
    shuffled = [recs[i] for i in (order or range(len(recs)))]
    out = list(make_stage().process(shuffled, root))
    assert sorted(r.sample_id for r in out) == sorted(by_id)
    return outcome(recs), recs


def test_embedding_dedupe_catches_copies_the_perceptual_hash_misses(people, tmp_path):
    names = ["g1", "g1-crop15", "g1-rotate", "g2", "g2-crop15", "astronaut", "coffee"]
    write_photos(people, tmp_path / "img", names)
    confidences = {"g1": 0.9, "g2-crop15": 0.8, "g2": 0.6}

    hash_only, _ = run_stage(lambda: DedupeStage(Dedupe()), names, confidences, tmp_path)
    assert hash_only == dict.fromkeys(names), "the perceptual hash alone keeps every crop and rotation"

    spec = Dedupe(embedding_similarity=THRESHOLD)
    stages = []

    def make():
        stages.append(DedupeStage(spec, FaceEmbeddings(FaceEmbedder())))
        return stages[-1]

    first, recs = run_stage(make, names, confidences, tmp_path)
    assert first["g1-crop15"][0] == "embedding_duplicate" and "to s-00" in first["g1-crop15"][1]
    assert first["g1-crop15"][1].endswith("s-00") and first["g1-rotate"][1].endswith("s-00")
    assert first["g2"][0] == "embedding_duplicate" and first["g2"][1].endswith("to s-04")
    assert {n for n, v in first.items() if v is None} == {"g1", "g2-crop15", "astronaut", "coffee"}
    for name in ("g1-crop15", "g1-rotate", "g2"):
        assert float(first[name][1].split()[2]) > 0.98, "measured 0.993-1.000"
    meta = stages[0].meta()
    assert meta["faces_embedded"] == 6 and meta["duplicate_groups"] == 2 and meta["embedder"]["backend"] == "dlib"
    assert meta["face_search"] == {"type": "flat", "exact": True}
    assert stages[0].embeddings.stats == {"computed": 7, "from_cache": 0}

    # same decisions whatever the input order; the second run reads every vector from the build's cache
    again, _ = run_stage(make, names, confidences, tmp_path, order=[6, 3, 0, 5, 2, 4, 1])
    assert again == first
    assert stages[1].embeddings.stats == {"computed": 0, "from_cache": 7}
    cache = next((tmp_path / CACHE).iterdir())
    info = json.loads((cache / "index.json").read_text())
    assert info["count"] == 6 and info["skipped"] == 1  # coffee: no face
    assert json.loads((cache / "skipped.jsonl").read_text())["reason"] == "no_face"


def test_a_killed_embedding_run_keeps_what_it_committed(people, tmp_path):
    names = ["g1", "g2", "g3"]
    write_photos(people, tmp_path / "img", names)
    recs = make_records(names, {})
    first = FaceEmbeddings(FaceEmbedder())
    vectors, positions = first.vectors(recs[:2], tmp_path)
    cache = next((tmp_path / CACHE).iterdir())
    with open(cache / "vectors.f32", "ab") as fh:  # a batch appended but never committed
        fh.write(b"\0" * 512)
    with open(cache / "metadata.jsonl", "a") as fh:
        fh.write('{"sample_id": "s-02", "image": "img/g3.png"}\n')
    resumed = FaceEmbeddings(FaceEmbedder())
    all_vectors, all_positions = resumed.vectors(recs, tmp_path)
    assert resumed.stats == {"computed": 1, "from_cache": 2} and all_positions == [0, 1, 2]
    assert (all_vectors[:2] == vectors).all() and abs(float(all_vectors[2] @ all_vectors[2]) - 1) < 1e-5
    assert json.loads((cache / "index.json").read_text())["count"] == 3


def test_dedupe_against_the_reference_set(people, reference, tmp_path):
    """g1 copied byte for byte, g3 recompressed, g5 cropped 15 % (hash 32 bits away): all three are the reference's
    images; g2, g4 and the astronaut are other people and stay."""
    (tmp_path / "img").mkdir()
    shutil.copy(reference["folder"] / "group" / "g1.png", tmp_path / "img" / "g1.png")
    write_photos(people, tmp_path / "img", ["g3-jpeg", "g5-crop15", "g2", "g4", "astronaut"])
    names = ["g1", "g3-jpeg", "g5-crop15", "g2", "g4", "astronaut"]

    near_only, _ = run_stage(lambda: DedupeStage(Dedupe(reference=str(reference["index"]))), names, {}, tmp_path)
    assert near_only["g1"] == ("reference_exact_duplicate", "same bytes as reference image celebs:group/g1.png")
    assert near_only["g3-jpeg"][0] == "reference_near_duplicate" and near_only["g3-jpeg"][1].endswith("g3.png")
    assert near_only["g5-crop15"] is None

    stage = DedupeStage(Dedupe(reference=str(reference["index"]), embedding_similarity=THRESHOLD),
                        FaceEmbeddings(FaceEmbedder()))
    full, _ = run_stage(lambda: stage, names, {}, tmp_path)
    assert full["g5-crop15"][0] == "reference_embedding_duplicate"
    assert full["g5-crop15"][1].endswith("reference face celebs:group/g5.png")
    assert {n for n, v in full.items() if v is None} == {"g2", "g4", "astronaut"}
    assert stage.meta()["reference"] == {"index": "index", "images": 6}


def test_reference_index_of_another_embedder_is_refused_before_any_work(reference, tmp_path):
    from builder.core.errors import UserError

    class Other(FaceEmbeddings):
        def describe(self):
            return {"backend": "insightface", "model": "x.onnx", "model_sha256": "f" * 64, "dim": 512}

        def load(self):
            class Model:
                sha256 = "f" * 64
            return Model()

    stage = DedupeStage(Dedupe(reference=str(reference["index"]), embedding_similarity=0.9), Other(FaceEmbedder()))
    with pytest.raises(UserError, match="curation.dedupe.reference: .* was built with dlib"):
        stage.preflight()
    with pytest.raises(UserError, match="not a reference index"):
        DedupeStage(Dedupe(reference=str(tmp_path))).preflight()


def test_identity_clusters_and_cap(people, tmp_path):
    names = ["g1", "g1-crop15", "g1-rotate", "g2", "g2-jpeg", "g3", "astronaut", "coffee"]
    write_photos(people, tmp_path / "img", names)
    confidences = {"g1-rotate": 0.95, "g1": 0.9, "g1-crop15": 0.4, "g2-jpeg": 0.7}
    spec = Identities(threshold=THRESHOLD, max_per_identity=2)
    embeddings = FaceEmbeddings(FaceEmbedder())
    stages = []

    def make():
        stages.append(IdentitiesStage(spec, embeddings, NAMES))
        return stages[-1]

    first, recs = run_stage(make, names, confidences, tmp_path)
    again, recs_again = run_stage(make, names, confidences, tmp_path, order=[7, 2, 5, 0, 3, 6, 1, 4])
    assert first == again
    # g1-rotate is the most confident g1 image: it founds the identity; g1 stays, g1-crop15 is over the cap
    assert first["g1-crop15"] == ("identity_cap", "identity s-02 already has 2 images")
    assert [v for n, v in first.items() if n != "g1-crop15"] == [None] * 7
    identity = {Path(r.image).stem: (r.face or {}).get("identity") for r in recs}
    assert identity == {"g1": "s-02", "g1-crop15": "s-02", "g1-rotate": "s-02", "g2": "s-04", "g2-jpeg": "s-04",
                        "g3": "s-05", "astronaut": "s-06", "coffee": None}
    assert {Path(r.image).stem: (r.face or {}).get("identity") for r in recs_again} == identity
    report = stages[0].report
    assert report["without_face"] == 1
    assert report["before"] == diversity([3, 2, 1, 1])
    assert (report["before"]["identities"], report["before"]["singletons"], report["before"]["mean_images"]) == (4, 2, 1.75)
    assert report["before"]["size_histogram"] == {"1": 2, "2": 1, "3-5": 1}
    assert report["after"]["images"] == 6 and report["after"]["identities"] == 4
    assert report["largest"][0] == {"identity": "s-02", "images": 3, "kept": 2, "classes": {"neutral": 3}}
    assert embeddings.stats == {"computed": 8, "from_cache": 0}  # the second run used the vectors in memory


def test_leader_clusters_and_diversity_by_hand():
    # 0-1 similar, 1-2 similar, 0-2 not: 2 joins 1's founder 0 only if similar to 0 itself
    neighbours = [{1: 0.97}, {0: 0.97, 2: 0.96}, {1: 0.96}, {}]
    assert leader_clusters(neighbours) == [0, 0, 2, 3]
    assert leader_clusters([{1: 0.96, 2: 0.99}, {0: 0.96, 2: 0.97}, {0: 0.99, 1: 0.97}]) == [0, 0, 0]
    d = diversity([4, 4])
    assert d["effective_identities"] == 2.0 and d["mean_images"] == 4.0 and d["singletons"] == 0
    assert diversity([]) == {"identities": 0, "images": 0}
    assert diversity([1] * 3 + [200])["size_histogram"] == {"1": 3, "101+": 1}


@pytest.fixture(scope="module")
def identity_build(people, tmp_path_factory):
    """The example labelling manifest on six people plus three near copies, with embedding dedupe and identities."""
    work = tmp_path_factory.mktemp("build")
    write_photos(people, work / "photos", ["g1", "g1-crop15", "g1-rotate", "g2", "g3", "g4", "astronaut",
                                           "portrait", "portrait-crop15"])
    manifest = yaml.safe_load((ROOT / "manifests" / "label-photos.yaml").read_text())
    manifest["images"] = {"folder": str(work / "photos")}
    manifest["labelling"]["min_confidence"] = 0.0  # every photo reaches the whole-set stages
    manifest["curation"]["dedupe"]["embedding_similarity"] = THRESHOLD
    manifest["curation"]["identities"] = {"threshold": 0.93, "max_per_identity": 1}
    manifest["output"]["shard_size"] = 5
    path = work / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = work / "out"
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0
    return path, out


def test_face_dedupe_and_identities_in_a_build(identity_build):
    _, out = identity_build
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["stages"])[-4:] == ["label", "dedupe", "identities", "release"]
    dedupe, identities = stats["stages"]["dedupe"], stats["stages"]["identities"]
    assert (dedupe["in"], dedupe["kept"], dedupe["dropped"]) == (9, 6, {"embedding_duplicate": 3})
    assert dedupe["meta"]["faces_embedded"] == 9 and dedupe["meta"]["duplicate_groups"] == 2
    copies = [Record.from_json(line) for line in (out / "rejected" / "dedupe.jsonl").read_text().splitlines()]
    assert sorted(Path(r.source).stem.split("-")[0] for r in copies) == ["g1", "g1", "portrait"]
    meta = identities["meta"]
    assert (identities["in"], identities["kept"], identities["dropped"]) == (6, 6, {})
    assert meta["before"]["identities"] == 6 and meta["before"]["singletons"] == 6 and meta["without_face"] == 0
    assert dedupe["meta"]["face_search"] == meta["face_search"] == {"type": "flat", "exact": True}  # in stats.json

    rows = load_from_disk(str(out / "hf"))["train"]
    assert sorted(set(rows["identity"])) == sorted(rows["sample_id"])  # six people, each its own identity
    card = DatasetCard.load(out / "README.md")
    assert "## Identities" in card.text and "6 images form 6 identities" in card.text
    assert "## Duplicates" in card.text and "cosine similarity 0.95 or more" in card.text
    # dedupe and identities embedded each face once, into the build folder's cache
    info = json.loads(next((out / CACHE).glob("*/index.json")).read_text())
    assert (info["count"], info["skipped"]) == (9, 0)


def test_identity_cap_in_a_build(identity_build, tmp_path):
    """Without embedding dedupe the copies reach the identities stage: one image per identity stays."""
    path, _ = identity_build
    manifest = yaml.safe_load(path.read_text())
    manifest["curation"]["dedupe"]["embedding_similarity"] = None
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    identities = stats["stages"]["identities"]
    assert (identities["in"], identities["kept"], identities["dropped"]) == (9, 6, {"identity_cap": 3})
    meta = identities["meta"]
    assert meta["before"]["identities"] == 6 and meta["before"]["size_histogram"] == {"1": 4, "2": 1, "3-5": 1}
    assert meta["largest"][0]["images"] == 3 and meta["largest"][0]["kept"] == 1


def test_missing_reference_folder_fails_before_any_shard(write_manifest, tmp_path, capsys):
    path = write_manifest({"curation": {"dedupe": {"reference": str(tmp_path / "nowhere")}}})
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--no-progress"]) == 2
    assert "curation.dedupe.reference" in capsys.readouterr().err
    assert not (out / "shards").exists()
