"""What the training-pair cases share: real face photos in label folders, a training-pairs build over them, and
the checks that a refused model touched nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml


def photos(env, dest: Path) -> Path:
    """happy/ and sad/ folders with one real face photo each (the example faces, written once per session)."""
    source = env.cache / "pair-photos"
    if not (source / "sad").is_dir():
        from builder.example_faces import write_example_faces

        written = {p.stem: p for p in write_example_faces(env.cache / "pair-example-faces")}
        for label, name in (("happy", "portrait"), ("sad", "group-1")):
            (source / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(written[name], source / label / f"{name}.png")
    return shutil.copytree(source, dest)


def pairs_build(tmp_path: Path, env, name: str, annotate: dict) -> tuple[list[str], Path]:
    """A training-pairs build of two real face photos (labels from their folders, 64 px crops) with ``annotate``;
    (argv, its --out folder)."""
    manifest = {"name": name, "version": "0.1.0", "seed": 1,
                "images": {"folder": str(photos(env, tmp_path / "photos")), "labels": "folder-names",
                           "license": "cc0-1.0"},
                "labels": {"label_map": "affectnet7"},
                "annotate": {"crop": {"size": 64}, **annotate},
                "output": {"shard_size": 4}}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = tmp_path / "out"
    return [str(path), "--out", str(out), "--no-progress"], out


def nothing_created(out: Path, what: str):
    def check():
        assert not out.exists(), f"{what} is checked before the build folder is made"

    return check


def no_stage_output(out: Path, stage: str):
    def check():
        assert not list((out / "shards").glob(f"{stage}/*/records.jsonl")), f"the '{stage}' stage wrote records"

    return check
