"""Generator training pairs end to end, on the packaged real photos: the shipped example manifest with an AU
detector (a tiny ONNX model built here), every pair aligned at 512 px, every caption within the text encoder's
77 tokens, the AU names in the features after ``load_dataset``, a resumed run equal to an uninterrupted one,
the card, and ``train-au-adapter`` training from the release as it is."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml

from builder.cli import main
from builder.example_faces import write_example_faces
from builder.manifest.au_sets import AU_SETS
from tests.annotate.test_aus import onnx_detector
from tests.conftest import ROOT, dataset_rows
from tests.fixtures.people import REFERENCE_PEOPLE, THRESHOLD

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "manifests" / "training-pairs.yaml"
DETECTOR_AUS = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU25", "AU26"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The example manifest, run from a folder whose out/faces holds the real photos, with an AU detector."""
    work = tmp_path_factory.mktemp("pairs")
    write_example_faces(work / "out" / "faces")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["annotate"]["aus"] = {"model": str(onnx_detector(work / "detector", aus=DETECTOR_AUS)), "au_set": "disfa12"}
    (work / "pairs.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return work


@pytest.fixture(scope="module")
def built(work, monkeypatch_module):
    monkeypatch_module.chdir(work)
    assert main([str(work / "pairs.yaml"), "--out", "out/pairs", "--no-progress"]) == 0
    return work / "out" / "pairs"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_pair_is_aligned_captioned_and_measured(built):
    train = datasets.load_dataset(str(built))["train"]  # the parquet files, as from the Hub
    assert len(train) >= 6
    assert all(image.size == (512, 512) for image in train["image"])
    assert all(0 < n <= 77 for n in train["caption_tokens"])
    assert all("close-up photo of a person" in text for text in train["text"])
    names = list(AU_SETS["disfa12"])
    assert list(train.features["au"]) == names, "AU names travel with the data"
    measured = [n for n in names if n in DETECTOR_AUS]
    for au in train["au"]:
        assert all(0 <= au[n] <= 5 for n in measured) and all(au[n] is None for n in names if n not in measured)
    assert set(train["upscaled_by"]) <= {"resize", "none"} and set(train["caption_source"]) == {"template"}
    stats = json.loads((built / "stats.json").read_text())
    assert stats["source"]["license"] == "other" and stats["annotate"]["au_names"] == names
    assert stats["annotate"]["stages"]["aus"]["missing"] == [n for n in names if n not in measured]


def test_the_card_says_what_the_pairs_are(built):
    card = (built / "README.md").read_text()
    assert "## Training pairs" in card and "These are real people's faces" in card
    assert "text-to-image" in card and "license_name: source-images-licence" in card
    assert "AU intensities (0-5) were measured by" in card
    for figure in ("pairs", "caption_lengths", "au_by_class"):
        assert f"(figures/{figure}.png)" in card and (built / "figures" / f"{figure}.png").is_file()


def test_a_resumed_run_equals_an_uninterrupted_one(built, work):
    copy = shutil.copytree(built, work / "out" / "resumed")
    for stage in ("caption", "caption_check", "aus", "upscale"):
        shutil.rmtree(copy / "shards" / stage / "00001")
    (copy / ".release.json").unlink()
    assert main([str(work / "pairs.yaml"), "--out", str(copy), "--no-progress"]) == 0
    assert dataset_rows(copy) == dataset_rows(built)


def test_train_au_adapter_trains_from_the_release_as_it_is(built, work):
    config = work / "adapter.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": "builtin:tiny-sd", "au_set": "disfa12", "num_tokens": 2, "hidden_dim": 16, "resolution": 64,
        "output_dir": str(work / "adapter"),
        "data": {"dataset": str(built / "hf"), "split": "train", "caption_column": "text", "au_column": "au"},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "eval_examples": 2}}))
    assert main(["train-au-adapter", str(config), "--no-progress"]) == 0
    assert (work / "adapter" / "au_adapter.safetensors").is_file()


def test_people_of_a_held_out_set_are_left_out(work, reference, monkeypatch_module):
    """The identity gate in reverse: faces of people in a held-out evaluation set (a reference index) are dropped
    as identity_leak, so the generator never trains on the people it will be tested on."""
    data = yaml.safe_load((work / "pairs.yaml").read_text())
    data["annotate"]["aus"] = {"model": "none", "au_set": "disfa12"}
    data["curation"]["identity_leak"] = {"index": str(reference["index"]), "threshold": THRESHOLD}
    (work / "held-out.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch_module.chdir(work)
    assert main([str(work / "held-out.yaml"), "--out", "out/held-out", "--no-progress"]) == 0
    train = datasets.load_dataset(str(work / "out" / "held-out"))["train"]
    held_out = {f"group-{name[1:]}" if name.startswith("g") else name for name in REFERENCE_PEOPLE}
    kept = {Path(f).stem for f in train["source_file"]}
    assert kept and not kept & held_out, kept
    stats = json.loads((work / "out" / "held-out" / "stats.json").read_text())
    assert stats["stages"]["identity_leak"]["dropped"] == {"identity_leak": len(REFERENCE_PEOPLE)}
