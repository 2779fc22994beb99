"""The AU adapter on the real tiny pipeline: exactness at scale 0, AU control, save/load, fit checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.expand.specs import shard_specs
from builder.manifest import AUAdapterSpec
from builder.manifest.au_sets import AU_SETS
from builder.manifest.loader import load_manifest
from builder.synthesis.au_adapter import CONFIG_NAME, AUAdapter
from builder.synthesis.generate import GenerateStage
from tests.conftest import DEMO

DISFA = list(AU_SETS["disfa12"])


@pytest.fixture(scope="module")
def demo():
    return load_manifest(DEMO)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet", local_files_only=True)
    folder = tmp_path_factory.mktemp("adapter") / "au-adapter"
    AUAdapter.for_unet(unet, DISFA, num_tokens=4, hidden_dim=64, seed=3).save_pretrained(folder)
    return folder


def stage(demo, adapter=None, scale=1.0, au_names=None):
    spec = demo.generator.model_copy(update={"au_adapter": AUAdapterSpec(path=str(adapter), scale=scale) if adapter else None})
    s = GenerateStage(spec, tuple(au_names or demo.aus.names))
    s.setup()
    return s


def test_scale_zero_is_exactly_the_plain_pipeline(demo, adapter_dir):
    records = shard_specs(demo, 0)[:3]
    plain = stage(demo).generate(records)
    assert np.array_equal(stage(demo, adapter_dir, scale=0.0).generate(records), plain)
    assert np.abs(stage(demo, adapter_dir, scale=1.0).generate(records) - plain).mean() > 1e-3


def test_different_au_vectors_give_different_images(demo, adapter_dir):
    s = stage(demo, adapter_dir)
    a = shard_specs(demo, 0)[1]  # a happy sample
    b = shard_specs(demo, 0)[1]
    b.au = [0.0] * len(b.au)
    b.au[DISFA.index("AU4")] = 4.0  # brow lowerer instead of a smile
    ia, ib = s.generate([a])[0], s.generate([b])[0]
    assert np.abs(ia - ib).mean() > 1e-3
    assert np.array_equal(ia, s.generate([a])[0]), "same AU vector, same seed: same image"


def test_save_and_load_give_identical_images(demo, adapter_dir, tmp_path):
    again = tmp_path / "copy"
    AUAdapter.from_pretrained(adapter_dir).save_pretrained(again)
    records = shard_specs(demo, 2)[:2]
    assert np.array_equal(stage(demo, adapter_dir).generate(records), stage(demo, again).generate(records))
    assert (again / "au_adapter.safetensors").read_bytes() == (adapter_dir / "au_adapter.safetensors").read_bytes()


def test_adapter_must_match_the_manifest_au_set(demo, adapter_dir):
    with pytest.raises(ModelLoadError, match="the manifest's AU set is AU1, AU2, AU4, AU6"):
        stage(demo, adapter_dir, au_names=AU_SETS["disfa8"])


def test_adapter_for_another_unet_is_refused(demo, tmp_path):
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                 attention_head_dim=8, norm_num_groups=32)
    AUAdapter.for_unet(other, DISFA).save_pretrained(tmp_path / "other")
    with pytest.raises(ModelLoadError, match="made for another UNet"):
        stage(demo, tmp_path / "other")


def test_not_an_adapter_folder(demo, tmp_path):
    with pytest.raises(ModelLoadError, match="is not an AU adapter folder"):
        stage(demo, tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    (tmp_path / "au_adapter.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a valid AU adapter config"):
        stage(demo, tmp_path)


def test_opengraphau_41_adapter(tiny_model):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet", local_files_only=True)
    adapter = AUAdapter.for_unet(unet, list(AU_SETS["opengraphau41"]))
    tokens = adapter.tokens(torch.rand(2, 41) * 5)
    assert tokens.shape == (2, 4, unet.config.cross_attention_dim)


def test_build_with_an_adapter_records_it(adapter_dir, write_manifest, tmp_path):
    manifest = write_manifest({"name": "au", "labels": {"counts": {"happy": 2, "anger": 2}},
                               "generator": {"au_adapter": {"path": str(adapter_dir), "scale": 0.8}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["au_adapter"]["path"] == str(adapter_dir) and stats["au_adapter"]["scale"] == 0.8
    assert len(stats["au_adapter"]["sha256"]) == 64
    assert f"AU adapter `{adapter_dir}`" in (out / "README.md").read_text()


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused-qkv"])
def test_shared_projections_equal_the_two_pass_formula(tiny_model, monkeypatch, fused):
    """One query and one output projection for text and AU attention compute what the layer's own processor
    plus the separate AU term compute (the general path, kept for layers that are not plain SDPA)."""
    from diffusers import UNet2DConditionModel

    import builder.synthesis.au_adapter as au_adapter

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet", local_files_only=True).eval()
    if fused:
        unet.fuse_qkv_projections()
    adapter = AUAdapter.for_unet(unet, DISFA, num_tokens=4, hidden_dim=64, seed=3).eval()
    adapter.attach(unet)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    states = adapter.condition(text, torch.rand(2, len(DISFA), generator=gen) * 5)
    calls = []
    shared = au_adapter.AUAttnProcessor._shared
    monkeypatch.setattr(au_adapter.AUAttnProcessor, "_shared", lambda *a: calls.append(1) or shared(*a))
    with torch.no_grad():
        one_pass = unet(latents, 500, encoder_hidden_states=states).sample
        assert len(calls) == len(adapter.processors), "every cross-attention layer took the shared path"
        monkeypatch.setattr(au_adapter, "_plain", lambda *a: False)
        two_pass = unet(latents, 500, encoder_hidden_states=states).sample
        plain = unet(latents, 500, encoder_hidden_states=text).sample
    assert len(calls) == len(adapter.processors), "the general path ran the second time"
    torch.testing.assert_close(one_pass, two_pass, rtol=1e-4, atol=1e-5)
    assert (one_pass - plain).abs().mean() > 1e-4, "the AU tokens change the output"


def test_damaged_weights_and_configs_are_refused_naming_the_file(adapter_dir, tmp_path):
    """Truncated or pickled weights and configs of the wrong shape: one ModelLoadError naming the file and the
    field, never the safetensors library's error or a TypeError."""
    import shutil

    from safetensors.torch import load

    weights_name = "au_adapter.safetensors"

    def truncate(folder):
        data = (folder / weights_name).read_bytes()
        (folder / weights_name).write_bytes(data[: len(data) // 3])

    def pickle(folder):  # a torch.save file under the safetensors name
        torch.save(load((folder / weights_name).read_bytes()), folder / weights_name)

    def config(change):
        def edit(folder):
            data = json.loads((folder / CONFIG_NAME).read_text())
            (folder / CONFIG_NAME).write_text(json.dumps(change(data)))
        return edit

    cases = [
        (truncate, weights_name, "is truncated"),
        (pickle, weights_name, "pickled torch checkpoint (torch.save), not a safetensors file"),
        (lambda f: (f / weights_name).write_bytes(b"\x00" * 40), weights_name, "not a safetensors file"),
        (config(lambda d: {**d, "num_tokens": "four"}), CONFIG_NAME,
         "field 'num_tokens': Input should be a valid integer (got 'four')"),
        (config(lambda d: {**d, "layers": []}), CONFIG_NAME, "field 'layers': Input should be a valid dictionary"),
        (config(lambda d: {**d, "au_names": "AU1"}), CONFIG_NAME, "field 'au_names': Input should be a valid list"),
        (config(lambda d: {k: v for k, v in d.items() if k != "layers"}), CONFIG_NAME,
         "field 'layers': required field is missing"),
        (config(lambda d: {**d, "au_tokens": 4}), CONFIG_NAME, "field 'au_tokens': unknown key"),
        (config(lambda d: [d]), CONFIG_NAME, "it must be a JSON object {...}, found a list"),
        (config(lambda d: {**d, "hidden_dim": -3}), CONFIG_NAME, "field 'hidden_dim': Input should be greater than 0"),
    ]
    for n, (damage, name, message) in enumerate(cases):
        folder = tmp_path / str(n)
        shutil.copytree(adapter_dir, folder)
        damage(folder)
        with pytest.raises(ModelLoadError) as error:
            AUAdapter.from_pretrained(folder)
        assert error.value.file == str(folder / name), (n, error.value.render())
        assert message in error.value.message, (n, error.value.message)
        assert "train-au-adapter" in error.value.fix
    assert AUAdapter.from_pretrained(adapter_dir).config.num_tokens == 4, "the intact adapter still loads"
