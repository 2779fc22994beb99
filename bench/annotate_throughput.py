"""Throughput of the training-pair stages (align, upscale, AU intensities, caption, caption checks) on this machine.

    .venv/bin/python bench/annotate_throughput.py [--copies 6] [--out bench/annotate.json]

Input: the offline example photos (``builder.example_faces``: eight people, the six of the group photo with faces
of about 60-110 px) and ``--copies`` near copies of each (``near_copy``: resize, jpeg, flip, crop, crop15, rotate),
written to a folder and built with the shipped ``manifests/training-pairs.yaml`` through the Python API, twice:

- ``template``: no models in the annotate stages (plain resize, template captions), the shipped example as it is;
- ``models``: a tiny Swin2SR x2 upscaler (transformers, random weights), a tiny ONNX AU detector and a tiny LLaVA
  vision-language model (random weights, 16 new tokens, batches of 4), each built here from a config the way the
  tests build them. Real models are larger: these figures measure the stage machinery (decoding, warping, I/O,
  batching, the runner), not a real model's compute.

Per stage it reports images in, kept, seconds (the stage's own clock in ``stats.json``) and images per second;
dedupe is off so every copy reaches the annotate stages.
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

KINDS = ("resize", "jpeg", "flip", "crop", "crop15", "rotate")
STAGES = ("ingest", "faces", "label", "align", "upscale", "aus", "caption", "caption_check")


def write_photos(folder: Path, copies: int) -> int:
    from builder.example_faces import example_faces, near_copy

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, photo in example_faces().items():
        photo.save(folder / f"{name}.png")
        n += 1
        for kind in KINDS[:copies]:
            near_copy(photo, kind).save(folder / f"{name}-{kind}.png")
            n += 1
    return n


def build_models(folder: Path) -> dict[str, str]:
    from tests.annotate.test_aus import onnx_detector
    from tests.annotate.test_upscale import save_swin2sr
    from tests.fixtures.tiny_vlm import build_tiny_vlm

    return {"upscaler": str(save_swin2sr(folder / "swin2sr-x2")),
            "detector": str(onnx_detector(folder / "detector", aus=["AU1", "AU2", "AU4", "AU6", "AU12", "AU15",
                                                                    "AU25", "AU26"])),
            "vlm": str(build_tiny_vlm(folder / "tiny-vlm"))}


def run(work: Path, photos: Path, name: str, models: dict[str, str] | None) -> dict:
    from builder import api

    data = yaml.safe_load((ROOT / "manifests" / "training-pairs.yaml").read_text())
    data["images"]["folder"] = str(photos)
    data["curation"]["dedupe"] = {"enabled": False}
    data["output"]["shard_size"] = 16
    if models is not None:
        data["annotate"]["upscale"] = {"model": models["upscaler"], "when_smaller_than": 256}
        data["annotate"]["aus"] = {"model": models["detector"], "au_set": "disfa12"}
        data["annotate"]["captions"] = {"model": models["vlm"], "max_new_tokens": 16, "batch_size": 4}
        data["annotate"]["checks"]["label_agreement"] = "flag"  # random weights write random words
        data["annotate"]["checks"]["min_words"] = 1
    manifest = work / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    out = work / f"out-{name}"
    started = time.perf_counter()
    api.build(manifest, out=out, progress=False)
    total = time.perf_counter() - started
    stats = json.loads((out / "stats.json").read_text())
    stages = {}
    for stage in STAGES:
        s = stats["stages"].get(stage)
        if s is None:
            continue
        stages[stage] = {"in": s["in"], "kept": s["kept"], "dropped": s["dropped"], "seconds": s["seconds"],
                         "img_per_s": round(s["in"] / s["seconds"], 1) if s["seconds"] else None}
    from collections import Counter

    import datasets

    released = datasets.load_from_disk(str(out / "hf"))["train"]
    return {"run": name, "wall_s": round(total, 1), "released": len(released),
            "upscaled_by": dict(Counter(released["upscaled_by"])), "stages": stages}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=6, choices=range(0, len(KINDS) + 1),
                   help="near copies per photo (0-6)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = write_photos(work / "photos", args.copies)
        models = build_models(work / "models")
        rows = [run(work, work / "photos", "template", None), run(work, work / "photos", "models", models)]
    result = {"images": n, "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                       "python": platform.python_version(), "torch": torch.__version__,
                                       "torch_threads": torch.get_num_threads()},
              "date": time.strftime("%Y-%m-%d"), "runs": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
