"""Prompt enrichment by a local causal LM: a tiny GPT-2 the test builds (random weights, the tool's BPE)."""
from __future__ import annotations

import json

import pytest

from builder.cli import main
from builder.core.errors import ModelLoadError
from builder.expand.specs import shard_specs
from builder.manifest import Enrich
from builder.manifest.loader import load_manifest
from builder.synthesis.enrich import EnrichStage
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, tiny_model):
    import torch
    from transformers import CLIPTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("lm") / "tiny-gpt2"
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model / "tokenizer", local_files_only=True)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def enrich(tiny_lm, records, seed=1234):
    stage = EnrichStage(Enrich(model=str(tiny_lm), max_new_tokens=8), seed)
    stage.setup()
    return [r.prompt for r in stage.process(records, ctx=None)]


def test_enrichment_appends_a_seeded_continuation(tiny_lm):
    demo = load_manifest(DEMO)
    base = [r.prompt for r in shard_specs(demo, 0)[:4]]
    first = enrich(tiny_lm, shard_specs(demo, 0)[:4])
    assert all(p.startswith(b) and len(p) > len(b) for p, b in zip(first, base))
    assert len(set(p[len(b):] for p, b in zip(first, base))) > 1, "each sample has its own continuation"
    assert enrich(tiny_lm, shard_specs(demo, 0)[:4]) == first, "same seed, same text"
    alone = enrich(tiny_lm, shard_specs(demo, 0)[2:3])
    assert alone == first[2:3], "a prompt does not depend on the batch"
    assert enrich(tiny_lm, shard_specs(demo, 0)[:4], seed=99) != first


def test_enrich_runs_as_a_stage_in_a_build(tiny_lm, write_manifest, tmp_path):
    manifest = write_manifest({"name": "enriched", "labels": {"counts": {"happy": 2}},
                               "prompts": {"enrich": {"model": str(tiny_lm), "max_new_tokens": 6}}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["stages"]) == ["enrich", "generate", "integrity", "dedupe", "release"]
    assert stats["stages"]["enrich"]["kept"] == 2
    from datasets import load_from_disk

    enriched = {r["sample_id"]: r["prompt"] for ds in load_from_disk(str(out / "hf")).values() for r in ds}
    base = {r.sample_id: r.prompt for r in shard_specs(load_manifest(manifest), 0)}
    assert all(enriched[k].startswith(base[k]) and enriched[k] != base[k] for k in base)


def test_not_a_model_folder(tmp_path):
    stage = EnrichStage(Enrich(model=str(tmp_path)), 0)
    with pytest.raises(ModelLoadError, match="is not a transformers model folder"):
        stage.setup()
