"""Training speed and peak memory of ``train-generator`` on this machine: LoRA and full fine-tuning.

    .venv/bin/python bench/train_generator.py [--steps 20] [--resolution 64] [--out bench/train_generator.json]

Each method runs in its own subprocess (peak RSS is that run's alone, ``ru_maxrss``) on the built-in tiny
pipeline with 16 seeded image-text pairs, batch 2, no validation, one checkpoint at the end. Steps per second
come from ``loss.jsonl`` (the training loop's own clock, model loading excluded). On a CUDA device the peak GPU
memory (``torch.cuda.max_memory_allocated``) is recorded too; the tiny pipeline says nothing about SD1.5 speed,
which RESULTS.md discusses against diffusers' published figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_one(method: str, steps: int, resolution: int, base_model: str, batch_size: int = 2,
            mixed_precision: str = "no") -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from PIL import Image

    from builder import api

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
                  for _ in range(16)]
        Dataset.from_dict({"image": images, "text": [f"a photo of a face, number {i}" for i in range(16)]}) \
            .save_to_disk(str(work / "hf"))
        config = {"base_model": base_model, "method": method, "resolution": resolution,
                  "output_dir": str(work / "out"), "data": {"dataset": str(work / "hf")},
                  "train": {"steps": steps, "batch_size": batch_size, "checkpoint_every": steps, "log_every": 1,
                            "eval_examples": 2, "learning_rate": 1e-4, "mixed_precision": mixed_precision},
                  "validation": {"every": 0, "seeds": [0], "num_inference_steps": 1, "expressions": ["happy"]}}
        (work / "c.yaml").write_text(yaml.safe_dump(config))
        started = time.perf_counter()
        summary = api.train_generator(work / "c.yaml", progress=False, log=lambda _: None)
        wall = time.perf_counter() - started
        log = [json.loads(line) for line in (work / "out" / "loss.jsonl").read_text().splitlines()]
        # steps/s over the steps after the first (warm-up: allocations, lazy imports)
        rate = (len(log) - 1) / (log[-1]["seconds"] - log[0]["seconds"])
        row = {"method": method, "steps": steps, "resolution": resolution, "batch_size": batch_size,
               "mixed_precision": mixed_precision,
               "trainable_parameters": summary["trainable_parameters"], "steps_per_s": round(rate, 2),
               "wall_s_with_loading_and_validation": round(wall, 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "eval_loss": [summary["eval_loss_start"], summary["eval_loss_end"]]}
        if torch.cuda.is_available():
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--base-model", default="builtin:tiny-sd")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--methods", nargs="+", default=["lora", "full"])
    p.add_argument("--out", type=Path)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.resolution, args.base_model, args.batch_size,
                                 args.mixed_precision)))
        return 0
    import torch

    rows = []
    for method in args.methods:
        done = subprocess.run([sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--resolution",
                               str(args.resolution), "--base-model", args.base_model, "--batch-size",
                               str(args.batch_size), "--mixed-precision", args.mixed_precision],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
