"""``build-dataset fidelity``: the distances against their closed forms, the encoders, and a whole run.

The Frechet distance of two Gaussians with commuting covariances has a closed form,
``|mu1 - mu2|^2 + sum_k (a_k + b_k - 2 sqrt(a_k b_k))`` for eigenvalues a, b in a shared eigenbasis: the moments
function must give it exactly, and features drawn from those Gaussians must come close. KID is ~0 between two
samples of one distribution and clearly positive after a shift. The whole run uses the real build of tinted
photos and the "real" sets of ``test_evaluate`` (an image folder and a saved dataset) with a tiny CLIP vision
encoder built here from a config (random weights, saved as safetensors with its image processor).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from builder.core.errors import UserError
from evaluation.distances import frechet_distance, frechet_from_moments, kernel_distance, mean_pairwise_distance
from tests.evaluation.test_evaluate import real_sets  # noqa: F401  (the "real" sets, module scope)


def gaussians(dim: int = 6, seed: int = 0, diagonal: bool = False):
    """(mu1, S1, mu2, S2, exact FD): covariances sharing an eigenbasis (the identity when ``diagonal``)."""
    g = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    a = torch.rand(dim, generator=g, dtype=torch.float64) * 2 + 0.2
    b = torch.rand(dim, generator=g, dtype=torch.float64) * 3 + 0.1
    q = torch.eye(dim, dtype=torch.float64) if diagonal else torch.linalg.qr(
        torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    exact = float(((mu1 - mu2) ** 2).sum() + (a + b - 2 * (a * b).sqrt()).sum())
    return mu1, s1, mu2, s2, exact


def draw(mu, sigma, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mu + torch.randn(n, len(mu), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T


@pytest.mark.parametrize("diagonal", [True, False])
def test_frechet_distance_is_the_closed_form_on_given_moments(diagonal):
    mu1, s1, mu2, s2, exact = gaussians(diagonal=diagonal)
    assert frechet_from_moments(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-9)
    assert frechet_from_moments(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("diagonal", [True, False])
def test_frechet_distance_of_samples_approaches_the_closed_form(diagonal):
    mu1, s1, mu2, s2, exact = gaussians(diagonal=diagonal, seed=1)
    x, y = draw(mu1, s1, 100_000, 1), draw(mu2, s2, 100_000, 2)
    assert frechet_distance(x.float(), y.float()) == pytest.approx(exact, rel=0.02)
    same = frechet_distance(draw(mu1, s1, 100_000, 3), draw(mu1, s1, 100_000, 4))
    assert 0 <= same < 0.01 * exact  # the bias of a finite sample, far below the distance


def test_frechet_distance_needs_two_samples_a_side():
    with pytest.raises(ValueError, match="two samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_kid_is_zero_for_one_distribution_and_positive_after_a_shift():
    mu, s, _, _, _ = gaussians(dim=16, seed=2)
    x, y = draw(mu, s, 2000, 1), draw(mu, s, 2000, 2)
    same_mean, same_std = kernel_distance(x, y, subset_size=500, subsets=50, seed=0)
    shifted_mean, shifted_std = kernel_distance(x, draw(mu + 0.5, s, 2000, 3), subset_size=500, subsets=50, seed=0)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 20 * max(abs(same_mean), same_std)
    assert kernel_distance(x, y, 500, 50, seed=0) == (same_mean, same_std)  # seeded subsets
    with pytest.raises(ValueError, match="subset size"):
        kernel_distance(x[:10], y, subset_size=20)


def test_mean_pairwise_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert mean_pairwise_distance(points, "l2") == pytest.approx(4.0)  # pairs 3, 4, 5
    assert mean_pairwise_distance(torch.eye(4), "cosine") == pytest.approx(1.0)  # orthogonal
    assert mean_pairwise_distance(torch.ones(5, 3), "cosine") == pytest.approx(0.0, abs=1e-12)
    assert mean_pairwise_distance(torch.ones(1, 3)) is None
    big = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_distance(big, "l2", max_samples=500) == pytest.approx(
        mean_pairwise_distance(big[:2000], "l2"), rel=0.05)


# -- encoders ----------------------------------------------------------------------------------------------------
TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, projection_dim=16)


def clip_processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    """Tiny random-weight encoders saved with save_pretrained (safetensors) and their image processors."""
    import transformers
    from transformers import (
        BitImageProcessorPil,
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    transformers.utils.logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION)).save_pretrained(root / "clip-vision")
    clip_processor().save_pretrained(root / "clip-vision")
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=CLIPVisionConfig(**TINY_VISION).to_dict(),
                                projection_dim=16))
    full.save_pretrained(root / "clip-full")
    clip_processor().save_pretrained(root / "clip-full")
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(root / "dinov2")
    BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "dinov2")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(root / "vit")  # no pooler
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    return {"clip": root / "clip-vision", "clip_full": root / "clip-full", "dinov2": root / "dinov2",
            "vit": root / "vit", "full_model": full}


def test_encoders_load_with_their_features(encoders):
    from PIL import Image

    from evaluation.encoders import load_encoder

    images = [Image.new("RGB", (40, 50), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 90, 200))]
    clip = load_encoder(str(encoders["clip"]), log=lambda m: None)
    assert (clip.output, clip.dim, clip.info["architecture"]) == ("image_embeds", 16, "CLIPVisionModelWithProjection")
    assert clip.info["weight_files"].keys() == {"model.safetensors"} and len(clip.info["weights_sha256"]) == 64
    assert clip.encode(images).shape == (2, 16)
    # a full CLIP checkpoint: its vision tower and projection, the same features as CLIPModel.get_image_features
    full = load_encoder(str(encoders["clip_full"]), log=lambda m: None)
    pixels = clip_processor()(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = encoders["full_model"].eval().get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    assert torch.allclose(full.encode(images), expected, atol=1e-5)
    dino = load_encoder(str(encoders["dinov2"]), log=lambda m: None)
    assert (dino.output, dino.dim, dino.info["architecture"]) == ("cls", 32, "Dinov2Model")
    vit = load_encoder(str(encoders["vit"]), log=lambda m: None)  # saved without a pooler: its [CLS] token needs none
    assert (vit.output, vit.dim) == ("cls", 32) and vit.encode(images).shape == (2, 32)


def test_inception_and_uncached_hub_ids_are_refused_with_the_way_out():
    from evaluation.encoders import INCEPTION_WEIGHTS, load_encoder

    with pytest.raises(UserError) as exc:
        load_encoder("inception")
    assert INCEPTION_WEIGHTS in exc.value.message and "torchvision" in exc.value.message
    assert "dinov2" in exc.value.fix.lower()
    with pytest.raises(UserError) as exc:  # tests run with HF_HUB_OFFLINE=1 and an empty cache
        load_encoder("openai/clip-vit-base-patch32")
    assert "not in the local Hugging Face cache" in exc.value.message and "hf download" in exc.value.fix


# -- the whole run --------------------------------------------------------------------------------------------------
def run_cli(*args) -> int:
    from builder.cli import main

    return main(["fidelity", *map(str, args)])


@pytest.fixture(scope="module")
def measured(built, real_sets, encoders):  # noqa: F811 (real_sets: the imported fixture)
    args = [built, "--reference", real_sets["fer"], "--encoder", encoders["clip"], "--kid-subsets", "20",
            "--no-progress"]
    assert run_cli(*args) == 0
    return json.loads((built / "fidelity" / "fidelity.json").read_text()), args


def test_fidelity_writes_overall_per_class_and_diversity(measured, built, real_sets, encoders):  # noqa: F811
    result, args = measured
    assert result["kind"] == "fer-synth-fidelity" and result["command"] == ["build-dataset", "fidelity",
                                                                            *map(str, args)]
    assert result["encoder"]["given"] == str(encoders["clip"])
    assert result["encoder"]["architecture"] == "CLIPVisionModelWithProjection"
    assert len(result["encoder"]["weights_sha256"]) == 64 and result["encoder"]["feature_dim"] == 16
    assert result["release"]["images"] == 42
    assert {k: v for k, v in result["release"]["classes"].items() if v} == {"anger": 14, "happy": 14, "sad": 14}
    assert result["reference"]["images"] == 28 and result["reference"]["kind"] == "folder"
    overall = result["overall"]
    assert math.isfinite(overall["fd"]) and overall["fd"] > 0
    assert overall["kid"]["subset_size"] == 28 and overall["kid"]["subsets"] == 20
    assert math.isfinite(overall["kid"]["mean"]) and overall["kid"]["std"] >= 0
    rows = {(r["class"], r["reference_class"]): r for r in result["per_class"]}
    for ours, theirs in (("anger", "angry"), ("happy", "happy"), ("sad", "sad")):
        row = rows[(ours, theirs)]
        assert row["status"] == "ok" and (row["release_images"], row["reference_images"]) == (14, 7)
        assert math.isfinite(row["fd"]) and row["kid"]["subset_size"] == 7  # the smaller class
    assert rows[("fear", "fear")]["status"] == "reference_only"  # a class of the label map the build has no image of
    assert len(rows) == 4  # classes without an image on either side are left out
    diversity = result["diversity"]
    assert diversity["metric"] == "cosine"
    assert set(diversity["release"]["per_class"]) == {"anger", "happy", "sad"}
    assert set(diversity["reference"]["per_class"]) == {"angry", "happy", "sad", "fear"}
    assert all(0 <= v <= 2 for v in diversity["release"]["per_class"].values())
    assert {"open", "encoder", "features_release", "features_reference", "distances", "diversity",
            "total"} <= set(result["seconds"])
    page = (built / "fidelity" / "fidelity.md").read_text()
    assert "Frechet distance" in page and "| anger | angry | 14 | 7 |" in page


def test_small_classes_are_named_and_a_saved_dataset_reads_too(built, real_sets, encoders):  # noqa: F811
    from builder import api

    result = api.fidelity(built, api.LabelledSet(real_sets["rafdb"]), encoder=str(encoders["dinov2"]),
                          min_class_samples=8, kid_subsets=5, diversity="l2", progress=False)
    assert result["reference"]["kind"] == "dataset" and result["encoder"]["features"] == "cls"
    assert sorted(result["classes_too_small"]) == ["anger", "happy", "sad"]  # 7 reference images each, below 8
    row = next(r for r in result["per_class"] if r["class"] == "anger")
    assert row["fd"] is None and "reference has 7 image(s), below --min-class-samples 8" in row["note"]
    assert result["overall"]["fd"] is not None and result["diversity"]["metric"] == "l2"
    assert result["reference"]["classes"]["fear"] == 7  # RAF-DB order, every class listed


def test_face_crops_on_both_sides_are_encoded_instead_of_whole_images(measured, built, real_sets,  # noqa: F811
                                                                      encoders):
    """--faces crop: every image of both sides goes in as its aligned face crop (as `evaluate` crops it), so the
    features and the distances change; the counts stay."""
    whole, _ = measured
    from builder import api

    crops = api.fidelity(built, api.LabelledSet(real_sets["fer"]), encoder=str(encoders["clip"]), faces="crop",
                         kid_subsets=20, progress=False)
    assert "aligned face crops" in crops["settings"]["preprocessing"]
    assert "whole images" in whole["settings"]["preprocessing"]
    assert (crops["release"]["images"], crops["reference"]["images"]) == (42, 28)
    assert crops["overall"]["fd"] != pytest.approx(whole["overall"]["fd"])
    assert list((built / "eval" / "cache").glob("crops-*.npy")), "the crops are cached like evaluate's"


def test_weights_that_leave_the_encoder_partly_random_are_refused(encoders, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from evaluation.encoders import load_encoder

    folder = tmp_path / "no-projection"
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).save_pretrained(folder)  # no visual_projection
    clip_processor().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["CLIPVisionModelWithProjection"]}))
    with pytest.raises(UserError) as exc:
        load_encoder(str(folder), log=lambda m: None)
    assert "uninitialised (visual_projection.weight)" in exc.value.message and exc.value.file == str(folder)
