"""bench/feranno_throughput.py in --tiny mode: the benchmark's whole path on the CPU (the GPU run is the same code)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import feranno_throughput as bench


@pytest.mark.slow
def test_tiny_benchmark_writes_throughput_and_probabilities(tmp_path, capsys, monkeypatch):
    import torch

    import builder.models.diffusion

    # The tool refuses half precision on the CPU; let it through here so that the loader the GPU run uses for
    # bfloat16 (from_pretrained's steps in another dtype) runs too, next to the label stage's float32 path.
    plain = builder.models.diffusion.resolve_dtype
    monkeypatch.setattr(builder.models.diffusion, "resolve_dtype",
                        lambda requested, device: torch.bfloat16 if requested == "bfloat16" else plain(requested, device))
    out = tmp_path / "r.json"
    bench.main(["--tiny", "--work", str(tmp_path / "work"), "--out", str(out), "--device", "cpu",
                "--dtype", "bfloat16", "float32", "--generation-ips", "0.5"])
    result = json.loads(out.read_text())

    assert result["device"] == "cpu" and result["device_name"].startswith("CPU")
    assert result["versions"]["torch"] and result["versions"]["diffusers"] and result["date"]
    assert "--tiny" in result["command"]
    assert result["backbone"]["model"] == "builtin:tiny-sd" and len(result["backbone"]["weights_sha256"]) == 64
    labeller = result["labeller"]
    assert labeller["resolution"] == 64 and labeller["inversion"] == {"steps": 50, "timestep": 200, "t": 181}
    flops = result["flops_per_image"]
    assert flops["inversion_unet_forwards"] == 10 and flops["feature_unet_forwards"] == 1
    assert flops["total"] == flops["vae_encode"] + 11 * flops["unet_forward"] + flops["head"] > 0

    # the checkpoint is in train-feranno's format: the label stage's loader reads it
    folder = tmp_path / "work" / "feranno-tiny-r64-h32"
    assert sorted(p.name for p in folder.iterdir()) == ["feranno.safetensors", "feranno_config.json"]
    config = json.loads((folder / "feranno_config.json").read_text())
    assert config["feature_channels"] == [64, 32] and config["tokens"] == 41 and config["hidden_dim"] == 32

    assert [run["dtype"] for run in result["runs"]] == ["bfloat16", "float32"]
    assert "from_pretrained (label stage path)" in result["runs"][1]["loader"]
    for run in result["runs"]:
        assert [row["batch_size"] for row in run["batches"]] == [1, 2]
        for row in run["batches"]:
            assert row["images_per_s"] > 0 and row["images"] == 4
            assert row["images_per_s"] == pytest.approx(row["images"] / row["seconds"])
            probs = row["probabilities"]
            assert probs["rows"] == 4 and probs["classes"] == 7 and probs["all_finite"]
            assert probs["max_abs_sum_error"] < 1e-5  # every image got a distribution over the classes
            parts = row["breakdown"]["s_per_image"]
            assert set(parts) == set(bench.PARTS) and parts["inversion"] > 0 and parts["feature_pass"] > 0
            assert np.isclose(sum(parts.values()), row["breakdown"]["seconds"] / row["images"])
    assert result["runs"][1]["batches"][1]["probabilities"]["max_abs_diff_vs_batch_1"] < 1e-4  # batching: same
    printed = capsys.readouterr().out
    assert "| bfloat16 | 2 | 4 |" in printed and "| float32 | 1 | 4 |" in printed
    assert "x generation's 0.50 img/s" in printed
