"""The generation stage on the real tiny pipeline: seeding, batching, and NaN outputs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from builder.core.shards import ShardStore, run_stage_on_shard
from builder.expand.specs import shard_specs
from builder.manifest.loader import load_manifest
from builder.synthesis.generate import GenerateStage, to_uint8
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def demo():
    return load_manifest(DEMO)


def stage_for(demo, **changes) -> GenerateStage:
    stage = GenerateStage(demo.generator.model_copy(update=changes))
    stage.setup()
    return stage


def images(stage, records):
    return stage.generate(records)


def test_image_does_not_depend_on_batch(demo, tiny_model):
    records = shard_specs(demo, 0)[:4]
    together = images(stage_for(demo), records)
    alone = np.stack([images(stage_for(demo), [r])[0] for r in records])
    assert np.abs(together - alone).max() < 2e-3, "float rounding only"
    assert np.abs(to_uint8(together).astype(int) - to_uint8(alone)).max() <= 1


def test_same_seed_same_image_other_seed_other_image(demo, tiny_model):
    stage = stage_for(demo)
    a, b = shard_specs(demo, 0)[:2]
    first = images(stage, [a])[0]
    assert np.array_equal(first, images(stage, [a])[0])
    b.prompt = a.prompt
    assert np.abs(first - images(stage, [b])[0]).mean() > 0.01


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++"])
def test_other_schedulers_stay_per_sample(demo, tiny_model, scheduler):
    records = shard_specs(demo, 1)[:3]
    together = images(stage_for(demo, scheduler=scheduler), records)
    alone = images(stage_for(demo, scheduler=scheduler, batch_size=1), [records[2]])[0]
    assert np.abs(together[2] - alone).max() < 2e-3


def test_stage_writes_pngs_and_records_paths(demo, tiny_model, tmp_path):
    store = ShardStore(tmp_path)
    records = shard_specs(demo, 0)
    kept = run_stage_on_shard(stage_for(demo), store, 0, records)
    assert [r.sample_id for r in kept] == [r.sample_id for r in records]
    for r in kept:
        assert r.image == f"shards/generate/00000/images/{r.sample_id}.png"
        with Image.open(tmp_path / r.image) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    stats = store.stats("generate", 0)
    assert stats["in"] == stats["kept"] == 8 and stats["dropped"] == {}
    assert stats["meta"]["provenance"]["model"] == "builtin:tiny-sd"


def test_nonfinite_decodes_are_dropped_not_fatal(demo, tiny_model, tmp_path):
    """A VAE whose decode overflows (as fp16 can) yields NaN pixels: those samples are dropped."""
    import torch

    stage = stage_for(demo)
    with torch.no_grad():
        stage.pipe.vae.post_quant_conv.weight[0, 0, 0, 0] = float("nan")
    store = ShardStore(tmp_path)
    kept = run_stage_on_shard(stage, store, 0, shard_specs(demo, 0))
    assert kept == []
    stats = store.stats("generate", 0)
    assert stats["dropped"] == {"nonfinite_output": 8}
    rejected = store.rejected("generate", 0)
    assert {r.drop.reason for r in rejected} == {"nonfinite_output"} and all(r.image is None for r in rejected)
    assert not list((tmp_path / "shards" / "generate" / "00000").glob("images/*.png"))


@pytest.mark.gpu
def test_bf16_generation_on_gpu(demo, tiny_model):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    stage = stage_for(demo, device="cuda", dtype="auto")
    assert stage.pipe.unet.dtype in (torch.bfloat16, torch.float16)
    out = images(stage, shard_specs(demo, 0)[:2])
    assert np.isfinite(out).all()


def test_prompt_tokens_are_recorded(demo, tiny_model, tmp_path):
    stage = stage_for(demo)
    records = shard_specs(demo, 0)[:2]
    records[1].prompt = "happy " * 200
    kept = run_stage_on_shard(stage, ShardStore(tmp_path), 0, records)
    assert 10 < kept[0].scores["prompt_tokens"] <= 77 < kept[1].scores["prompt_tokens"] == 202
    assert stage.meta()["max_prompt_tokens"] == 77 and stage.meta()["dtype"] == "float32"


def test_out_of_memory_names_the_fix(demo):
    import torch

    from builder.core.errors import UserError
    from builder.synthesis.generate import _explain_oom

    with pytest.raises(UserError, match="lower generator.batch_size and rerun"):
        with _explain_oom(16, demo.generator):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
