"""LoRA weights on the generator (``generator.lora``), on the real tiny pipeline: the manifest field, the checks
before loading, what a LoRA does to the images (scale 1 changes them, scale 0 is the base model byte for byte,
fused equals unfused up to float rounding, several LoRAs with their own scales, with the AU adapter), and the
build around it (provenance in stats.json and the card, warnings from the training summary, resume)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from builder.cli import main
from builder.core.errors import ManifestError, ModelLoadError
from builder.expand.specs import shard_specs
from builder.manifest import AUAdapterSpec, Generator, LoRASpec, Manifest
from builder.manifest.loader import load_manifest
from builder.models.lora import WEIGHTS_NAME, layout_problem, lora_warnings
from builder.synthesis.generate import GenerateStage
from tests.conftest import DEMO, dataset_rows, deep_update
from tests.fixtures.lora import save_lora, tiny_text_encoder, tiny_unet

SMALL = {"labels": {"counts": {"happy": 2, "anger": 2}}, "output": {"shard_size": 2}}  # 4 samples, 2 shards
SUMMARY = {"base_model": "builtin:tiny-sd", "validation_expert": {"name": "holdout-expert.yaml", "sha256": "ab" * 32}}


# -- what the tests share ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return load_manifest(DEMO)


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    """'unet': a UNet LoRA of the tiny pipeline (with a training summary); 'text': a text-encoder LoRA."""
    root = tmp_path_factory.mktemp("loras")
    return {"unet": save_lora(root / "unet", seed=1, summary=SUMMARY),
            "text": save_lora(root / "text", unet=None, text_encoder=tiny_text_encoder(), seed=2)}


def stage(demo, loras=(), fuse=False, adapter=None, au_scale=1.0) -> GenerateStage:
    """A set-up generation stage of the demo's generator with ``loras`` ((folder, scale) pairs)."""
    spec = demo.generator.model_copy(update={
        "lora": [LoRASpec(path=str(path), scale=scale) for path, scale in loras], "fuse_lora": fuse,
        "au_adapter": AUAdapterSpec(path=str(adapter), scale=au_scale) if adapter else None})
    s = GenerateStage(spec, demo.aus.names)
    s.setup()
    return s


def build(root: Path, name: str, generator: dict, demo_data: dict) -> Path:
    """Build the demo manifest (4 samples, one dataset name: the same sample ids) with ``generator`` changes into
    ``root/name`` (manifest ``root/name.yaml``); its folder."""
    manifest = root / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(deep_update(demo_data, {**SMALL, "name": "lora-test", "generator": generator}),
                                       sort_keys=False))
    out = root / name
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    return out


def images(out: Path) -> dict[str, bytes]:
    """Sample id -> PNG bytes of every generated image of a build."""
    return {p.stem: p.read_bytes() for p in sorted((out / "shards" / "generate").glob("*/images/*.png"))}


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)), dtype=int)


@pytest.fixture(scope="module")
def builds(tmp_path_factory, demo_data, loras) -> dict[str, Path]:
    """The same 4 samples built without a LoRA, with the UNet LoRA at scale 1, at scale 0, and fused."""
    root = tmp_path_factory.mktemp("builds")
    unet = str(loras["unet"])
    return {"base": build(root, "base", {}, demo_data),
            "lora": build(root, "lora", {"lora": {"path": unet, "scale": 1.0}}, demo_data),
            "zero": build(root, "zero", {"lora": [{"path": unet, "scale": 0.0}]}, demo_data),
            "fused": build(root, "fused", {"lora": {"path": unet}, "fuse_lora": True}, demo_data)}


# -- the manifest field ------------------------------------------------------------------------------------------------
def test_one_mapping_is_a_one_element_list_and_old_builds_keep_their_identity(demo_data, tmp_path):
    one = Generator(model="builtin:tiny-sd", lora={"path": "lora", "scale": 0.5})
    assert one.lora == [LoRASpec(path="lora", scale=0.5)]
    assert one == Generator(model="builtin:tiny-sd", lora=[{"path": "lora", "scale": 0.5}]), "one identity"
    assert Generator(model="builtin:tiny-sd", lora={"path": "lora"}).lora[0].scale == 1.0
    base = Manifest.model_validate(demo_data)
    identity = base.identity()["generator"]
    assert "lora" not in identity and "fuse_lora" not in identity, "added later: out of old builds' fingerprints"
    with_lora = Manifest.model_validate(deep_update(demo_data, {"generator": {"lora": {"path": "lora"}}}))
    rescaled = Manifest.model_validate(deep_update(demo_data, {"generator": {"lora": {"path": "lora", "scale": 0.5}}}))
    assert len({json.dumps(m.identity()) for m in (base, with_lora, rescaled)}) == 3, "path and scale are identity"


@pytest.mark.parametrize("generator, message, fix", [
    ({"fuse_lora": True}, "field 'generator.fuse_lora'", "add generator.lora"),
    ({"lora": {"path": "x", "scale": 2.5}}, "field 'generator.lora.0.scale'", "<= 2"),
    ({"lora": [{"path": ""}]}, "field 'generator.lora.0.path'", "at least 1"),
    ({"lora": [{"path": "x", "weight": 1}]}, "unknown key", "keys allowed here: path, scale"),
])
def test_bad_lora_fields_are_refused_with_a_fix(demo_data, tmp_path, generator, message, fix):
    from builder.core.config import load_config

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(deep_update(demo_data, {"generator": generator})))
    with pytest.raises(ManifestError) as error:
        load_config(path, Manifest)
    assert message in error.value.message and fix in error.value.fix, error.value.render()


# -- the file, before loading: layout, pickles, fit --------------------------------------------------------------------
def test_layout_problems_are_read_from_the_header():
    good = {"unet.a.to_q.lora.down.weight": (4, 32), "unet.a.to_q.lora.up.weight": (32, 4)}
    assert layout_problem(good) is None
    assert layout_problem({"unet.a.to_q.lora_A.weight": (4, 32), "unet.a.to_q.lora_B.weight": (32, 4)}) is None
    cases = {  # key added to a good file -> (message, fix)
        "lora_unet_down_blocks_0.lora_down.weight": ("is not in the diffusers/peft LoRA layout", "save_lora_weights"),
        "text_encoder_2.layers.0.q_proj.lora_A.weight": ("adapts component 'text_encoder_2'",
                                                         "Stable Diffusion 1.x/2.x generator"),
    }
    for key, (message, fix) in cases.items():
        found = layout_problem({**good, key: (4, 32)})
        assert message in found[0] and fix in found[1], key
    assert "has no up matrix" in layout_problem({"unet.a.to_q.lora.down.weight": (4, 32)})[0]
    assert "rank 4, the up matrix 8" in layout_problem({**good, "unet.a.to_q.lora.up.weight": (32, 8)})[0]
    assert layout_problem({})[0] == "holds no tensors"


def test_a_lora_for_another_architecture_is_refused_before_any_image(demo, tmp_path, monkeypatch):
    """A LoRA made on a UNet with 48-wide text embeddings (the tiny one reads 32): the stage's setup names the
    field, the first key that does not fit with its shape, and the fix; diffusers never sees the file."""
    other = save_lora(tmp_path / "other", unet=tiny_unet(cross_attention_dim=48))
    calls = []
    monkeypatch.setattr("diffusers.StableDiffusionPipeline.load_lora_weights", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelLoadError) as error:
        stage(demo, [(other, 1.0)])
    e = error.value
    assert e.file == str(other / WEIGHTS_NAME)
    assert e.message.startswith("generator.lora[0].path: key 'unet.down_blocks.1.attentions.0.transformer_blocks.0"
                                ".attn2.to_k.lora.down.weight' (shape [4, 48]) does not fit unet module"), e.message
    assert "a Linear from 32 to 64 features, whose down matrix has shape [rank, 32]" in e.message
    assert "made for another architecture" in e.message and "build-dataset train-generator" in e.fix
    assert calls == []


def test_keys_naming_modules_the_unet_lacks_are_refused(demo, tmp_path):
    """Made on a UNet with three layers per block: its down_blocks.1.attentions.2 does not exist here."""
    other = save_lora(tmp_path / "deeper", unet=tiny_unet(layers_per_block=3))
    with pytest.raises(ModelLoadError) as error:
        stage(demo, [(other, 1.0)])
    module = "down_blocks.1.attentions.2.transformer_blocks.0.attn1.to_k"
    assert error.value.message == (f"generator.lora[0].path: key 'unet.{module}.lora.down.weight' (shape [4, 64]) "
                                   f"names module '{module}', which the pipeline's unet does not have: the LoRA was "
                                   "made for another architecture")


def test_a_pickle_beside_the_safetensors_file_is_never_read(demo, loras, tmp_path):
    """diffusers gets the safetensors weight name and use_safetensors=True: a .bin that would run code when
    unpickled stays unread, and the images are those of the safetensors LoRA."""
    import torch

    folder = shutil.copytree(loras["unet"], tmp_path / "both")
    marker = tmp_path / "unpickled"
    torch.save({"payload": Probe(marker)}, folder / "pytorch_lora_weights.bin")
    records = shard_specs(demo, 0)[:1]
    with_pickle = stage(demo, [(folder, 1.0)]).generate(records)
    assert not marker.exists(), "the pickle was loaded"
    assert np.array_equal(with_pickle, stage(demo, [(loras["unet"], 1.0)]).generate(records))


class Probe:
    """Unpickling it creates ``marker`` (what a hostile pickle could do instead)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# -- what a LoRA does to the images ------------------------------------------------------------------------------------
def test_a_lora_at_scale_one_changes_every_image(builds):
    base, lora = images(builds["base"]), images(builds["lora"])
    assert list(lora) == list(base) and len(base) == 4
    for sample, png in lora.items():
        assert png != base[sample], sample
        assert np.abs(pixels(png) - pixels(base[sample])).mean() > 0.2, sample  # measured: 0.5-0.7 grey levels


def test_scale_zero_gives_the_base_builds_image_files_byte_for_byte(builds):
    assert images(builds["zero"]) == images(builds["base"])


def test_fused_and_unfused_give_the_same_images_within_float_tolerance(builds, demo, loras):
    """fuse_lora merges W + scale * B A into the weights once: the same sums in another order. Measured on this
    machine (CPU, float32, the demo's 28 samples): at most 8.9e-7 apart as floats in [0, 1] (mean 1.1e-7), and
    PNG pixels at most 1 grey level apart, in about 3 of 100,000 values (a float on the edge between two
    levels)."""
    unfused, fused = images(builds["lora"]), images(builds["fused"])
    assert list(unfused) == list(fused)
    for sample in unfused:
        assert np.abs(pixels(unfused[sample]) - pixels(fused[sample])).max() <= 1, sample
    records = shard_specs(demo, 0)[:2]
    plain = stage(demo, [(loras["unet"], 1.0)]).generate(records)
    merged = stage(demo, [(loras["unet"], 1.0)], fuse=True)
    assert not any("lora" in name for name, _ in merged.pipe.unet.named_modules()), "peft layers unloaded"
    assert np.abs(merged.generate(records) - plain).max() < 1e-5


def test_fused_projections_keep_the_lora(demo, loras):
    """speed.fuse_qkv concatenates the q, k and v weights, which would leave an unfused LoRA's updates behind: the
    stage fuses the LoRA first (a speed setting, so the images stay those of the unfused LoRA up to rounding)."""
    records = shard_specs(demo, 0)[:2]
    unfused = stage(demo, [(loras["unet"], 1.0)]).generate(records)
    spec = demo.generator.model_copy(update={"lora": [LoRASpec(path=str(loras["unet"]))],
                                             "speed": demo.generator.speed.model_copy(update={"fuse_qkv": True})})
    fast = GenerateStage(spec, demo.aus.names)
    fast.setup()
    assert fast.runtime()["speed"][:2] == ["fuse_lora", "fuse_qkv"]
    assert np.abs(fast.generate(records) - unfused).max() < 1e-5
    assert fast.meta()["lora"] == stage(demo, [(loras["unet"], 1.0)]).meta()["lora"], "a resume may change it"


def test_several_loras_load_each_with_its_scale(demo, loras):
    """A UNet LoRA and a text-encoder LoRA: each scale applies to its own LoRA (the text LoRA at 0 leaves the UNet
    LoRA's images exactly as they are alone), and both are recorded."""
    records = shard_specs(demo, 0)[:2]
    alone = stage(demo, [(loras["unet"], 0.7)]).generate(records)
    both = stage(demo, [(loras["unet"], 0.7), (loras["text"], -1.3)])
    assert np.abs(both.generate(records) - alone).mean() > 1e-4
    muted = stage(demo, [(loras["unet"], 0.7), (loras["text"], 0.0)]).generate(records)
    assert np.array_equal(muted, alone)
    recorded = both.meta()["lora"]
    assert [(r["path"], r["scale"]) for r in recorded] == [(str(loras["unet"]), 0.7), (str(loras["text"]), -1.3)]
    assert recorded[0]["sha256"] != recorded[1]["sha256"] and all(len(r["sha256"]) == 64 for r in recorded)


# -- with the AU adapter -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from builder.manifest.au_sets import AU_SETS
    from builder.synthesis.au_adapter import AUAdapter

    folder = tmp_path_factory.mktemp("adapter") / "au-adapter"
    adapter = AUAdapter.for_unet(tiny_unet(), list(AU_SETS["disfa12"]), num_tokens=4, hidden_dim=64, seed=3)
    adapter.save_pretrained(folder)
    return folder


def test_lora_and_au_adapter_work_together(demo, loras, adapter_dir):
    """The LoRA loads first, the adapter wraps the LoRA-adapted layers: both change the image, the AU vector
    still steers it, and an adapter at scale 0 leaves exactly the LoRA's image."""
    records = shard_specs(demo, 0)[:2]
    lora_only = stage(demo, [(loras["unet"], 1.0)]).generate(records)
    adapter_only = stage(demo, adapter=adapter_dir).generate(records)
    both = stage(demo, [(loras["unet"], 1.0)], adapter=adapter_dir)
    together = both.generate(records)
    assert np.abs(together - lora_only).mean() > 1e-3 and np.abs(together - adapter_only).mean() > 1e-4
    other_au = shard_specs(demo, 0)[:1]
    other_au[0].au = [0.0] * len(other_au[0].au)
    other_au[0].au[list(demo.aus.names).index("AU4")] = 4.0  # a lowered brow instead of the sample's AUs
    assert np.abs(both.generate(other_au)[0] - together[0]).mean() > 1e-3
    muted = stage(demo, [(loras["unet"], 1.0)], adapter=adapter_dir, au_scale=0.0).generate(records)
    assert np.array_equal(muted, lora_only)


def test_the_adapters_general_path_keeps_the_lora_on_the_output_projection(loras, adapter_dir, monkeypatch):
    """The AU term's output projection includes an unfused LoRA's update of to_out.0 in the general path as in
    the shared one (``_linear_part``; ``to_out[0].weight`` alone is the base weight)."""
    import torch
    from diffusers import StableDiffusionPipeline

    import builder.synthesis.au_adapter as au_adapter
    from builder.models.tiny_sd import ensure_tiny_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_pipeline(), local_files_only=True)
    pipe.load_lora_weights(str(loras["unet"]), weight_name=WEIGHTS_NAME, adapter_name="l", use_safetensors=True)
    unet = pipe.unet.eval()
    adapter = au_adapter.AUAdapter.from_pretrained(adapter_dir).eval()
    adapter.attach(unet)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=gen)
    states = adapter.condition(torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen),
                               torch.rand(2, adapter.config.au_names.__len__(), generator=gen) * 5)
    with torch.no_grad():
        shared = unet(latents, 500, encoder_hidden_states=states).sample
        monkeypatch.setattr(au_adapter, "_plain", lambda *a: False)
        general = unet(latents, 500, encoder_hidden_states=states).sample
    torch.testing.assert_close(shared, general, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def au_lora_build(tmp_path_factory, demo_data, loras, adapter_dir):
    """A build with a LoRA (whose summary names another base model) and the AU adapter; (folder, stderr)."""
    import contextlib

    root = tmp_path_factory.mktemp("au-lora")
    lora = shutil.copytree(loras["unet"], root / "lora")
    (lora / "training_summary.json").write_text(json.dumps({"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                            "validation_expert": None, "steps": 10}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = build(root, "au-lora", {"lora": {"path": str(lora), "scale": 0.8},
                                      "au_adapter": {"path": str(adapter_dir), "scale": 0.5}}, demo_data)
    return out, err.getvalue()


def test_a_build_with_a_lora_and_the_au_adapter_records_both(au_lora_build):
    out, _ = au_lora_build
    stats = json.loads((out / "stats.json").read_text())
    assert stats["au_adapter"]["path"].endswith("au-adapter") and stats["au_adapter"]["scale"] == 0.5
    assert [(r["path"], r["scale"]) for r in stats["lora"]] == [(str(out.parent / "lora"), 0.8)]
    assert len(images(out)) == 4
    card = (out / "README.md").read_text()
    assert f"| LoRA | `{out.parent / 'lora'}`, scale 0.8" in card and "AU adapter `" in card


def test_a_lora_trained_on_another_base_model_is_a_warning(au_lora_build):
    out, err = au_lora_build
    line = next(line for line in err.splitlines() if "was trained on" in line)
    assert line.startswith("warning: generator.lora[0].path")
    assert "'stable-diffusion-v1-5/stable-diffusion-v1-5'" in line
    assert "generator.model is 'builtin:tiny-sd'" in line
    card = (out / "README.md").read_text()
    assert "trained on `stable-diffusion-v1-5/stable-diffusion-v1-5`" in card
    assert "> **Warning:** generator.lora[0].path" in card


# -- provenance, warnings ----------------------------------------------------------------------------------------------
def test_provenance_in_stats_and_card(builds, loras):
    from builder.models.diffusion import file_sha256

    stats = json.loads((builds["lora"] / "stats.json").read_text())
    sha = file_sha256(loras["unet"] / WEIGHTS_NAME)
    assert stats["lora"] == [{"path": str(loras["unet"]), "sha256": sha, "scale": 1.0, "base_model": "builtin:tiny-sd",
                              "validation_expert": SUMMARY["validation_expert"]}]
    meta = json.loads(next((builds["lora"] / "shards" / "generate").glob("*/stats.json")).read_text())["meta"]
    assert meta["lora"] == stats["lora"], "the stage's meta: what a resume compares"
    card = (builds["lora"] / "README.md").read_text()
    assert (f"| LoRA | `{loras['unet']}`, scale 1 (sha256 `{sha[:16]}…`); trained on `builtin:tiny-sd`; selected "
            "with the FER model `holdout-expert.yaml` |") in card
    assert "Warning:** generator.lora" not in card, "same base model, an independent validation expert"
    assert "lora" not in json.loads((builds["base"] / "stats.json").read_text()), "builds without one keep their stats"


def test_a_validation_expert_that_guides_or_labels_the_build_is_a_warning(demo_data, tmp_path, loras):
    """Matched by name (the guide) or by sha256 (an expert's weights file under another path)."""
    from builder.models.store import model_sha256

    weights = tmp_path / "expert.hdf5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\nnot really a model")
    lora = shutil.copytree(loras["unet"], tmp_path / "lora")
    (lora / "training_summary.json").write_text(json.dumps({
        "base_model": "builtin:tiny-sd",
        "validation_expert": {"name": "mini-xception-fer2013", "sha256": model_sha256(str(weights))}}))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(deep_update(demo_data, {
        "generator": {"lora": {"path": str(lora)}, "guidance": {"classifier": "mini-xception-fer2013"}},
        "labelling": {"experts": [{"name": "other", "model": str(weights)}]}})))
    warnings = lora_warnings(load_manifest(path))
    assert len(warnings) == 2, warnings
    guide, expert = warnings
    assert guide.startswith(f"generator.lora[0].path '{lora}' was selected with the FER model 'mini-xception-fer2013' "
                            "(validation_expert in its training_summary.json), which is the model that guides the "
                            "generation of this build (generator.guidance.classifier: mini-xception-fer2013, matched "
                            "by model id)")
    assert "labels the data of this build (labelling.experts[0].model" in expert and "matched by sha256" in expert
    assert all("is not an independent check" in w for w in warnings)
    (lora / "training_summary.json").write_text(json.dumps({"validation_expert": {"name": "another.yaml"}}))
    assert lora_warnings(load_manifest(path)) == []


def test_the_card_repeats_the_validation_expert_warning_from_what_stats_json_recorded():
    """The card has no manifest models to hash: it compares the LoRA's validation expert with the guide and the
    experts stats.json recorded, by sha256 or name."""
    from cards.card import _lora_notes

    lora = {"path": "loras/x", "sha256": "0" * 64, "scale": 1.0, "base_model": "builtin:tiny-sd",
            "validation_expert": {"name": "experts/a.yaml", "sha256": "c" * 64}}
    stats = {"guidance": {"classifier": "mini-xception-fer2013", "sha256": "d" * 64},
             "labelling": {"experts": [{"name": "a", "model": "experts/a-copy.yaml", "sha256": "c" * 64}]}}
    notes = _lora_notes([lora], stats, {"model": "builtin:tiny-sd"})
    assert notes == ["", "> **Warning:** generator.lora[0].path 'loras/x' was selected with the FER model "
                         "'experts/a.yaml' (validation_expert in its training_summary.json), which is the model that "
                         "labelled the data of this build (stats.json labelling.experts[0]: experts/a-copy.yaml, "
                         "matched by sha256); the LoRA was kept for images that model recognises, so its agreement "
                         "with this build's labels is not an independent check (select LoRAs with another expert, "
                         "or guide and label with other models)."]
    assert _lora_notes([{**lora, "validation_expert": None}], stats, {"model": "builtin:tiny-sd"}) == []


# -- resume ------------------------------------------------------------------------------------------------------------
def _unfinish_last_shard(out: Path) -> None:
    for stage_name in ("generate", "integrity"):
        shutil.rmtree(out / "shards" / stage_name / "00001")
    (out / ".release.json").unlink()


def test_a_resumed_lora_build_equals_an_uninterrupted_one(builds, tmp_path):
    out = shutil.copytree(builds["lora"], tmp_path / "out")
    _unfinish_last_shard(out)
    manifest = tmp_path / "lora.yaml"
    shutil.copy(builds["lora"].parent / "lora.yaml", manifest)
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert images(out) == images(builds["lora"])
    assert dataset_rows(out) == dataset_rows(builds["lora"])


def test_a_changed_lora_file_or_scale_is_refused_on_resume(tmp_path, demo_data, loras, capsys):
    """Like changed model files: the generation stage's set-up (the LoRA's sha256) differs from the finished
    shards', so the build stops before generating (exit 2); a changed scale is another manifest."""
    lora = shutil.copytree(loras["unet"], tmp_path / "lora")
    out = build(tmp_path, "changing", {"lora": {"path": str(lora), "scale": 1.0}}, demo_data)
    _unfinish_last_shard(out)
    save_lora(tmp_path / "retrained", seed=5)
    shutil.copy(tmp_path / "retrained" / WEIGHTS_NAME, lora / WEIGHTS_NAME)  # retrained in place
    capsys.readouterr()
    assert main([str(tmp_path / "changing.yaml"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stage 'generate' is set up differently from the shards already in" in err and "lora: [" in err
    assert "fix: resume where the same model files" in err and "Traceback" not in err
    assert not (out / "shards" / "generate" / "00001").exists(), "nothing was generated"

    rescaled = tmp_path / "rescaled.yaml"
    rescaled.write_text((tmp_path / "changing.yaml").read_text().replace("scale: 1.0", "scale: 0.5"))
    assert "scale: 0.5" in rescaled.read_text()
    assert main([str(rescaled), "--out", str(out), "--no-progress"]) == 2
    assert "holds a build of a different manifest (changed: generator.lora" in capsys.readouterr().err
