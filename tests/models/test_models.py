"""Loading generators: the built-in tiny pipeline, local folders, the Hub cache, and clear errors."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from builder.core.errors import ModelLoadError
from builder.manifest import Generator
from builder.models.diffusion import load_pipeline, resolve_checkpoint, weights_sha256
from builder.models.tiny_sd import build_tiny_pipeline, ensure_tiny_pipeline

TINY = dict(steps=2, height=64, width=64, guidance_scale=1.0)


def hub_cache_copy(src: Path, hf_home: Path, repo_id: str, commit: str) -> Path:
    """Lay ``src`` out as the Hub cache does (blobs named by sha256, snapshot symlinks, refs/main)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for f in sorted(src.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_tiny_pipeline_build_is_deterministic(tiny_model, tmp_path):
    again = ensure_tiny_pipeline(tmp_path / "again")
    assert weights_sha256(again) == weights_sha256(tiny_model)
    for name in ("tokenizer/tokenizer.json", "unet/config.json", "model_index.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes()


def test_tiny_tokenizer_is_a_real_bpe(tiny_model):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer", local_files_only=True)
    ids = tok("A happy young woman, frontal portrait").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) < len("a happy young woman, frontal portrait"), "merges make tokens longer than characters"
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a happy young woman , frontal portrait"


def test_builtin_loads_with_provenance(tiny_model):
    import torch

    pipe, dtype, prov = load_pipeline(Generator(model="builtin:tiny-sd", **TINY))
    assert dtype == torch.float32 == pipe.unet.dtype and pipe.device.type == "cpu"
    assert prov.revision == "builtin-v1" and prov.weights_sha256 == weights_sha256(tiny_model)
    assert pipe.safety_checker is None


def test_local_folder_and_scheduler_choice(tiny_model, tmp_path):
    local = shutil.copytree(tiny_model, tmp_path / "my-model")
    pipe, _, prov = load_pipeline(Generator(model=str(local), scheduler="euler_a", **TINY))
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert prov.revision == "local" and prov.weights_sha256 == weights_sha256(tiny_model)


def test_hub_id_loads_from_the_offline_cache(tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache_copy(tiny_model, tmp_path / "hf", "acme/tiny-sd", commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    pipe, _, prov = load_pipeline(Generator(model="acme/tiny-sd", **TINY))
    assert prov.model == "acme/tiny-sd"
    assert prov.revision == commit, "the resolved commit is recorded, not 'main'"
    assert prov.weights_sha256 == weights_sha256(tiny_model), "blob names give the same hash as re-hashing"


def test_hub_id_missing_offline_says_how_to_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(Generator(model="stable-diffusion-v1-5/stable-diffusion-v1-5", **TINY))
    message = info.value.render()
    assert "is not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message


@pytest.mark.parametrize(
    "model, expected",
    [
        ("./no/such/folder", "does not exist"),
        ("builtin:huge-sd", "is not a built-in model"),
    ],
)
def test_bad_model_paths(model, expected):
    with pytest.raises(ModelLoadError, match=expected):
        resolve_checkpoint(Generator(model=model, **TINY))


def test_folder_without_model_index(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.ckpt").write_bytes(b"not a pipeline")
    with pytest.raises(ModelLoadError, match="has no model_index.json"):
        resolve_checkpoint(Generator(model=str(tmp_path / "ckpt"), **TINY))


def test_corrupt_checkpoint_is_a_clear_error(tiny_model, tmp_path):
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load a Stable Diffusion pipeline"):
        load_pipeline(Generator(model=str(broken), **TINY))


def test_half_precision_is_refused_on_cpu():
    with pytest.raises(ModelLoadError, match="not supported on CPU"):
        load_pipeline(Generator(model="builtin:tiny-sd", dtype="float16", device="cpu", **TINY))


def test_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU is visible"):
        load_pipeline(Generator(model="builtin:tiny-sd", device="cuda", **TINY))


def test_in_memory_build_matches_saved_config(tiny_model):
    pipe = build_tiny_pipeline()
    saved = json.loads((tiny_model / "unet" / "config.json").read_text())
    assert list(pipe.unet.config.block_out_channels) == saved["block_out_channels"] == [32, 64]
