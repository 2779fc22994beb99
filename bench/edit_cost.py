"""Expression editing: cost per edit against one generated image, and the identity / expression figures of the
edit source on the offline example photos.

    .venv/bin/python bench/edit_cost.py [--size 128] [--steps 20] [--out bench/edit.json]

1. ``cost``: the built-in tiny pipeline (random weights, float32, CPU) generating K=7 images from noise (DDIM,
   ``--steps``, CFG 3, one batch) against editing one source photo to the same 7 targets
   (``builder.synthesis.editing.edit``: inversion to strength s, then one batch [source, 7 edits] x CFG), for
   strengths 0.3, 0.6 and 1.0; best of 3. The UNet image-rows each path runs are counted too: on a GPU the
   ratio of rows is what the ratio of times tends to, as the tiny model's fixed overheads vanish.
2. ``build``: ``manifests/edit-demo.yaml`` on the eight photos (``builder.example_faces``), strengths 0, 0.2 and
   0.5: edits made, faces found, the identity similarity of the edits (dlib) and how many the FER2013 expert
   confirmed as their target. With random tiny weights this measures the plumbing, not the method: only a
   trained generator (a GPU run) can show identity kept under a real edit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cost(size: int, steps: int) -> dict:
    import torch
    from diffusers import DDIMScheduler

    from builder.example_faces import example_faces
    from builder.manifest import Generator
    from builder.models.diffusion import load_pipeline
    from builder.synthesis.edit import fit
    from builder.synthesis.editing import EditSettings, edit

    pipe = load_pipeline(Generator(model="builtin:tiny-sd", device="cpu", dtype="float32"))[0]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a close-up photo of a person with a {t} facial expression" for t in TARGETS]
    k = len(prompts)

    def generate():
        with torch.no_grad():
            pipe(prompts, num_inference_steps=steps, guidance_scale=3.0, height=size, width=size,
                 generator=torch.Generator().manual_seed(0), output_type="np")

    source = fit(example_faces()["portrait"], size, size)
    out = {"size": size, "steps": steps, "targets": k, "generate_seconds_per_image": best_of(generate) / k,
           "strengths": {}}
    for strength in (0.3, 0.6, 1.0):
        settings = EditSettings(steps=steps, strength=strength, guidance_scale=3.0, inject_steps=5)
        seconds = best_of(lambda settings=settings: edit(pipe, source, "", prompts, settings)) / k
        inverted = round(steps * strength)
        rows = inverted * (1 + 2 * (k + 1))  # inversion batch 1, then [source, k edits] x CFG
        out["strengths"][str(strength)] = {
            "seconds_per_edit": round(seconds, 4),
            "relative_time": round(seconds / out["generate_seconds_per_image"], 3),
            "unet_rows_per_edit": round(rows / k, 2), "relative_rows": round(rows / (k * steps * 2), 3)}
    out["generate_seconds_per_image"] = round(out["generate_seconds_per_image"], 4)
    return out


def build(strength: float, work: Path, faces: Path) -> dict:
    from builder import api

    data = yaml.safe_load((ROOT / "manifests" / "edit-demo.yaml").read_text())
    data["edit"].update(folder=str(faces), strength=strength)
    path = work / f"edit-{strength}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = work / f"out-{strength}"
    start = time.perf_counter()
    api.build(path, out, progress=False, log=lambda *a: None, allow_empty=True)
    seconds = time.perf_counter() - start
    stats = json.loads((out / "stats.json").read_text())
    edit = stats["edit"]
    return {"strength": strength, "edits": stats["stages"]["edit"]["kept"], "seconds": round(seconds, 1),
            "edit_stage_seconds": stats["stages"]["edit"].get("seconds"),
            "faces_dropped": stats["stages"]["faces"]["dropped"],
            "identity": {k: edit["identity"].get(k) for k in ("measured", "mean", "min", "max", "dropped")},
            "expression": {k: edit["expression"][k] for k in ("judged", "confirmed", "success_rate")},
            "released": stats["released"]["total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "edit.json")
    args = parser.parse_args()
    import torch

    from builder.example_faces import write_example_faces

    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__},
              "cost": cost(args.size, args.steps)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_example_faces(work / "faces")
        result["build"] = [build(s, work, work / "faces") for s in (0.0, 0.2, 0.5)]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
