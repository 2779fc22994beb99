"""An images source's own labels (``images.labels``): folder names, a CSV of file,label rows, or a dataset column,
mapped onto the manifest's label map by emotion name in any built-in spelling; an image whose label no map knows
(or that has none) is dropped as ``unknown_source_label``; the labels are part of the build's identity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from builder.cli import main


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))


def manifest(tmp_path: Path, images: dict, name: str = "labelled") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seed": 1, "images": images, "labels": {"label_map": "affectnet7"},
        "curation": {"faces": {"enabled": False}, "dedupe": {"enabled": False}},
        "output": {"splits": {"train": 1.0}, "shard_size": 4}}, sort_keys=False))
    return path


def released(out: Path) -> dict[str, str]:
    train = load_from_disk(str(out / "hf"))["train"]
    names = train.features["label"].names
    return {source: names[label] for source, label in zip(train["source_file"], train["label"])}


def rejected(out: Path) -> dict[str, str]:
    path = out / "rejected" / "ingest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {row["source"]: row["drop"]["reason"] for row in rows}


def test_folder_names_in_any_spelling(tmp_path, capsys):
    folder = tmp_path / "photos"
    for i, (cls, n) in enumerate([("Happiness", 2), ("surprised", 1), ("ANGER", 1), ("contempt", 1), ("misc", 1)]):
        (folder / cls).mkdir(parents=True)
        for j in range(n):
            noise(10 * i + j).save(folder / cls / f"{j}.png")
    out = tmp_path / "out"
    assert main([str(manifest(tmp_path, {"folder": str(folder), "labels": "folder-names"})), "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert released(out) == {"Happiness/0.png": "happy", "Happiness/1.png": "happy", "surprised/0.png": "surprise",
                             "ANGER/0.png": "anger"}
    # affectnet7 has no contempt: dropped with the reason, never guessed
    assert set(rejected(out).values()) == {"unknown_source_label"} and len(rejected(out)) == 2


def test_a_csv_of_file_and_label(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    for name in ("a/1.png", "2.png", "3.png", "4.png"):
        noise(len(name) + ord(name[0])).save(folder / name)
    table = tmp_path / "labels.csv"
    table.write_text("file,label\na/1.png,Sadness\n2.png,neutral\n3.png,not-an-emotion\n")  # 4.png: no row
    out = tmp_path / "out"
    path = manifest(tmp_path, {"folder": str(folder), "labels": {"csv": str(table)}})
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert released(out) == {"a/1.png": "sad", "2.png": "neutral"}
    assert rejected(out) == {"3.png": "unknown_source_label", "4.png": "unknown_source_label"}

    # the labels are part of the build's identity: a changed CSV is another build, not a resume
    table.write_text("file,label\na/1.png,happy\n2.png,neutral\n")
    assert main([str(path), "--out", str(out), "--no-progress"]) == 2
    assert "manifest" in capsys.readouterr().err.lower()


def test_a_dataset_column_of_class_indices(tmp_path, capsys):
    rows = {"image": [noise(i) for i in range(4)], "emotion": [3, 1, 6, 0]}  # FER2013 order: happy, disgust, ...
    features = Features({"image": ImageFeature(), "emotion": ClassLabel(
        names=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"])})
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    path = manifest(tmp_path, {"dataset": str(tmp_path / "ds"), "labels": {"column": "emotion"}})
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert sorted(released(out).values()) == ["anger", "disgust", "happy", "neutral"]


@pytest.mark.parametrize("images, expected", [
    ({"labels": {"column": "emotion"}}, "images.labels.column 'emotion' is not a column"),
    ({"labels": {"csv": "missing.csv"}}, "images.labels.csv 'missing.csv' is not a file"),
])
def test_bad_labels_are_refused(tmp_path, capsys, images, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Dataset.from_dict({"image": [noise(0)], "label": ["happy"]}, features=Features(
        {"image": ImageFeature(), "label": ClassLabel(names=["happy"])})).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "photos").mkdir()
    noise(1).save(tmp_path / "photos" / "1.png")
    source = {"dataset": "ds"} if "column" in images["labels"] else {"folder": "photos"}
    code = main([str(manifest(tmp_path, {**source, **images})), "--out", "out", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "fix:" in err and "Traceback" not in err
