"""FERAnno on the real tiny pipeline: hooks, inversion, calibration, training, resume, the labeller."""
from __future__ import annotations

import colorsys
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from builder.cli import main
from builder.core.errors import ModelLoadError
from curation.labelling.feranno import calibration as cal
from tests.conftest import ROOT

CLASSES = ("happy", "sad", "anger")  # affectnet7 indices 1, 2, 6
INDEX = {"happy": 1, "sad": 2, "anger": 6}


# -- the backbone -------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from builder.manifest import Generator
    from builder.models.diffusion import load_pipeline

    pipe, _, _ = load_pipeline(Generator(model="builtin:tiny-sd", device="cpu", dtype="float32"))
    return pipe


def prompt_states(pipe):
    from builder.manifest.label_maps import LABEL_MAPS
    from curation.labelling.feranno.extract import default_prompt

    prompt = default_prompt(LABEL_MAPS["affectnet7"])
    with torch.no_grad():
        text, _ = pipe.encode_prompt([prompt], "cpu", 1, False)
    return prompt, text


def test_default_prompt_names_every_class(pipe):
    from builder.manifest.label_maps import LABEL_MAPS
    from curation.labelling.feranno.extract import (
        ExtractSettings,
        FeatureExtractor,
        default_prompt,
    )

    prompt = default_prompt(LABEL_MAPS["affectnet7"])
    assert prompt == ("a close-up photo of a face with a neutral, happy, sad, surprised, fearful, disgusted or "
                      "angry expression")
    extractor = FeatureExtractor(pipe, ExtractSettings(64, prompt, 50, 200))
    assert extractor.tokens == len(pipe.tokenizer(prompt).input_ids) == 41  # BOS + 39 pieces + EOS
    assert extractor.text.shape == (1, 41, 32)


def test_feature_tap_shapes_and_unchanged_output(pipe):
    from curation.labelling.feranno.features import FeatureTap

    unet = pipe.unet
    _, text = prompt_states(pipe)
    text = text.expand(2, -1, -1)
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = unet(x, 181, encoder_hidden_states=text).sample
        with FeatureTap(unet, 41) as tap:
            tapped = unet(x, 181, encoder_hidden_states=text).sample
        with FeatureTap(unet, 77) as full:
            unet(x, 181, encoder_hidden_states=text)
    torch.testing.assert_close(tapped, plain, atol=1e-5, rtol=1e-5)
    assert [tuple(f.shape) for f in tap.features] == [(2, 64, 16, 16), (2, 32, 32, 32)]
    assert {hw: tuple(a.shape) for hw, a in tap.attention.items()} == {(16, 16): (2, 41, 16, 16)}
    assert tap.shapes() == {"features": [[64, 16, 16], [32, 32, 32]], "attention": {"16x16": [41, 16, 16]}}
    maps = tap.attention[(16, 16)]
    assert maps.min() >= 0 and maps.sum(1).max() <= 1 + 1e-5
    assert torch.allclose(full.attention[(16, 16)].sum(1), torch.ones(2, 16, 16), atol=1e-5)  # all 77 keys
    assert torch.equal(full.attention[(16, 16)][:, :41], maps)
    # everything is put back: the same processor objects, no hooks left
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert not unet._forward_pre_hooks and not unet.up_blocks[0].upsamplers[0]._forward_pre_hooks
    assert not unet.up_blocks[1]._forward_hooks


def test_feature_tap_restores_on_error(pipe):
    from curation.labelling.feranno.features import FeatureTap

    before = dict(pipe.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), FeatureTap(pipe.unet, 41):
        raise RuntimeError("boom")
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())


def test_inversion_reconstructs(pipe):
    """DDIM inversion to t=181 and sampling back reconstructs the latent.

    The tiny VAE's random weights give latents of std ~0.05 instead of the ~1 of a
    trained VAE's scaled latents, which the scheduler assumes; the encoded
    astronaut latent is standardised to that scale. Measured: relative error
    0.008, the inverted latent 0.18 away from x0 (relative).
    """
    from skimage import data

    from curation.labelling.feranno.inversion import (
        denoise_from,
        encode,
        invert_to,
        schedule,
    )

    image = Image.fromarray(data.astronaut()).resize((64, 64), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        x0 = encode(pipe, pixels)
    x0 = (x0 - x0.mean()) / x0.std()
    _, text = prompt_states(pipe)
    assert schedule(pipe, 50, 200) == list(range(1, 182, 20))
    x_t, t = invert_to(pipe, x0, text, 50, 200)
    assert t == 181
    back = denoise_from(pipe, x_t, text, 50, 200)
    assert float((x_t - x0).norm() / x0.norm()) > 0.1
    assert float((back - x0).norm() / x0.norm()) < 0.02


# -- calibration --------------------------------------------------------------
def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    labels = np.array([0, 1, 1, 1])
    # bin (0.9, 1.0]: 2 of 4, accuracy 0.5, confidence 0.95 -> 0.45; bin (0.6, 0.7]: 2 of 4, 1.0 vs 0.65 -> 0.35
    assert cal.expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert cal.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
    assert cal.accuracy(probs, labels) == 0.75


def test_macro_accuracy_counts_present_classes():
    probs = np.eye(3)[[0, 0, 0, 0]]
    labels = np.array([0, 0, 0, 1])
    assert cal.accuracy(probs, labels) == 0.75
    assert cal.macro_accuracy(probs, labels) == 0.5  # class 2 is absent and not counted
    assert cal.per_class_accuracy(probs, labels) == {0: 1.0, 1: 0.0}


def test_temperature_fixes_over_and_under_confidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    signal = np.eye(4)[labels] * 1.5 + rng.normal(0, 1, (400, 4))  # about 70% top-1 accuracy
    for scale, side in ((8.0, "over"), (0.2, "under")):
        logits = signal * scale
        t = cal.fit_temperature(logits, labels)
        before, after = cal.softmax(logits), cal.softmax(logits, t)
        assert (t > 2) if side == "over" else (t < 0.5)
        assert cal.nll(after, labels) < cal.nll(before, labels)
        assert cal.expected_calibration_error(after, labels) < cal.expected_calibration_error(before, labels)
        assert cal.accuracy(after, labels) == cal.accuracy(before, labels)


# -- training -----------------------------------------------------------------
def pattern(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """happy: red horizontal stripes, sad: blue vertical stripes, anger: green checkerboard; jittered hue,
    saturation, period, phase, shift and pixel noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(7, 11)
    dx, dy = rng.integers(-4, 5, 2)
    rows, cols = np.sin(2 * np.pi * (y + dy) / period + phase), np.sin(2 * np.pi * (x + dx) / period + phase)
    wave, hue = {"happy": (rows, 0.0), "sad": (cols, 0.62), "anger": (np.sign(rows * cols), 0.33)}[kind]
    rgb = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.04, 0.04)) % 1, rng.uniform(0.6, 0.9), 1.0))
    image = (0.5 + 0.35 * wave[..., None]) * rgb + rng.normal(0, 0.05, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_folder(folder: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (folder / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pattern(kind, rng)).save(folder / kind / f"{i:02d}.png")
    return folder


def write_config(path: Path, out: Path, data: dict, **train) -> Path:
    # timestep 20 (t=1): the tiny VAE's latents are ~20x smaller than a trained VAE's, and beyond t~20 the random
    # UNet's inversion swamps them (held-out accuracy falls to ~0.5 at t=181); real backbones use 200.
    config = {"base_model": "builtin:tiny-sd", "label_map": "affectnet7", "resolution": 64,
              "inversion": {"steps": 50, "timestep": 20}, "model": {"hidden_dim": 32, "heads": 4},
              "output_dir": str(out), "data": data,
              "train": {"epochs": 20, "batch_size": 16, "learning_rate": 0.001, "seed": 0, "device": "cpu",
                        "checkpoint_every": 5, **train}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("feranno-data")
    return make_folder(root / "train", 20, seed=0), make_folder(root / "val", 10, seed=1)


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    """One uninterrupted 20-epoch run; returns (output folder, its stderr)."""
    root = tmp_path_factory.mktemp("feranno-run")
    train, val = folders
    config = write_config(root / "c.yaml", root / "out", {"image_folder": str(train),
                                                          "validation": {"image_folder": str(val)}})
    assert main(["train-feranno", str(config), "--no-progress"]) == 0
    return root / "out", {"image_folder": str(train), "validation": {"image_folder": str(val)}}


def test_training_learns_and_records_everything(trained):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    # measured: accuracy 1.0, macro 1.0 (chance 0.33)
    assert metrics["examples"] == 30 and metrics["accuracy"] >= 0.8 and metrics["macro_accuracy"] >= 0.8
    for key in ("nll_before", "nll_after", "ece_before", "ece_after", "temperature"):
        assert np.isfinite(metrics[key])
    assert metrics["nll_after"] <= metrics["nll_before"] + 1e-9
    assert set(metrics["per_class"]) == set(CLASSES) and all(v["count"] == 10 for v in metrics["per_class"].values())
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["features"]["extracted"] == 90 and summary["features"]["t"] == 1
    assert summary["features"]["shapes"] == {"features": [[64, 16, 16], [32, 32, 32]],
                                             "attention": {"16x16": [41, 16, 16]}}
    assert [json.loads(line)["epoch"] for line in (out / "loss.jsonl").read_text().splitlines()] == list(range(1, 21))
    config = json.loads((out / "feranno_config.json").read_text())
    meta = config["meta"]
    assert meta["label_names"] == ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    assert meta["base_model"] == "builtin:tiny-sd" and len(meta["weights_sha256"]) == 64
    assert meta["inversion"] == {"steps": 50, "timestep": 20, "t": 1} and meta["resolution"] == 64
    assert meta["temperature"] == pytest.approx(metrics["temperature"]) and "expression" in meta["prompt"]
    assert config["feature_channels"] == [64, 32] and config["tokens"] == 41
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0000015", "epoch-0000020"]
    assert len(list((out / "features").glob("*/*.safetensors"))) == 90


def test_labeller_reproduces_the_reported_accuracy(trained, folders):
    from curation.labelling.feranno.labeller import FERAnnoLabeller

    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    labeller = FERAnnoLabeller.from_pretrained(out, device="cpu")
    assert labeller.label_names == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")
    files = [(p, INDEX[p.parent.name]) for p in sorted(folders[1].glob("*/*.png"))]
    images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in files]
    probs = labeller.predict(images)
    labels = np.array([label for _, label in files])
    assert probs.shape == (30, 7) and np.allclose(probs.sum(1), 1)
    assert cal.accuracy(probs, labels) == pytest.approx(metrics["accuracy"])
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(metrics["ece_after"], abs=1e-3)
    as_float = torch.from_numpy(np.stack(images[:4]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    assert np.allclose(labeller.predict(as_float), probs[:4], atol=1e-5)
    described = labeller.describe()
    assert described["base_model"] == "builtin:tiny-sd" and described["timestep"] == 1
    assert described["path"] == str(out) and len(described["sha256"]) == 64


def test_labeller_refuses_other_backbone_weights(trained, tmp_path):
    from curation.labelling.feranno.labeller import FERAnnoLabeller

    out, _ = trained
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("feranno.safetensors", "feranno_config.json"):
        shutil.copy(out / name, copy / name)
    config = json.loads((copy / "feranno_config.json").read_text())
    config["meta"]["weights_sha256"] = "0" * 64
    (copy / "feranno_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="meta.weights_sha256") as err:
        FERAnnoLabeller.from_pretrained(copy, device="cpu")
    assert str(copy / "feranno_config.json") in str(err.value) and "fix:" in str(err.value)


def test_resume_equals_uninterrupted_and_reuses_features(trained, tmp_path, capsys):
    whole, data = trained
    out = tmp_path / "out"
    assert main(["train-feranno", str(write_config(tmp_path / "a.yaml", out, data, epochs=10)), "--no-progress"]) == 0
    assert "features: 90 extracted, 0 reused" in capsys.readouterr().err
    config = write_config(tmp_path / "b.yaml", out, data)
    assert main(["train-feranno", str(config), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "features: 0 extracted, 90 reused" in err and "resuming from epoch-0000010" in err
    assert (out / "feranno.safetensors").read_bytes() == (whole / "feranno.safetensors").read_bytes()
    assert (out / "metrics.json").read_text() == (whole / "metrics.json").read_text()
    assert [json.loads(line)["epoch"] for line in (out / "loss.jsonl").read_text().splitlines()] == list(range(1, 21))

    # a killed extraction leaves at most a temporary file (removed); a missing entry is recomputed
    entries = sorted((out / "features").glob("*/*.safetensors"))
    entries[0].unlink()
    (entries[1].parent / ".tmp-0123456789ab-x.safetensors").write_bytes(b"partial")
    assert main(["train-feranno", str(config), "--no-progress"]) == 0
    assert "features: 1 extracted, 89 reused" in capsys.readouterr().err
    assert not list((out / "features").glob("*/.tmp-*")) and len(list((out / "features").glob("*/*"))) == 90

    changed = write_config(tmp_path / "c.yaml", out, data, learning_rate=0.01, epochs=30)
    assert main(["train-feranno", str(changed), "--no-progress"]) == 2
    assert "holds a FERAnno training run with a different config (changed: train.learning_rate)" in \
        capsys.readouterr().err


def test_trains_on_a_saved_dataset_with_its_own_label_order(folders, tmp_path, capsys):
    """A ClassLabel in FER2013 order maps by name; unknown labels and undecodable images are counted, not fatal."""
    import datasets

    files = sorted(folders[0].glob("*/*.png"))[::4]  # 15 images, 5 per class
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    to_fer = {"happy": 3, "sad": 4, "anger": 0}
    rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in files] + [{"bytes": b"not a png", "path": None}],
            "label": [to_fer[p.parent.name] for p in files] + [6]}  # the broken one: neutral
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=names))
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds = datasets.concatenate_datasets([ds, datasets.Dataset.from_dict(
        {"image": [rows["image"][0]], "label": [-1]}, features=features)])  # -1: no label
    ds.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    config = write_config(tmp_path / "d.yaml", out, {"dataset": str(tmp_path / "ds"), "validation_fraction": 0.2},
                          epochs=1, checkpoint_every=1)
    assert main(["train-feranno", str(config), "--no-progress"]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["examples"] == {"train": 12, "validation": 3}  # one of each class held out
    assert summary["skipped"] == {"unknown_label": 1, "unreadable_image": 1}
    counts = json.loads((out / "metrics.json").read_text())["train"]["per_class_count"]
    assert counts == {"happy": 4, "sad": 4, "anger": 4}


def bad_config(tmp_path: Path, folders, change) -> Path:
    path = write_config(tmp_path / "bad.yaml", tmp_path / "out", {"image_folder": str(folders[0])})
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_bad_configs_exit_2_naming_file_and_field(tmp_path, folders, capsys):
    path = bad_config(tmp_path, folders, lambda d: d["train"].update(epochz=3))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: field 'train.epochz'" in err and "unknown key" in err and "did you mean 'epochs'" in err

    path = bad_config(tmp_path, folders, lambda d: d["data"].update(image_folder=str(tmp_path / "absent")))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: data.image_folder '{tmp_path / 'absent'}' does not exist" in err

    path = bad_config(tmp_path, folders, lambda d: d["data"].update(validation={"image_folder": "x"},
                                                                    validation_fraction=0.3))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: field 'data' (line" in err and "has both 'validation' and 'validation_fraction'" in err

    path = bad_config(tmp_path, folders, lambda d: d["model"].update(hidden_dim=30))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'model.heads' (line" in err and "heads (4) does not divide hidden_dim (30)" in err

    cats = tmp_path / "cats"
    (cats / "cat").mkdir(parents=True)
    shutil.copy(next(folders[0].glob("happy/*.png")), cats / "cat" / "a.png")
    path = bad_config(tmp_path, folders, lambda d: d["data"].update(image_folder=str(cats)))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: data: no usable labelled image (skipped: {{'unknown_label': 1}})" in err

    (cats / "happy").mkdir()
    (cats / "happy" / "b.png").write_bytes(b"\x89PNG broken")
    path = bad_config(tmp_path, folders, lambda d: d["data"].update(image_folder=str(cats),
                                                                    validation={"image_folder": str(folders[1])}))
    assert main(["train-feranno", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: no usable training image (skipped: {{'unknown_label': 1, 'unreadable_image': 1}})" in err


@pytest.mark.parametrize("path", sorted((ROOT / "manifests" / "train").glob("feranno*.yaml")), ids=lambda p: p.name)
def test_shipped_feranno_configs_validate(path):
    from builder.manifest.loader import load_manifest
    from curation.labelling.feranno.config import FERAnnoTrainConfig

    assert load_manifest(path, model=FERAnnoTrainConfig).train.epochs > 0


def test_feranno_votes_in_the_label_stage_of_a_build(trained, tmp_path, monkeypatch):
    """FERAnno as a labeller next to the real expert, in a real build on real photos.

    This FERAnno learned stripes on a random backbone, so its vote on faces means
    nothing; what is tested is the plumbing: loaded once, fed the aligned crops,
    its probabilities mapped onto the manifest's labels, pooled, stored, and
    recorded with its provenance in the stats and the card.
    """
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    from builder.example_faces import write_example_faces
    from builder.manifest.label_maps import LABEL_MAPS
    from builder.models.diffusion import file_sha256

    out_model, _ = trained
    faces = tmp_path / "faces"
    for path in write_example_faces(tmp_path / "all")[:3]:  # group-1, group-2, group-3
        faces.mkdir(exist_ok=True)
        shutil.copy(path, faces / path.name)
    manifest = {"name": "with-feranno", "seed": 3, "labels": {"label_map": "rafdb"},
                "images": {"folder": str(faces)},
                "labelling": {"experts": [{"name": "fer2013", "model": "mini-xception-fer2013"}],
                              "feranno": {"model": str(out_model), "weight": 0.5},
                              "min_confidence": 0.0, "min_agreement": 0.0, "combine": "weighted_vote"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0

    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    feranno = stats["labelling"]["experts"][1]
    assert feranno["name"] == "feranno" and feranno["weight"] == 0.5
    assert feranno["sha256"] == file_sha256(out_model / "feranno.safetensors")
    assert feranno["labels"] == list(LABEL_MAPS["affectnet7"]) and feranno["unknown_classes"] == []
    assert feranno["feranno"]["base_model"] == "builtin:tiny-sd"
    ds = load_from_disk(str(tmp_path / "out" / "hf"))["train"]
    assert len(ds) == 3
    for row in ds:
        fer, ann = np.array(row["probs_fer2013"]), np.array(row["probs_feranno"])
        assert abs(ann.sum() - 1) < 1e-4
        pooled = (fer + 0.5 * ann) / 1.5  # weighted vote; both know every class
        assert row["label"] == int(np.argmax(pooled))
        assert abs(row["label_confidence"] - pooled.max() / pooled.sum()) < 1e-3
    card = DatasetCard.load(tmp_path / "out" / "README.md").text
    assert "`feranno` is FERAnno" in card and "temperature-scaled" in card


def test_feranno_backbone_dtype_and_batch_size(trained):
    from builder.manifest import Labelling
    from curation.labelling.experts import load_labellers

    out, _ = trained
    (expert,) = load_labellers(Labelling(feranno={"model": str(out), "batch_size": 3, "dtype": "auto"}), "cpu")
    assert expert.labeller.batch_size == 3 and expert.labeller.dtype == "float32", "auto is float32 on CPU"
    assert "dtype" not in expert.describe(expert.labeller.label_names)["feranno"], "float32 meta as before"
    with pytest.raises(ModelLoadError, match="labelling.feranno.dtype 'bfloat16' is not supported on CPU"):
        load_labellers(Labelling(feranno={"model": str(out), "dtype": "bfloat16"}), "cpu")


def test_feranno_dtype_is_in_the_identity_and_batch_size_is_not(demo_data):
    from builder.manifest import Manifest
    from builder.run import fingerprint

    def with_feranno(**settings):
        return Manifest.model_validate({**demo_data, "labelling": {"feranno": {"model": "ann", **settings}}})

    base = with_feranno()
    assert "dtype" not in base.identity()["labelling"]["feranno"], "builds made before the field keep their fingerprint"
    assert fingerprint(with_feranno(batch_size=64)) == fingerprint(base)
    assert fingerprint(with_feranno(dtype="bfloat16")) != fingerprint(base)
