"""The 'upscale' stage and the super-resolution loader: a small real face (g1 shrunk to a ~60 px face region)
aligned, then brought to exactly crop.size by a tiny Swin2SR (random weights, built from its config) or a bicubic
resize; faces already at the crop size pass; models that are not super-resolution models, or enlarge by the
wrong factor, are refused with the field and a fix, by the loader and by ``reference_problems`` without loading."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.core.errors import ModelLoadError
from builder.core.shards import ShardStore, run_stage_on_shard
from tests.annotate.test_align import gradient, record, run_align, spec, write_sources

SIZE = 128


def save_swin2sr(folder: Path, **config) -> Path:
    """A tiny Swin2SR (embed_dim 16, one stage of depth 1, one head), seeded, saved with save_pretrained."""
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    torch.manual_seed(0)
    settings = {"embed_dim": 16, "depths": [1], "num_heads": [1], "upscale": 2, **config}
    Swin2SRForImageSuperResolution(Swin2SRConfig(**settings)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    """Model folders: the tiny x2 Swin2SR, a classifier, Swin2SRs of the wrong scale, diffusers folders."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    base = tmp_path_factory.mktemp("upscalers")
    out = {"x2": save_swin2sr(base / "swin2sr-x2"),
           "x16": save_swin2sr(base / "swin2sr-x16", upscale=16),
           "denoiser": save_swin2sr(base / "swin2sr-denoise", upscale=1, upsampler="")}
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                                        intermediate_size=16, image_size=32, patch_size=8,
                                        num_labels=7)).save_pretrained(base / "vit-classifier")
    out["classifier"] = base / "vit-classifier"
    pipeline = base / "diffusers-pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    out["pipeline"] = pipeline
    component = base / "diffusers-vae"
    component.mkdir()
    (component / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny",
                                                       "_diffusers_version": "0.35.0"}))
    out["component"] = component
    return out


@pytest.fixture(scope="module")
def aligned(people, tmp_path_factory) -> dict:
    """The align stage's output (crop 128, faces under 100 px marked): g3 at full size, g1 shrunk (marked)."""
    root = tmp_path_factory.mktemp("upscale")
    kept, _, _ = run_align(root, write_sources(root, people, names=("g3",)), spec(size=SIZE))
    by_id = {r.sample_id: r for r in kept}
    assert "upscale_from" in by_id["g1-small"].scores and "upscale_from" not in by_id["g3"].scores
    return {"root": root, "records": kept}


def run_upscale(root: Path, records, annotate, shard: int = 0):
    from builder.annotate.upscale import UpscaleStage

    stage = UpscaleStage(annotate, "cpu")
    stage.setup()
    store = ShardStore(root)
    copies = [type(r).from_json(r.to_json()) for r in records]  # the input records stay as they were
    kept = run_stage_on_shard(stage, store, shard, copies)
    return {r.sample_id: r for r in kept}, store.rejected("upscale", shard), store.stats("upscale", shard)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -- the stage -------------------------------------------------------------------------------------------------------
def test_a_small_face_is_super_resolved_to_exactly_the_crop_size(aligned, models, tmp_path):
    from builder.models.diffusion import weights_sha256

    ref = str(models["x2"])
    root = aligned["root"]
    kept, rejected, stats = run_upscale(root, aligned["records"], spec(size=SIZE, model=ref), shard=1)
    assert rejected == [] and sorted(kept) == ["g1-small", "g3"]
    small, large = kept["g1-small"], kept["g3"]
    assert small.attributes["upscaled_by"] == ref and large.attributes["upscaled_by"] == "none"
    assert small.image == "shards/upscale/00001/images/g1-small.png"
    assert pixels(root / small.image).shape == (SIZE, SIZE, 3)
    before = {r.sample_id: r for r in aligned["records"]}
    assert large.image == before["g3"].image, "a face already at the crop size is not rewritten"
    side = before["g1-small"].scores["upscale_from"]
    factor = SIZE / side
    expected = [[(x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5] for x, y in before["g1-small"].face["aligned_landmarks"]]
    np.testing.assert_allclose(small.face["aligned_landmarks"], expected, atol=0.011)
    assert stats["meta"] == {"size": SIZE, "model": ref, "sha256": weights_sha256(models["x2"]), "scale": 2,
                             "revision": "local", "resize": "lanczos"}
    # the model did the enlarging (two x2 passes, 63 -> 252, then down to 128), not a plain resize
    crop = Image.open(root / before["g1-small"].image).convert("RGB")
    plain = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    assert np.abs(pixels(root / small.image).astype(int) - plain).mean() > 2


def test_same_bytes_twice(aligned, models):
    root = aligned["root"]
    outputs = []
    for shard in (2, 3):
        kept, _, _ = run_upscale(root, aligned["records"], spec(size=SIZE, model=str(models["x2"])), shard=shard)
        outputs.append((root / kept["g1-small"].image).read_bytes())
    assert outputs[0] == outputs[1]


def test_none_resizes_bicubic(aligned):
    root = aligned["root"]
    kept, rejected, stats = run_upscale(root, aligned["records"], spec(size=SIZE), shard=4)
    assert rejected == [] and stats["meta"] == {"size": SIZE, "model": "none", "resize": "bicubic"}
    small = kept["g1-small"]
    assert small.attributes["upscaled_by"] == "resize" and kept["g3"].attributes["upscaled_by"] == "none"
    before = {r.sample_id: r for r in aligned["records"]}["g1-small"]
    with Image.open(root / before.image) as crop:
        expected = np.asarray(crop.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert np.array_equal(pixels(root / small.image), expected)


def test_resized_landmarks_still_mark_the_eyes(aligned):
    """After the resize the stored landmarks are where MTCNN finds the eyes on the enlarged crop."""
    from curation.faces.detect import FacePolicy, find_face, load_detector

    root = aligned["root"]
    kept, _, _ = run_upscale(root, aligned["records"], spec(size=SIZE), shard=5)
    small = kept["g1-small"]
    found = find_face(load_detector(), FacePolicy(min_size=20), pixels(root / small.image))
    assert found is not None
    error = np.linalg.norm(np.asarray(found["landmarks"])[:2] - np.asarray(small.face["aligned_landmarks"])[:2], axis=1)
    assert error.max() < 0.05 * SIZE, error


def test_an_unreadable_crop_is_dropped_as_error(aligned, tmp_path):
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    gradient(40).save(tmp_path / "crops" / "fine.png")
    broken, fine = record("broken", "crops/broken.png"), record("fine", "crops/fine.png", 1)
    for rec in (broken, fine):
        rec.scores["upscale_from"] = 40.0
    kept, rejected, stats = run_upscale(tmp_path, [broken, fine], spec(size=64))
    assert sorted(kept) == ["fine"] and stats["dropped"] == {"error": 1}
    assert rejected[0].sample_id == "broken" and rejected[0].drop.stage == "upscale"
    assert pixels(tmp_path / kept["fine"].image).shape == (64, 64, 3)


def test_a_failed_write_stops_the_run(aligned, monkeypatch):
    import errno

    from builder.core.errors import StorageError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(StorageError, match="the disk is full"):
        run_upscale(aligned["root"], aligned["records"], spec(size=SIZE), shard=6)
    assert not ShardStore(aligned["root"]).is_done("upscale", 6)


def test_a_bad_model_stops_the_stage_before_any_shard(models):
    from builder.annotate.upscale import UpscaleStage

    stage = UpscaleStage(spec(size=SIZE, model=str(models["classifier"])), "cpu")
    with pytest.raises(ModelLoadError, match="annotate.upscale.model"):
        stage.setup()


def test_passes_needed():
    from builder.annotate.upscale import passes_needed

    assert passes_needed(63, 128, 2) == 2
    assert passes_needed(64, 128, 2) == 1
    assert passes_needed(200, 128, 2) == 1, "a marked face always goes through the model once"
    assert passes_needed(8, 2048, 2) == 8
    assert passes_needed(30, 512, 4) == 3


# -- the loader ------------------------------------------------------------------------------------------------------
def test_load_upscaler_enlarges_by_its_factor(models):
    from builder.models.diffusion import weights_sha256
    from builder.models.upscalers import load_upscaler

    up = load_upscaler(str(models["x2"]), "cpu")
    assert (up.scale, up.name, up.revision) == (2, str(models["x2"]), "local")
    assert up.sha256 == weights_sha256(models["x2"]) and not up.model.training
    images = [gradient(13).crop((0, 0, 13, 10)), gradient(16), gradient(13).crop((0, 0, 13, 10))]
    out = up.upscale(images)
    assert [im.size for im in out] == [(26, 20), (32, 32), (26, 20)]
    assert all(im.mode == "RGB" for im in out)
    assert np.array_equal(np.asarray(out[0]), np.asarray(out[2])), "same image, same result"


@pytest.mark.parametrize("name, expected", [
    ("classifier", "is a 'vit' model (ViTForImageClassification), not an image super-resolution model"),
    ("x16", "has the wrong scale: 'upscale' is 16"),
    ("denoiser", "has the wrong scale: its upsampler '' restores images at their own size"),
    ("pipeline", "is a diffusers pipeline folder"),
    ("component", "is the config of a diffusers AutoencoderTiny"),
])
def test_load_upscaler_refuses_what_is_not_a_super_resolution_model(models, name, expected):
    from builder.models.upscalers import load_upscaler

    with pytest.raises(ModelLoadError) as info:
        load_upscaler(str(models[name]), "cpu")
    error = info.value
    assert error.message.startswith("annotate.upscale.model: ") and expected in error.message, error.render()
    assert error.file is not None and error.file.startswith(str(models[name])) and error.fix
    assert error.exit_code == 2


def test_load_upscaler_refuses_a_missing_folder(tmp_path):
    from builder.models.upscalers import load_upscaler

    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_upscaler(str(tmp_path / "nowhere"), "cpu")
    assert "'none'" in info.value.fix


# -- reference checks without weights ---------------------------------------------------------------------------------
def test_reference_problems_of_local_folders(models, tmp_path):
    from builder.models.upscalers import reference_problems

    assert reference_problems(str(models["x2"])) == []
    assert reference_problems("none") == []
    for name, expected in [("classifier", "not an image super-resolution model"), ("x16", "wrong scale"),
                           ("denoiser", "wrong scale"), ("pipeline", "diffusers pipeline folder"),
                           ("component", "diffusers AutoencoderTiny")]:
        [(message, fix)] = reference_problems(str(models[name]))
        assert expected in message and fix, (name, message)
    [(message, _)] = reference_problems(str(tmp_path / "absent"))
    assert "does not exist" in message
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((models["x2"] / "config.json").read_bytes())
    [(message, _)] = reference_problems(str(no_weights))
    assert "has no weights" in message
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((models["x2"] / "config.json").read_bytes())
    data = (models["x2"] / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    [(message, _)] = reference_problems(str(truncated))
    assert "truncated" in message


def test_reference_problems_loads_no_weights(models, monkeypatch):
    import builder.models.upscalers as upscalers

    monkeypatch.setattr(upscalers, "load_upscaler", lambda *a, **k: pytest.fail("loaded"))
    assert upscalers.reference_problems(str(models["x2"])) == []


def test_hub_ids_are_checked_in_the_offline_cache(models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from builder.models.diffusion import weights_sha256
    from builder.models.upscalers import load_upscaler, reference_problems
    from tests.models.test_models import hub_cache_copy

    assert constants.HF_HUB_OFFLINE
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache_copy(models["x2"], tmp_path / "hf", "acme/swin2sr-x2", commit)
    hub_cache_copy(models["classifier"], tmp_path / "hf", "acme/vit", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert reference_problems("acme/swin2sr-x2") == []
    [(message, _)] = reference_problems("acme/vit")
    assert "not an image super-resolution model" in message
    [(message, fix)] = reference_problems("acme/absent")
    assert "is not in the local Hugging Face cache" in message and "hf download acme/absent" in fix
    [(message, _)] = reference_problems("not a hub id")
    assert "neither an existing local folder nor a Hub id" in message
    up = load_upscaler("acme/swin2sr-x2", "cpu")
    assert up.revision == commit and up.sha256 == weights_sha256(models["x2"]) and up.scale == 2
    with pytest.raises(ModelLoadError, match="is not in the local Hugging Face cache"):
        load_upscaler("acme/absent", "cpu")
    with pytest.raises(ModelLoadError, match="not an image super-resolution model"):
        load_upscaler("acme/vit", "cpu")
