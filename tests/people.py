"""Shared fixtures of real face photos (``builder.example_faces``) and a dlib reference index built from them.

People: the six faces of insightface's group photo (g1..g6, left to right), insightface's portrait (Tom
Hanks) and skimage's astronaut. The reference index holds g1, g3, g5 and the portrait (plus a grey
picture without a face and a broken file); g2, g4, g6 and the astronaut are other people. conftest.py
imports the fixtures, so every test module can use them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

THRESHOLD = 0.95
"""A leak / same-face threshold for dlib on these photos: near copies measured 0.981-1.000, different people
0.81-0.91."""
REFERENCE_PEOPLE = ("g1", "g3", "g5", "portrait")
OTHER_PEOPLE = ("g2", "g4", "g6", "astronaut")


def augment(image, kind: str):
    """A near copy of a photo (``builder.example_faces.near_copy``)."""
    from builder.example_faces import near_copy

    return near_copy(image, kind)


def write_config(path: Path, output_dir: Path, sources: list[dict], **extra) -> Path:
    """An index-reference config (dlib, MTCNN score 0.9, faces of 60 px and more)."""
    config = {"output_dir": str(output_dir), "backend": "dlib", "sources": sources,
              "faces": {"min_score": 0.9, "min_size": 60}, "batch_size": 2, **extra}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def people() -> dict:
    """name -> RGB PIL photo (see the module docstring)."""
    from builder.example_faces import example_faces

    out = example_faces()
    assert sorted(out) == ["astronaut", "g1", "g2", "g3", "g4", "g5", "g6", "portrait"]
    return out


@pytest.fixture(scope="session")
def reference(people, tmp_path_factory) -> dict:
    """A dlib reference index of g1, g3, g5 and the portrait, plus a grey picture and a broken file."""
    from PIL import Image

    from builder.cli import main

    work = tmp_path_factory.mktemp("reference")
    folder = work / "photos"
    (folder / "group").mkdir(parents=True)
    for name in REFERENCE_PEOPLE:
        people[name].save(folder / ("group" if name.startswith("g") else ".") / f"{name}.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(folder / "grey.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    config = write_config(work / "reference.yaml", work / "index", [{"name": "celebs", "folder": str(folder)}])
    assert main(["index-reference", str(config), "--no-progress"]) == 0
    return {"work": work, "folder": folder, "config": config, "index": work / "index"}
