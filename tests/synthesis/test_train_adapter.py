"""AU adapter training on the real tiny pipeline: the loss falls, resume is exact, the result generates."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from builder.cli import main
from builder.manifest.loader import load_manifest
from builder.synthesis.training.config import TrainConfig
from tests.conftest import ROOT

AU12, AU4 = 6, 2  # positions in the disfa12 vector


def make_image_folder(folder: Path, n: int = 16) -> Path:
    """Images whose colours follow their AU12 / AU4 intensities, so AUs explain part of each image."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        au = [0.0] * 12
        au[AU12], au[AU4] = float(rng.uniform(0, 5)), float(rng.uniform(0, 5))
        ramp = np.linspace(0, 1, 64)[:, None] * np.ones((1, 64))
        pixels = np.stack([ramp * au[AU12] / 5, (1 - ramp) * au[AU4] / 5, np.full_like(ramp, 0.3)], -1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "caption": "a portrait photo of a face", "au": au}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_config(path: Path, data: dict, out: Path, **train) -> Path:
    config = {"base_model": "builtin:tiny-sd", "au_set": "disfa12", "num_tokens": 4, "hidden_dim": 64,
              "resolution": 64, "output_dir": str(out), "data": data,
              "train": {"steps": 20, "batch_size": 4, "learning_rate": 0.001, "checkpoint_every": 10,
                        "log_every": 5, "eval_examples": 8, "seed": 1, **train}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("train") / "images")


def train(config: Path) -> None:
    assert main(["train-au-adapter", str(config), "--no-progress"]) == 0


def test_loss_falls_and_resume_is_exact(folder, tmp_path):
    whole = tmp_path / "whole"
    train(write_config(tmp_path / "whole.yaml", {"image_folder": str(folder)}, whole))
    summary = json.loads((whole / "training_summary.json").read_text())
    assert summary["eval_loss_end"] < summary["eval_loss_step_10"] < summary["eval_loss_start"]
    assert [json.loads(line)["step"] for line in (whole / "loss.jsonl").read_text().splitlines()] == [5, 10, 15, 20]

    resumed = tmp_path / "resumed"
    train(write_config(tmp_path / "first.yaml", {"image_folder": str(folder)}, resumed, steps=10))
    train(write_config(tmp_path / "more.yaml", {"image_folder": str(folder)}, resumed, steps=20))
    assert (resumed / "au_adapter.safetensors").read_bytes() == (whole / "au_adapter.safetensors").read_bytes()
    assert [json.loads(line)["step"] for line in (resumed / "loss.jsonl").read_text().splitlines()] == [5, 10, 15, 20]
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-0000010", "step-0000020"]


def test_killed_run_resumes_from_its_checkpoint(folder, tmp_path):
    """A run stopped after its step-15 checkpoint (later steps lost), moved to another folder, ends the same."""
    import shutil

    whole = tmp_path / "whole"
    train(write_config(tmp_path / "c.yaml", {"image_folder": str(folder)}, whole, checkpoint_every=5))
    crashed = tmp_path / "crashed"
    shutil.copytree(whole, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-0000020")
    (crashed / "au_adapter.safetensors").unlink()
    config = write_config(tmp_path / "c2.yaml", {"image_folder": str(folder)}, crashed, checkpoint_every=5)
    train(config)
    assert [json.loads(line)["step"] for line in (crashed / "loss.jsonl").read_text().splitlines()] == [5, 10, 15, 20]
    assert (crashed / "au_adapter.safetensors").read_bytes() == (whole / "au_adapter.safetensors").read_bytes()


def test_trained_adapter_loads_into_the_generator(folder, tmp_path, write_manifest):
    adapter = tmp_path / "adapter"
    train(write_config(tmp_path / "a.yaml", {"image_folder": str(folder)}, adapter, steps=4, checkpoint_every=4))
    manifest = write_manifest({"name": "trained", "labels": {"counts": {"happy": 2}},
                               "generator": {"au_adapter": {"path": str(adapter)}}})
    assert main([str(manifest), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["released"]["total"] == 2 and stats["au_adapter"]["path"] == str(adapter)


def test_trains_on_a_datasets_dataset(tmp_path, write_manifest, capsys):
    """A build's own output (image, prompt, au columns) is a valid training set: its ``au`` struct of named
    floats, and the list of floats older releases have."""
    from datasets import Features, List, Value, load_from_disk

    from builder.manifest.au_sets import AU_SETS
    from builder.synthesis.training.config import TrainData
    from builder.synthesis.training.data import TrainExamples

    manifest = write_manifest({"name": "source", "labels": {"counts": 2}})
    assert main([str(manifest), "--out", str(tmp_path / "build"), "--no-progress"]) == 0
    out = tmp_path / "adapter"
    train(write_config(tmp_path / "d.yaml", {"dataset": str(tmp_path / "build" / "hf"), "split": "train"}, out,
                       steps=2, checkpoint_every=2))
    assert (out / "au_adapter.safetensors").is_file()

    released = load_from_disk(str(tmp_path / "build" / "hf"))["train"]
    names = list(released.features["au"])
    assert names == list(AU_SETS["disfa12"])
    wanted = [[row["au"][n] for n in names] for row in released]
    old = released.map(lambda row: {"au": [row["au"][n] for n in names]},  # an older release's column
                       features=Features({**released.features, "au": List(Value("float32"), length=len(names))}))
    old.save_to_disk(str(tmp_path / "old"))
    for folder in ("build/hf", "old"):
        examples = TrainExamples(TrainData(dataset=str(tmp_path / folder)), tuple(names), "d.yaml")
        got = np.array([examples.items[i][2] for i in range(len(examples))])
        assert got == pytest.approx(np.array(wanted)), folder

    # a struct naming AUs the config's set lacks would skip every row: refused, naming the sets that fit
    other = write_config(tmp_path / "e.yaml", {"dataset": str(tmp_path / "build" / "hf"), "split": "train"},
                         tmp_path / "e")
    other.write_text(other.read_text().replace("au_set: disfa12", "au_set: disfa8"))
    assert main(["train-au-adapter", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {other}: data.au_column 'au' holds AUs" in err and "not in the config's au_set" in err
    assert "fix: set au_set to one that has every AU of the column (disfa12" in err


def test_bad_examples_are_counted_and_skipped(folder, tmp_path, capsys):
    import shutil

    messy = shutil.copytree(folder, tmp_path / "messy")
    (messy / "broken.png").write_bytes(b"\x89PNG not really")
    with open(messy / "metadata.jsonl", "a") as fh:
        fh.write("{this is not json\n")
        fh.write(json.dumps({"file_name": "absent.png", "caption": "x", "au": [0.0] * 12}) + "\n")
        fh.write(json.dumps({"file_name": "broken.png", "caption": "x", "au": [0.0] * 12}) + "\n")
        fh.write(json.dumps({"file_name": "00.png", "caption": "x", "au": {"AU99": 1.0}}) + "\n")
        fh.write(json.dumps({"file_name": "00.png", "caption": "x", "au": {"AU12": 9.0}}) + "\n")
    train(write_config(tmp_path / "m.yaml", {"image_folder": str(messy)}, tmp_path / "out", steps=1,
                       checkpoint_every=1))
    err = capsys.readouterr().err
    assert "skipped training examples: {'bad_metadata': 1, 'missing_image': 1, 'unreadable_image': 1, 'bad_au': 2}" in err


def test_config_errors_name_the_field_and_fix(tmp_path, folder, capsys):
    both = write_config(tmp_path / "both.yaml", {"image_folder": str(folder), "dataset": "x"}, tmp_path / "o")
    assert main(["train-au-adapter", str(both)]) == 2
    err = capsys.readouterr().err
    assert f"error: {both}: field 'data'" in err and "needs exactly one of 'dataset' and 'image_folder'" in err

    out = tmp_path / "changed"
    train(write_config(tmp_path / "a.yaml", {"image_folder": str(folder)}, out, steps=2, checkpoint_every=2))
    other = write_config(tmp_path / "b.yaml", {"image_folder": str(folder)}, out, steps=4, learning_rate=0.01)
    assert main(["train-au-adapter", str(other)]) == 2
    assert "holds a training run with a different config (changed: train.learning_rate)" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    assert main(["train-au-adapter", str(write_config(tmp_path / "e.yaml", {"image_folder": str(empty)}, tmp_path / "e"))]) == 2
    assert "no usable training example" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "train").glob("au-adapter*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path):
    assert load_manifest(path, model=TrainConfig).train.steps > 0


def test_empty_aus_are_read_as_zero_or_skip_the_row(tmp_path):
    """A detector that does not measure every AU of the set leaves those empty (null): read as 0 and counted per
    AU by default, or the row skipped with ``missing_au: skip``."""
    from PIL import Image

    from builder.synthesis.training.config import TrainData
    from builder.synthesis.training.data import TrainExamples

    Image.new("RGB", (8, 8), (90, 60, 30)).save(tmp_path / "a.png")
    lines = [{"file_name": "a.png", "caption": "a", "au": {"AU1": 1.5, "AU2": None}},
             {"file_name": "a.png", "caption": "b", "au": [None, 2.0, 0.5]},
             {"file_name": "a.png", "caption": "c", "au": {"AU1": 1.0, "AU2": 2.0, "AU4": 3.0}}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    names = ("AU1", "AU2", "AU4")
    examples = TrainExamples(TrainData(image_folder=str(tmp_path)), names, "c.yaml")
    assert [item[2] for item in examples.items] == [[1.5, 0.0, 0.0], [0.0, 2.0, 0.5], [1.0, 2.0, 3.0]]
    assert examples.unmeasured == {"AU2": 1, "AU1": 1} and not examples.skipped
    examples = TrainExamples(TrainData(image_folder=str(tmp_path), missing_au="skip"), names, "c.yaml")
    assert [item[1] for item in examples.items] == ["c"] and examples.skipped == {"bad_au": 2}
