"""bench/generation_throughput.py and bench/sd15.py run (tiny model, CPU) and report what they claim to."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_generation_benchmark_runs_every_kind_of_variant(tmp_path):
    from bench.generation_throughput import main

    out = tmp_path / "gen.json"
    variants = ["diffusers:fp32", "stage:fp32", "stage:fp32:cl:fuse", "stage:fp32:guide=vae:window=1-3",
                "stage:fp32:adapter", "stage:fp32:writer=0"]
    result = main(["--tiny", "--batches", "1", "--batch-sizes", "2", "--work", str(tmp_path / "work"),
                   "--out", str(out), "--variants", *variants])
    assert json.loads(out.read_text()) == result
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == set(variants) and not any("error" in r for r in runs.values())
    for r in runs.values():
        assert r["images"] == 2 and r["finite_images"] == 2 and r["images_per_s"] > 0
    assert "speedup_vs_diffusers_fp16" not in runs["stage:fp32"], "only compared with the fp16 pipeline"
    assert runs["stage:fp32:adapter"]["extra_cost_vs_stage:fp32"] > -1
    assert "extra_cost_vs_stage:fp32" in runs["stage:fp32:guide=vae:window=1-3"]
    assert result["settings"]["steps"] == 4 and result["versions"]["torch"]


def test_variant_parsing_rejects_unknown_parts():
    from bench.generation_throughput import parse_variant

    v = parse_variant("stage:bf16:cl:fuse:compile=reduce-overhead:guide=taesd:window=5-15:adapter:writer=0")
    assert v["dtype"] == "bfloat16" and v["window"] == (5, 15) and v["adapter"] and v["guide"] == "taesd"
    assert v["speed"] == {"channels_last": True, "fuse_qkv": True, "compile": "reduce-overhead", "writer_threads": 0}
    for bad in ("stage:fp8", "plain:fp16", "diffusers:fp16:cl"):
        with pytest.raises(SystemExit):
            parse_variant(bad)


def test_flop_count_of_sd15_matches_the_published_figures():
    """677 GFLOP per UNet forward at 512x512 counts convolutions and projections; the attention products add
    about 126 GFLOP more. A VAE decode is about 2.5 TFLOP."""
    from bench.sd15 import count_flops

    flops = count_flops()
    assert round(flops["unet_forward_no_attention"] / 1e9) == 677
    assert 800e9 < flops["unet_forward"] < 810e9
    assert 2.50e12 < flops["vae_decode"] < 2.53e12
    assert flops["taesd_decode"] < flops["vae_decode"] / 10
    # a guided step's gradient: decode x0, then back through the decoder and the UNet to the text (about 1x the
    # forward for input gradients only); TAESD makes it about 5x cheaper than the VAE
    assert flops["unet_forward"] + 2 * flops["vae_decode"] < flops["guided_step_extra_vae"] < 2 * flops["unet_forward"] + 2.5 * flops["vae_decode"]
    assert flops["guided_step_extra_taesd"] < flops["guided_step_extra_vae"] / 4
    assert 0 < flops["unet_forward_au_adapter"] / flops["unet_forward"] - 1 < 0.05, "the AU adapter's target"
