"""generator.speed and guidance.decoder on the real tiny pipeline: same images, recorded, not in the identity."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.core.shards import ShardStore, run_stage_on_shard
from builder.expand.specs import shard_specs
from builder.manifest import Manifest
from builder.manifest.loader import load_manifest
from builder.models.diffusion import weights_sha256
from builder.run import fingerprint
from builder.synthesis.generate import GenerateStage
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def demo():
    return load_manifest(DEMO)


def stage(demo, au_names=None, adapter=None, batch_size=None, **speed) -> GenerateStage:
    from builder.manifest import AUAdapterSpec, Speed

    update = {"speed": Speed.model_validate({**demo.generator.speed.model_dump(), **speed}),
              "batch_size": batch_size or demo.generator.batch_size}
    if adapter is not None:
        update["au_adapter"] = AUAdapterSpec(path=str(adapter))
    s = GenerateStage(demo.generator.model_copy(update=update), tuple(au_names or demo.aus.names))
    s.setup()
    return s


def test_png_writer_threads_write_the_same_files(demo, tmp_path):
    """Encoding on 3 writer threads while the next batch denoises gives byte-identical PNGs and records, in
    the same order, as writing in the generating thread."""
    results = {}
    for threads in (0, 3):
        root = tmp_path / f"t{threads}"
        s = stage(demo, writer_threads=threads, batch_size=3)
        kept = run_stage_on_shard(s, ShardStore(root), 0, shard_specs(demo, 0))
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}
        stats = ShardStore(root).stats("generate", 0)
        assert stats["runtime"]["writer_threads"] == threads and stats["runtime"]["device"] == "cpu"
        results[threads] = ([(r.sample_id, r.image) for r in kept], files)
    assert len(results[0][1]) == demo.output.shard_size
    assert results[0] == results[3]


def test_a_failing_write_fails_the_shard_and_commits_nothing(demo, tmp_path, monkeypatch):
    import builder.synthesis.generate as generate

    def broken(path, pixels):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generate, "_write_png", broken)
    with pytest.raises(OSError, match="No space left"):
        run_stage_on_shard(stage(demo, writer_threads=2), ShardStore(tmp_path), 0, shard_specs(demo, 0)[:4])
    assert not ShardStore(tmp_path).is_done("generate", 0)
    assert not list((tmp_path / "shards" / "generate").iterdir()), "staging folder removed"


def test_compiled_stage_pads_the_short_last_batch(demo, tmp_path):
    """With compile on, every batch has batch_size samples (the tail padded with its last sample, images
    discarded), so compiled graphs never see a new shape; the kept images are the unpadded ones (up to rounding
    across batch sizes)."""
    records = shard_specs(demo, 0)[:5]
    s = stage(demo, batch_size=3)
    plain = dict(zip([r.sample_id for r in records], [*s.generate(records[:3]), *s.generate(records[3:])]))
    s.fixed_batch = True  # what setup sets with compile on; compiling itself is tested below (slow)
    sizes = []
    generate = s.generate
    s.generate = lambda batch: sizes.append(len(batch)) or generate(batch)
    kept = run_stage_on_shard(s, ShardStore(tmp_path), 0, shard_specs(demo, 0)[:5])
    assert sizes == [3, 3] and [r.sample_id for r in kept] == [r.sample_id for r in records]
    from PIL import Image

    for r in kept:
        pixels = np.asarray(Image.open(tmp_path / r.image)) / 255.0
        assert np.abs(pixels - plain[r.sample_id]).max() <= 1 / 255 + 1e-6, r.sample_id
    assert ShardStore(tmp_path).stats("generate", 0)["runtime"]["fixed_batch"] is True


def test_channels_last_and_fused_projections_change_only_rounding(demo):
    records = shard_specs(demo, 0)[:4]
    plain = stage(demo).generate(records)
    fast = stage(demo, channels_last=True, fuse_qkv=True)
    assert fast.speedups == ["fuse_qkv", "channels_last"]
    assert fast.runtime()["attention"] == "FusedAttnProcessor2_0"
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(fast.generate(records) - plain).max() < 1e-4


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model):
    from diffusers import UNet2DConditionModel

    from builder.synthesis.au_adapter import AUAdapter

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet", local_files_only=True)
    folder = tmp_path_factory.mktemp("adapter") / "au-adapter"
    AUAdapter.for_unet(unet, ["AU6", "AU12"], num_tokens=4, hidden_dim=32, seed=5).save_pretrained(folder)
    return folder


def test_fused_projections_under_the_au_adapter(demo, adapter_dir):
    """The adapter wraps the fused processors: the same AU-conditioned images as without fusing."""
    records = shard_specs(demo, 0)[:3]
    for r in records:
        r.au = [2.0, 3.0]
    plain = stage(demo, ("AU6", "AU12"), adapter_dir).generate(records)
    fused = stage(demo, ("AU6", "AU12"), adapter_dir, fuse_qkv=True)
    assert {type(p).__name__ for p in fused.pipe.unet.attn_processors.values()} == {"AUAttnProcessor",
                                                                                    "FusedAttnProcessor2_0"}
    assert np.abs(fused.generate(records) - plain).max() < 1e-4


@pytest.mark.slow
def test_torch_compile_gives_the_same_images(demo, adapter_dir):
    """torch.compile (inductor, on CPU here) of the UNet with the AU adapter's processors and of the VAE decoder."""
    records = shard_specs(demo, 0)[:2]
    for r in records:
        r.au = [1.0, 4.0]
    plain = stage(demo, ("AU6", "AU12"), adapter_dir).generate(records)
    compiled = stage(demo, ("AU6", "AU12"), adapter_dir, compile="default")
    assert compiled.speedups == ["compile:default"]
    assert np.abs(compiled.generate(records) - plain).max() < 1e-4


def test_speed_settings_are_not_part_of_the_identity(demo):
    data = demo.model_dump(mode="json")
    data["generator"]["speed"] = {"channels_last": True, "fuse_qkv": True, "compile": "max-autotune",
                                  "writer_threads": 8}
    fast = Manifest.model_validate(data)
    assert fingerprint(fast) == fingerprint(demo)
    assert stage(demo, fuse_qkv=True).meta() == stage(demo).meta(), "a build resumes under other speed settings"


# guidance.decoder ---------------------------------------------------------------------------------------


def tiny_decoder(folder: Path, latent_channels: int = 4) -> Path:
    """An AutoencoderTiny (TAESD layout) at the tiny pipeline's scale: 2 blocks, one 2x upsampling."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=latent_channels).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    return tiny_decoder(tmp_path_factory.mktemp("taesd") / "taesd")


@pytest.fixture(scope="module")
def guided(demo, decoder_dir):
    from builder.models.store import load_fer_classifier
    from builder.synthesis.guidance import guided_sample
    from builder.synthesis.guide_decoder import load_guide_decoder

    pipe = stage(demo).pipe
    decoder, provenance = load_guide_decoder(str(decoder_dir), pipe)
    guide = load_fer_classifier("mini-xception-fer2013")
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a happy face"] * 2, "cpu", 1, True, negative_prompt=[""] * 2)

    def sample(start, end, dec):
        return guided_sample(pipe, cond, uncond, [torch.Generator().manual_seed(s) for s in (1, 2)], steps=6,
                             cfg_scale=3.0, height=64, width=64, guide=guide, targets=[guide.labels.index("happy")] * 2,
                             scale=0.5, start=start, end=end, wrt="latents", decoder=dec)

    return pipe, decoder, provenance, sample


def test_decoder_output_is_mapped_to_the_vae_range(guided):
    from builder.synthesis.guidance import decode

    pipe, decoder, _, _ = guided
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = decode(pipe, z, decoder)
        raw = decoder.decoder(z / decoder.config.scaling_factor)  # DecoderTiny returns [-1, 1]
    assert ours.shape == (2, 3, 64, 64)
    assert torch.allclose(ours, (raw / 2 + 0.5).clamp(0, 1))


def test_guide_decoder_serves_only_the_guide(guided):
    """With no guided step the images are the VAE's, decoder or not; with guided steps the decoder's view of x0
    steers the samples elsewhere than the VAE's view does."""
    _, decoder, provenance, sample = guided
    assert torch.equal(sample(6, 6, decoder), sample(6, 6, None))
    by_vae, by_decoder = sample(1, 6, None), sample(1, 6, decoder)
    assert (by_vae - by_decoder).abs().mean() > 1e-3
    assert provenance["decoder_sha256"] and len(provenance["decoder_sha256"]) == 64


def test_build_with_a_guide_decoder_records_it(tmp_path, write_manifest, decoder_dir):
    base = {"name": "guided", "labels": {"counts": {"happy": 2}}, "aus": {"intensity": {}},
            "curation": {"faces": {"enabled": False}}, "generator": {"guidance": {"scale": 0.5, "start_step": 1}}}
    without = load_manifest(write_manifest(base, "a.yaml"))
    base["generator"]["guidance"]["decoder"] = str(decoder_dir)
    manifest = write_manifest(base, "b.yaml")
    assert fingerprint(load_manifest(manifest)) != fingerprint(without), "the decoder changes the images"
    assert "decoder" not in without.identity()["generator"]["guidance"], "old guided builds keep their fingerprint"
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["guidance"]["decoder"] == str(decoder_dir)
    assert stats["guidance"]["decoder_sha256"] == weights_sha256(decoder_dir)


@pytest.mark.parametrize("case, message", [
    ("no-config", "has no config.json"),
    ("channels", "decodes 8-channel latents, the generator makes 4-channel ones"),
    ("hub", "could not be found in the local Hugging Face cache"),
])
def test_bad_guide_decoder_exits_2_naming_the_field(tmp_path, write_manifest, capsys, case, message):
    ref = {"no-config": str(tmp_path), "hub": "someone/no-such-taesd",
           "channels": str(tiny_decoder(tmp_path / "wide", latent_channels=8))}[case]
    manifest = write_manifest({"labels": {"counts": {"happy": 1}}, "aus": {"intensity": {}},
                               "generator": {"guidance": {"decoder": ref}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "guidance.decoder" in err
    assert not ShardStore(out).is_done("generate", 0)


def test_a_decoder_path_that_does_not_exist_is_a_model_error():
    from builder.synthesis.guide_decoder import resolve_decoder

    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_decoder("./no/such/folder")


@pytest.mark.gpu
def test_speed_settings_on_a_gpu_keep_the_images(demo):
    """bf16 on CUDA: channels-last, fused projections and compile with CUDA graphs change pixels by bf16
    rounding at most."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = demo.model_copy(update={"generator": demo.generator.model_copy(update={"device": "cuda", "dtype": "bfloat16"})})
    records = shard_specs(gpu, 0)[:4]
    plain = stage(gpu).generate(records)
    fast = stage(gpu, channels_last=True, fuse_qkv=True, compile="reduce-overhead")
    assert np.isfinite(plain).all()
    assert np.abs(fast.generate(records) - plain).mean() < 0.02
