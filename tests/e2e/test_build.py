"""The CLI end to end on the tiny pipeline: dataset, card, stats, rerun, refusals."""
from __future__ import annotations

import fcntl
import json
import re
from pathlib import Path

import pytest
from datasets import ClassLabel, Image, Value, load_from_disk
from huggingface_hub import DatasetCard

from builder.cli import main
from builder.expand.specs import iter_specs
from builder.manifest.loader import load_manifest
from cards.dataset import au_names_from_info
from tests.conftest import DEMO, dataset_rows


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "demo"
    assert main([str(DEMO), "--out", str(out), "--no-progress"]) == 0
    return out


def test_dataset_has_every_requested_sample_and_the_features(demo_out):
    manifest = load_manifest(DEMO)
    dd = load_from_disk(str(demo_out / "hf"))
    assert sorted(dd) == ["test", "train", "validation"]
    assert sum(ds.num_rows for ds in dd.values()) == manifest.total == 28
    f = dd["train"].features
    assert f["image"] == Image()
    assert f["label"] == ClassLabel(names=list(manifest.labels.names))
    assert f["au"] == {n: Value("float32") for n in manifest.aus.names}, "named AU intensities, in AU-set order"
    for col in ("prompt", "negative_prompt", "sample_id", "age", "gender", "ethnicity", "pose", "trait",
                "generator_model", "generator_revision", "generator_weights_sha256"):
        assert f[col] == Value("string"), col
    assert f["seed"] == Value("int64")
    assert au_names_from_info(dd["train"].info.description) == list(manifest.aus.names)

    specs = {s.sample_id: s for s in iter_specs(manifest)}
    seen = set()
    for ds in dd.values():
        for row in ds:
            spec = specs[row["sample_id"]]
            seen.add(row["sample_id"])
            assert row["label"] == spec.label and row["prompt"] == spec.prompt and row["seed"] == spec.seed
            assert row["age"] == spec.attributes["age"]
            assert [row["au"][n] for n in manifest.aus.names] == pytest.approx(spec.au, abs=1e-6)
            assert row["image"].size == (64, 64)
            assert row["generator_model"] == "builtin:tiny-sd"
    assert seen == set(specs)


def test_card_metadata_and_numbers_match_stats(demo_out):
    stats = json.loads((demo_out / "stats.json").read_text())
    card = DatasetCard.load(demo_out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "mit"
    assert meta["task_categories"] == ["image-classification"]
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["size_categories"] == ["n<1K"]
    assert {"synthetic-data", "facial-expression-recognition"} <= set(meta["tags"])
    assert "These images are not faces" in card.text
    assert "| AU conditioning | none: images follow the prompt only" in card.text
    assert stats["generator"]["weights_sha256"] in card.text

    contents = card.text.split("## Contents", 1)[1].split("\n\n")[1]  # the class table, not the per-axis ones
    rows = re.findall(r"^\| (\w+) \| (\d) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", contents, re.M)
    assert len(rows) == 7
    for name, _, train, val, test, total in rows:
        assert int(total) == stats["released"]["classes"][name]
        split_counts = [stats["released"]["class_by_split"][s].get(name, 0) for s in ("train", "validation", "test")]
        assert [int(train), int(val), int(test)] == split_counts
    funnel = re.findall(r"^\| (generate|integrity|release) \| (\d+) \| (\d+) \|", card.text, re.M)
    assert [(s, int(i), int(k)) for s, i, k in funnel] == [
        (s, stats["stages"][s]["in"], stats["stages"][s]["kept"]) for s in ("generate", "integrity", "release")]


def test_stats_and_rejected_files(demo_out):
    stats = json.loads((demo_out / "stats.json").read_text())
    assert stats["stages"]["generate"] == {**stats["stages"]["generate"], "in": 28, "kept": 28, "shards": 4}
    assert stats["stages"]["integrity"]["in"] == 28
    assert stats["released"]["total"] == 28 == sum(stats["released"]["splits"].values())
    assert stats["released"]["splits"] == {"train": 22, "validation": 3, "test": 3}
    for stage in ("generate", "integrity"):
        assert (demo_out / "rejected" / f"{stage}.jsonl").read_text() == ""


def test_rerun_generates_nothing_and_leaves_the_dataset_identical(demo_out, capsys):
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_out.rglob("*") if p.is_file() and p.name != ".lock"}
    before = dataset_rows(demo_out)
    capsys.readouterr()
    assert main([str(DEMO), "--out", str(demo_out), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == files
    assert dataset_rows(demo_out) == before


def test_changed_manifest_is_refused(demo_out, write_manifest, capsys):
    changed = write_manifest({"generator": {"steps": 5}})
    before = sorted(p.name for p in demo_out.rglob("*"))
    assert main([str(changed), "--out", str(demo_out)]) == 2
    err = capsys.readouterr().err
    assert "holds a build of a different manifest (changed: generator.steps)" in err
    assert "fix: use a new --out folder" in err
    assert sorted(p.name for p in demo_out.rglob("*")) == before


def test_device_change_resumes(demo_out, write_manifest, capsys):
    moved = write_manifest({"generator": {"device": "cpu"}})
    assert main([str(moved), "--out", str(demo_out), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_foreign_folder_is_not_touched(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main([str(DEMO), "--out", str(tmp_path)]) == 2
    assert "is not empty and holds no build" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_second_process_on_the_same_folder_is_refused(demo_out, capsys):
    with open(demo_out / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([str(DEMO), "--out", str(demo_out)]) == 2
    assert "another build-dataset process" in capsys.readouterr().err


def test_default_out_folder_and_dropped_samples(tmp_path, write_manifest, monkeypatch, capsys):
    """min_std above what the tiny model's images reach: every sample is dropped. The build exits 2 with the
    funnel and releases nothing; the shards are kept, and --allow-empty releases the empty set, counted."""
    manifest = write_manifest({"name": "all-dropped", "labels": {"counts": {"happy": 2, "sad": 1}},
                               "curation": {"integrity": {"min_std": 128}}})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "all-dropped"
    assert main([str(manifest), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {Path('out/all-dropped')}: no sample is left to release" in err
    assert "    integrity: 3 in, 0 kept, dropped blank_image 3" in err and "--allow-empty" in err
    assert not (out / "stats.json").exists() and not (out / ".release.json").exists()
    assert (out / "shards" / "integrity" / "00000" / "stats.json").is_file()
    assert main([str(manifest), "--no-progress", "--allow-empty"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["integrity"]["dropped"] == {"blank_image": 3}
    assert stats["released"]["total"] == 0
    rejected = [json.loads(line) for line in (out / "rejected" / "integrity.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rejected) == ["all-dropped-0000000", "all-dropped-0000001", "all-dropped-0000002"]
    assert all(r["drop"]["reason"] == "blank_image" for r in rejected)
    assert "left out of hf/" in capsys.readouterr().err


def test_json_needs_dry_run(capsys):
    assert main([str(DEMO), "--json"]) == 2
    assert "--json only applies to --dry-run" in capsys.readouterr().err


def test_schema_check_and_validate(capsys):
    assert main(["schema", "--check"]) == 0
    assert main(["validate", str(DEMO)]) == 0
    assert "ok (28 samples, 4 shards)" in capsys.readouterr().out


def test_every_command_is_documented():
    from builder.cli import SUBCOMMANDS
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    for command in SUBCOMMANDS:
        assert f"`build-dataset {command}" in readme, command
    for flag in ("--out", "--dry-run", "--json"):
        assert flag in readme
    assert readme.count("```bash\nmake demo") == 1 and "make test" in readme


def test_truncated_prompts_are_counted_and_reported(tmp_path, write_manifest, capsys):
    manifest = write_manifest({"name": "long", "labels": {"counts": {"happy": 2}},
                               "prompts": {"templates": ["a {expression} face, " + "very detailed, " * 60]}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["prompts"]["truncated"] == 2 and stats["prompts"]["max_tokens"] == 77
    assert stats["prompts"]["longest"] > 77
    assert "2 prompts are longer than the text encoder's 77 tokens" in capsys.readouterr().err
    assert "| prompts truncated | 2 (text encoder limit 77 tokens" in (out / "README.md").read_text()


def test_folder_left_with_only_a_lock_is_reused(tmp_path, write_manifest):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("12345")  # a run killed before it wrote build.json
    manifest = write_manifest({"name": "relock", "labels": {"counts": {"happy": 1}}})
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "stats.json").read_text())["released"]["total"] == 1


@pytest.mark.parametrize("section", ["prompts.axes", "output.splits"])
def test_reordered_keys_are_a_different_manifest(demo_out, demo_data, tmp_path, section, capsys):
    """Axis order drives the random draws and split order the split sizes: reordering is a change."""
    import yaml

    data = json.loads(json.dumps(demo_data))
    parent, key = section.split(".")
    data[parent][key] = dict(reversed(list(data[parent][key].items())))
    path = tmp_path / "reordered.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main([str(path), "--out", str(demo_out)]) == 2
    assert f"(changed: order of the keys in {section})" in capsys.readouterr().err
