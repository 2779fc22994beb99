"""``build-dataset evaluate``: train on a real build, test on "real" labelled sets, guard, card.

The fixture is a real build (``images:`` source, ingest, integrity, MTCNN, the
label stage, release) of the only real faces available offline (insightface's
and skimage's photos), each tinted by class so the classes differ visibly:
anger red, happy yellow, sad blue. The build's labeller is a small torch
classifier (``TintExpert``, loaded through a classifier config like any
expert) that reads the tint. Test sets are other tinted copies in RAF-DB order
(a saved ``datasets`` dataset, plus a magenta 'fear' class the build lacks)
and in FER2013 naming (an image folder). Backbones are tiny transformers
models with random weights built here (no download); what is shown is that
the pipeline learns what the data teaches, not a real backbone's accuracy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from builder.core.errors import UserError


def main(args: list[str]) -> int:
    """``build-dataset evaluate ARGS`` through the CLI's parser, bad input raised as the UserError it is."""
    from builder.cli import cli

    argv = [str(a) for a in args]
    with cli.make_context("build-dataset", ["evaluate", *argv]) as ctx:
        ctx.meta["argv"] = argv
        result = cli.invoke(ctx)
    return result if isinstance(result, int) else 0



TINTS = {"anger": (235, 50, 50), "happy": (240, 220, 40), "sad": (60, 90, 255), "fear": (230, 60, 230)}
BUILD_CLASSES = ("anger", "happy", "sad")  # fear: only in the test set, a class the model cannot predict
ALPHA = 0.3


CENTROIDS = {"anger": (0.212, -0.07, -0.141), "happy": (0.158, 0.058, -0.216), "sad": (0.0, -0.055, 0.055)}
"""Mean chroma (RGB mean minus its grey level) of aligned face crops of each tint, measured on other copies."""


class TintExpert(nn.Module):
    """The build's labeller: the nearer a crop's mean chroma is to a class's centroid, the likelier the class."""

    def __init__(self):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(len(BUILD_CLASSES), 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3))
        chroma = mean - mean.mean(1, keepdim=True)
        return -300 * ((chroma[:, None, :] - self.centroids[None]) ** 2).sum(-1)


def tinted(face: Image.Image, kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A jittered square crop of ``face`` (scale, shift, mirror, noise) blended with the class's tint."""
    w, h = face.size
    side = rng.uniform(0.85, 1.0) * min(w, h)
    x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
    im = face.crop((int(x0), int(y0), int(x0 + side), int(y0 + side))).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(im, np.float32)
    tint = np.array(TINTS[kind], np.float32) * (arr.mean(-1, keepdims=True) / 128)
    out = (1 - ALPHA) * arr + ALPHA * tint + rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on two busy cores, two threads spin against each other (MTCNN runs ~15x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def portraits() -> dict:
    """Seven real face photos of ``builder.example_faces``: the group photo's six people and the astronaut
    (cropped to her face). The portrait is left out: its own grey-blue cast makes its red copies look blue."""
    from builder.example_faces import example_faces

    faces = example_faces()
    faces["astronaut"] = faces["astronaut"].crop((130, 10, 330, 230))
    del faces["portrait"]
    return faces


def write_folder(folder: Path, portraits: dict, classes, per_face: int, seed: int, by_class: dict | None = None):
    """Tinted copies; ``by_class`` maps a class to its folder name (an image folder), else one flat folder."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        for name, face in sorted(portraits.items()):
            for k in range(per_face):
                target = folder / by_class[kind] if by_class else folder
                target.mkdir(parents=True, exist_ok=True)
                stem = f"{name}-{k}" if by_class else f"{name}-{kind[:2]}{k}-{rng.integers(1 << 30):09d}"
                tinted(face, kind, rng).save(target / f"{stem}.png")
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict:
    """Tiny random-weight transformers backbones saved with save_pretrained (nothing is downloaded)."""
    import transformers
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("backbones")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
                ).save_pretrained(root / "resnet-tiny")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(root / "vit-tiny")
    return {"resnet": root / "resnet-tiny", "vit": root / "vit-tiny"}


@pytest.fixture(scope="module")
def built(portraits, tmp_path_factory) -> Path:
    """A real build of tinted photos, labelled by ``TintExpert`` (42 images, 3 classes)."""
    from safetensors.torch import save_file

    from builder.cli import main as build_main

    root = tmp_path_factory.mktemp("tinted-build")
    write_folder(root / "photos", portraits, BUILD_CLASSES, 2, seed=0)
    save_file({"centroids": torch.tensor([CENTROIDS[c] for c in BUILD_CLASSES])}, root / "tint.safetensors")
    (root / "tint.yaml").write_text(yaml.safe_dump({
        "architecture": "tests.evaluation.test_evaluate:TintExpert", "weights": "tint.safetensors",
        "labels": list(BUILD_CLASSES), "input": {"size": 64, "channels": 3, "mean": [0.0], "std": [1.0]}}))
    manifest = {"name": "tinted", "version": "0.1.0", "seed": 5, "images": {"folder": str(root / "photos")},
                "labels": {"label_map": "affectnet7"},
                "labelling": {"experts": [{"name": "tint", "model": str(root / "tint.yaml")}],
                              "min_confidence": 0.5, "min_agreement": 0.5,
                              "faces": {"min_score": 0.9, "min_size": 32, "size": 112, "margin": 0.2},
                              "device": "cpu"},
                "curation": {"faces": {"enabled": False}, "dedupe": {"enabled": False}},
                "output": {"splits": {"train": 1.0}, "shard_size": 64}}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert build_main([str(root / "manifest.yaml"), "--out", str(root / "out"), "--no-progress",
                       "--trust-remote-code"]) == 0  # TintExpert lives in the tests, outside the tool
    return root / "out"


@pytest.fixture(scope="module")
def real_sets(portraits, tmp_path_factory) -> dict:
    """The 'real' sets: a saved dataset in RAF-DB order (+ fear), a FER2013-named folder, a real training folder."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    from builder.manifest.label_maps import LABEL_MAPS

    root = tmp_path_factory.mktemp("real-sets")
    rafdb = LABEL_MAPS["rafdb"]  # surprise, fear, disgust, happiness, sadness, anger, neutral
    raf_name = {"anger": "anger", "happy": "happiness", "sad": "sadness", "fear": "fear"}
    folder = write_folder(root / "raf-images", portraits, (*BUILD_CLASSES, "fear"), 1, seed=1,
                          by_class={k: raf_name[k] for k in TINTS})
    rows = {"image": [], "label": []}
    for path in sorted(folder.rglob("*.png")):
        rows["image"].append(str(path))
        rows["label"].append(rafdb.index(path.parent.name))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(rafdb))})
    Dataset.from_dict(rows, features=features).save_to_disk(str(root / "rafdb-test"))
    fer_name = {"anger": "angry", "happy": "happy", "sad": "sad", "fear": "fear"}
    write_folder(root / "fer-test", portraits, (*BUILD_CLASSES, "fear"), 1, seed=2, by_class=fer_name)
    write_folder(root / "real-train", portraits, BUILD_CLASSES, 1, seed=3, by_class=fer_name)
    return {"rafdb": root / "rafdb-test", "fer": root / "fer-test", "real_train": root / "real-train"}


FAST = ["--image-size", "32", "--epochs", "6", "--batch-size", "16", "--lr", "3e-3", "--head-lr", "1e-2"]
SAME_PHOTOS = ["--allow-overlap"]
"""The test sets here are other tinted crops of the build's own seven photos (the only real faces offline): a few
are within 4 bits of a training image's perceptual hash, so the overlap check refuses them without this
(``tests/evaluation/test_overlap.py`` tests the check)."""


@pytest.fixture(scope="module")
def evaluated(built, real_sets, backbones) -> dict:
    """Fine-tune the tiny ResNet on the build, test on the RAF-DB-ordered dataset."""
    args = [str(built), "--test", str(real_sets["rafdb"]), "--backbone", str(backbones["resnet"]),
            "--name", "resnet-rafdb", *FAST, *SAME_PHOTOS]
    assert main(args) == 0
    return json.loads((built / "eval" / "resnet-rafdb.json").read_text()), args


def recompute(rows: list[dict], model_classes: list[str]) -> dict:
    """The metrics from the saved predictions, written out independently of evaluation.metrics."""
    scored = [r for r in rows if r["target"] is not None]
    present = [c for c in model_classes if any(r["target"] == c for r in scored)]
    recall, f1 = {}, {}
    for c in present:
        tp = sum(r["target"] == c and r["prediction"] == c for r in scored)
        predicted = sum(r["prediction"] == c for r in scored)
        support = sum(r["target"] == c for r in scored)
        recall[c] = tp / support
        precision = tp / predicted if predicted else 0.0
        f1[c] = 2 * precision * recall[c] / (precision + recall[c]) if precision + recall[c] else 0.0
    correct = sum(r["prediction"] == r["target"] for r in scored)
    return {"accuracy": correct / len(scored), "macro_accuracy": sum(recall.values()) / len(present),
            "macro_f1": sum(f1.values()) / len(present), "f1": f1, "evaluated": len(scored),
            "unpredictable": len(rows) - len(scored), "all": correct / len(rows)}


def test_the_build_fixture_is_a_real_labelled_build(built):
    stats = json.loads((built / "stats.json").read_text())
    assert stats["released"]["classes"] == {"neutral": 0, "happy": 14, "sad": 14, "surprise": 0, "fear": 0,
                                            "disgust": 0, "anger": 14}
    assert stats["labelling"]["experts"][0]["name"] == "tint"


def test_learns_well_above_chance_and_the_json_equals_the_predictions(evaluated, built):
    result, _ = evaluated
    m = result["metrics"]
    rows = [json.loads(line) for line in (built / "eval" / "resnet-rafdb-predictions.jsonl").read_text().splitlines()]
    assert len(rows) == m["samples_total"] == 28
    again = recompute(rows, result["coverage"]["model_classes"])
    assert m["accuracy"] == pytest.approx(again["accuracy"], abs=1e-12)
    assert m["macro_accuracy"] == pytest.approx(again["macro_accuracy"], abs=1e-12)
    assert m["macro_f1"] == pytest.approx(again["macro_f1"], abs=1e-12)
    assert {c: v["f1"] for c, v in m["per_class"].items()} == pytest.approx(again["f1"], abs=1e-12)
    assert m["accuracy_all_test_samples"] == pytest.approx(again["all"], abs=1e-12)
    assert (m["samples_evaluated"], m["samples_unpredictable"]) == (again["evaluated"], again["unpredictable"])
    assert sum(map(sum, m["confusion"]["matrix"])) == m["samples_evaluated"] == 21
    # chance is 1/3 over the three classes
    assert m["accuracy"] >= 0.8 and m["macro_accuracy"] >= 0.8
    for r in rows:  # probabilities saved per sample give the prediction
        assert r["prediction"] == result["coverage"]["model_classes"][int(np.argmax(r["probs"]))]
    from evaluation.metrics import from_predictions

    assert from_predictions(rows, result["coverage"]["model_classes"]) == m
    assert (built / "eval" / "resnet-rafdb-confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_label_maps_and_coverage_are_reported(evaluated):
    result, _ = evaluated
    cov = result["coverage"]
    assert cov["model_classes"] == ["happy", "sad", "anger"]  # the build's classes with samples, affectnet7 order
    assert cov["build_classes_without_training_samples"] == ["neutral", "surprise", "fear", "disgust"]
    assert cov["test_classes_not_predictable"] == ["surprise", "fear", "disgust", "neutral"]
    assert cov["unpredictable_test_samples"] == {"fear": 7}
    assert cov["test_classes_without_samples"] == ["surprise", "disgust", "neutral"]
    assert result["metrics"]["evaluated_classes"] == ["happy", "sad", "anger"]
    mapping = {r["class"]: r["model_class"] for r in result["label_alignment"]["test"]["classes"]}
    assert mapping == {"surprise": None, "fear": None, "disgust": None, "happiness": "happy", "sadness": "sad",
                       "anger": "anger", "neutral": None}
    assert result["train"]["faces"] == {"landmarks": 42}  # the label stage's landmarks, reused
    assert result["test"]["faces"]["detected"] >= 24
    assert result["guard"]["overridden"] is False and result["guard_overridden"] is False
    assert result["guard"]["checked"][0]["where"].startswith("stats.json labelling.experts[0]")


def test_label_map_alignment_affectnet7_against_rafdb_and_fer2013():
    from builder.manifest.label_maps import LABEL_MAPS
    from evaluation.labels import align

    affectnet = LABEL_MAPS["affectnet7"]  # neutral, happy, sad, surprise, fear, disgust, anger
    raf = align(affectnet, LABEL_MAPS["rafdb"])  # surprise, fear, disgust, happiness, sadness, anger, neutral
    assert raf.to_model == (3, 4, 5, 1, 2, 6, 0)
    fer = align(affectnet, LABEL_MAPS["fer2013"])  # angry, disgust, fear, happy, sad, surprise, neutral
    assert fer.to_model == (6, 5, 4, 1, 2, 3, 0)
    for a in (raf, fer):
        assert a.missing_in_set == [] and a.missing_in_model == []
        assert [affectnet[i] for i in a.to_model] == [{"happiness": "happy", "sadness": "sad", "angry": "anger"}
                                                      .get(n, n) for n in a.set_names]
    eight = align(LABEL_MAPS["affectnet8"], LABEL_MAPS["fer2013"])
    assert eight.missing_in_set == ["contempt"] and eight.missing_in_model == []
    back = align(LABEL_MAPS["fer2013"], LABEL_MAPS["affectnet8"])
    assert back.missing_in_model == ["contempt"] and back.to_model[7] is None
    with pytest.raises(UserError, match="'grumpy' is not an emotion"):
        align(affectnet, ["happy", "grumpy"])


def test_metrics_by_hand():
    from evaluation.metrics import compute

    names = ["happy", "sad", "anger"]
    targets = [0, 0, 0, 1, 1, None, None]  # two samples of a class the model cannot predict
    m = compute(targets, [0, 0, 1, 1, 2, 0, 1], names)
    assert m["evaluated_classes"] == ["happy", "sad"] and m["model_classes_not_in_test"] == ["anger"]
    assert m["confusion"] == {"rows": ["happy", "sad"], "columns": names, "matrix": [[2, 1, 0], [0, 1, 1]]}
    assert m["accuracy"] == 3 / 5 and m["macro_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["per_class"]["happy"]["precision"] == 1 and m["per_class"]["sad"]["precision"] == 0.5
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5) / 2)  # happy: P 1, R 2/3; sad: P 1/2, R 1/2
    assert m["accuracy_all_test_samples"] == 3 / 7 and m["samples_unpredictable"] == 2


def test_mix_plan_is_seeded_and_keeps_the_ratio():
    from evaluation.train import epoch_plan, mix_counts

    assert mix_counts(42, 21, 0.25) == (42, 14) and mix_counts(42, 21, 0) == (42, 0)
    assert mix_counts(42, 21, 1) == (0, 21) and mix_counts(30, 100, 0.5) == (30, 30)
    plan = epoch_plan(30, 100, 0.5, seed=3, epochs=10)
    assert plan == epoch_plan(30, 100, 0.5, seed=3, epochs=10) != epoch_plan(30, 100, 0.5, seed=4, epochs=10)
    assert all(sorted(i for p, i in epoch if p == 0) == list(range(30)) for epoch in plan)
    real = [i for epoch in plan for p, i in epoch if p == 1]
    assert len(real) == 300 and all(real.count(i) == 3 for i in range(100))  # the real set, in turn


def test_card_section_lists_the_result(evaluated, built):
    from cards.evaluation_section import evaluation_section

    result, _ = evaluated
    lines = evaluation_section(built)
    assert lines[1] == "## Evaluation" and any(line.startswith("| resnet-rafdb |") for line in lines)
    card = (built / "README.md").read_text()
    assert "\n".join(lines) in card and card.count("## Evaluation") == 1
    assert f"{100 * result['metrics']['accuracy']:.2f}%" in card
    assert "fear: 7" in card
    overlap = result["overlap"]  # re-crops of the build's own photos: a few are near duplicates
    assert (overlap["exact"], overlap["near"], overlap["allowed"]) == (0, 5, True)
    assert "**Overlap with the training data**: 0 exact, 5 near duplicates (pHash distance <= 4)" in card
    assert (built / "eval" / "resnet-rafdb.md").read_text().startswith("### resnet-rafdb")


def test_linear_probe_on_an_image_folder_mixed_with_real_data(built, real_sets, backbones):
    args = [str(built), "--test", str(real_sets["fer"]), "--backbone", str(backbones["vit"]), "--mode", "linear",
            "--train-real", str(real_sets["real_train"]), "--mix", "0.25", "--no-align", "--epochs", "30",
            "--batch-size", "16", "--head-lr", "3e-2", "--name", "vit-linear-mix", *SAME_PHOTOS]
    assert main(args) == 0
    result = json.loads((built / "eval" / "vit-linear-mix.json").read_text())
    assert result["mix"] == {**result["mix"], "ratio": 0.25, "synthetic_per_epoch": 42, "real_per_epoch": 14}
    assert all((e["synthetic"], e["real"]) == (42, 14) for e in result["training"])
    assert result["train_real"]["samples"] == 21 and result["train_real"]["faces"] == {"not_aligned": 21}
    assert result["backbone"]["input_size"] == 32 and result["config"]["mode"] == "linear"
    fer = {r["class"]: r["model_class"] for r in result["label_alignment"]["test"]["classes"]}
    assert fer == {"angry": "anger", "fear": None, "happy": "happy", "sad": "sad"}
    rows = [json.loads(line) for line in (built / "eval" / "vit-linear-mix-predictions.jsonl").read_text().splitlines()]
    again = recompute(rows, result["coverage"]["model_classes"])
    assert result["metrics"]["accuracy"] == pytest.approx(again["accuracy"], abs=1e-12)
    assert result["metrics"]["macro_f1"] == pytest.approx(again["macro_f1"], abs=1e-12)
    assert result["metrics"]["accuracy"] > 0.5  # chance: 1/3
    assert result["coverage"]["unpredictable_test_samples"] == {"fear": 7}


def test_records_give_the_same_training_set_as_hf(built, real_sets, evaluated, tmp_path):
    """Without hf/, the build's records and images are read instead: same crops, same numbers."""
    copy = tmp_path / "no-hf"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("hf", "eval"))
    _, args = evaluated
    assert main([str(copy), *args[1:]]) == 0
    result = json.loads((copy / "eval" / "resnet-rafdb.json").read_text())
    assert result["train"]["read_from"] == "records" and result["train"]["faces"] == {"landmarks": 42}
    assert result["metrics"] == evaluated[0]["metrics"]


def test_numbered_class_folders_with_a_label_map(tmp_path, real_sets):
    from evaluation.sources import SetSpec, open_set

    for number, name in (("4", "happy"), ("6", "angry")):  # RAF-DB's 1-based files: 4 happiness, 6 anger
        (tmp_path / number).mkdir()
        shutil.copy(next((real_sets["fer"] / name).glob("*.png")), tmp_path / number / "a.png")
    found = open_set(SetSpec(tmp_path, "test", "--test", label_map="rafdb", label_base=1))
    assert [found.names[i] for i in found.labels] == ["happiness", "anger"]
    with pytest.raises(UserError, match="label 6 is outside the 2 classes"):
        open_set(SetSpec(tmp_path, "test", "--test", label_map="happy,sad", label_base=1))


@pytest.fixture
def guarded_copy(built, tmp_path, backbones) -> Path:
    """The release with stats.json saying the tiny ResNet guided its generation."""
    from builder.models.diffusion import file_sha256

    copy = tmp_path / "guarded"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("shards", "eval"))
    stats = json.loads((copy / "stats.json").read_text())
    stats["guidance"] = {"classifier": "my-fer-resnet", "sha256": file_sha256(backbones["resnet"] / "model.safetensors")}
    (copy / "stats.json").write_text(json.dumps(stats))
    return copy


def test_guard_refuses_the_guide_and_force_marks_the_result(guarded_copy, evaluated):
    _, args = evaluated
    args = [str(guarded_copy), *args[1:]]
    with pytest.raises(UserError) as err:
        main(args)
    assert "is the model that guided the generation" in err.value.message and "--force" in err.value.fix
    assert not (guarded_copy / "eval" / "resnet-rafdb.json").exists()

    assert main([*args, "--force"]) == 0
    result = json.loads((guarded_copy / "eval" / "resnet-rafdb.json").read_text())
    assert result["guard_overridden"] is True and result["guard"]["conflicts"][0]["matched_by"] == ["sha256"]
    card = (guarded_copy / "README.md").read_text()
    assert "**guard_overridden**" in card and "| **overridden** |" in card
    # same command, same numbers: the forced run repeats the first evaluation exactly
    first = evaluated[0]
    assert result["metrics"] == first["metrics"] and result["training"][-1]["loss"] == first["training"][-1]["loss"]


def test_guard_finds_a_labeller_config_that_names_the_same_weights(backbones, tmp_path):
    from builder.models.fer.classifier_config import config_sha256
    from evaluation import guard
    from evaluation.backbones import load_backbone

    shutil.copy(backbones["resnet"] / "model.safetensors", tmp_path / "weights.safetensors")
    config = tmp_path / "expert.yaml"
    config.write_text(yaml.safe_dump({"architecture": "somewhere.models:Net", "weights": "weights.safetensors",
                                      "labels": list(BUILD_CLASSES), "input": {"size": 64}}))
    stats = {"labelling": {"experts": [{"name": "mine", "model": str(config), "sha256": config_sha256(config)}]}}
    backbone = load_backbone(str(backbones["resnet"]))
    found = guard.conflicts(backbone, stats, {})
    assert [c["matched_by"] for c in found] == [["weights file"]]
    manifest = {"labelling": {"experts": [{"name": "same", "model": str(backbones["resnet"])}]}}
    assert [c["matched_by"] for c in guard.conflicts(backbone, {}, manifest)] == [["model id"]]
    assert guard.conflicts(backbone, {"guidance": {"classifier": "mini-xception-fer2013", "sha256": "0" * 64}}, {}) == []


def hub_cache_entry(repo_id: str, folder: Path, commit: str = "1234567890abcdef1234567890abcdef12345678") -> None:
    """Put a save_pretrained folder into the (test session's) Hugging Face cache as the Hub would have it."""
    import hashlib
    import os

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for path in folder.iterdir():
        blob = blobs / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))


def test_hub_checkpoints_load_offline_from_the_cache_without_their_heads(tmp_path):
    """Checkpoints shaped like microsoft/resnet-18 and google/vit-base-patch16-224 (classification models, with a
    preprocessor config), read by Hub id from the cache: the backbone's weights are the checkpoint's, not new."""
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    from builder.models.diffusion import file_sha256
    from evaluation.backbones import load_backbone

    torch.manual_seed(1)
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                       layer_type="basic", num_labels=5)).eval()
    resnet.save_pretrained(tmp_path / "resnet")
    (tmp_path / "resnet" / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"shortest_edge": 224}}))
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32, num_labels=5)).eval()
    vit.save_pretrained(tmp_path / "vit")
    hub_cache_entry("fer-synth-test/resnet-tiny", tmp_path / "resnet")
    hub_cache_entry("fer-synth-test/vit-tiny", tmp_path / "vit")

    x = torch.rand(2, 3, 32, 32)
    backbone = load_backbone("fer-synth-test/resnet-tiny", image_size=32)
    info = backbone.info
    assert info["source"] == "hub" and info["revision"] == "1234567890abcdef1234567890abcdef12345678"
    assert info["weight_files"] == {"model.safetensors": file_sha256(tmp_path / "resnet" / "model.safetensors")}
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.dim == 16
    assert load_backbone("fer-synth-test/resnet-tiny").input_size == 224  # the preprocessor's size
    with torch.no_grad():
        assert torch.allclose(backbone.module.eval()(x), resnet.resnet(x).pooler_output.flatten(1))
    backbone = load_backbone("fer-synth-test/vit-tiny")
    assert backbone.input_size == 32 and backbone.mean == (0.5, 0.5, 0.5) and backbone.dim == 16
    with torch.no_grad():
        assert torch.allclose(backbone.module.eval()(x), vit.vit(x).last_hidden_state[:, 0], atol=1e-6)


def test_ir50_has_face_evolve_layout_and_loads_checkpoints(tmp_path):
    from safetensors.torch import save_file

    from evaluation.backbones import load_backbone
    from evaluation.ir50 import IR50

    torch.manual_seed(0)
    model = IR50().eval()
    state = model.state_dict()
    assert len(model.body) == 24 and sum(p.numel() for p in model.parameters()) == 43_574_976
    for key in ("input_layer.0.weight", "input_layer.2.weight", "body.0.res_layer.0.running_mean",
                "body.0.res_layer.2.weight", "body.3.shortcut_layer.0.weight", "body.3.shortcut_layer.1.weight",
                "output_layer.0.weight", "output_layer.3.weight", "output_layer.4.running_var"):
        assert key in state
    assert "body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: a strided 1x1 max-pool, no weights
    assert state["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        expected = model(x)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, tmp_path / "ir50.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in half.items()}}, tmp_path / "ir50.pth")
    for name in ("ir50.safetensors", "ir50.pth"):
        backbone = load_backbone(f"ir50:{tmp_path / name}")
        assert backbone.input_size == 112 and backbone.dim == 512 and backbone.info["pretrained"]
        with torch.no_grad():
            out = backbone.module.eval()(x)
        assert out.shape == (2, 512) and torch.allclose(out, expected, atol=0.05, rtol=0.05)
    torch.save({"not": "tensors", "model": object}, tmp_path / "pickled.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(UserError, match="not an IR-50 checkpoint"):
        load_backbone(f"ir50:{tmp_path / 'pickled.pth'}")


def test_bad_input_is_a_user_error(built, real_sets, backbones, tmp_path):
    base = [str(built), "--test", str(real_sets["rafdb"]), "--backbone", str(backbones["resnet"])]
    cases = [
        ([*base, "--mix", "0.5"], "--train-real and --mix go together"),
        ([*base, "--train-real", str(real_sets["real_train"]), "--mix", "1.5"], "not between 0 and 1"),
        ([str(tmp_path), "--test", str(real_sets["rafdb"])], "holds no build"),
        ([str(built), "--test", str(tmp_path / "missing")], "neither a dataset saved"),
        ([*base[:3], "--backbone", "microsoft/resnet-18", *SAME_PHOTOS], "not in the local Hugging Face cache"),
    ]
    numbered = tmp_path / "numbered"
    (numbered / "4").mkdir(parents=True)
    shutil.copy(next(real_sets["fer"].rglob("*.png")), numbered / "4" / "a.png")
    cases.append(([str(built), "--test", str(numbered), "--backbone", str(backbones["resnet"])],
                  "names its classes by number"))
    only_fear = tmp_path / "only-fear"
    shutil.copytree(real_sets["fer"] / "fear", only_fear / "fear")
    cases.append(([str(built), "--test", str(only_fear), "--backbone", str(backbones["resnet"]), *FAST, *SAME_PHOTOS],
                  "no test sample belongs to a class the model predicts"))
    for argv, message in cases:
        with pytest.raises(UserError, match=message):
            main(argv)
