"""The whole evaluation report of the demo build on CPU: evaluate (one run, a scaling sweep over two test sets),
fidelity, audit and report, each timed, then the same at 4x the build's size to see how they grow.

    .venv/bin/python bench/evaluation_report.py [--out bench/evaluation_report.json]

Everything is offline: the build is ``manifests/demo.yaml`` (the built-in tiny pipeline: its images are NOT
faces, so every crop falls back to a centre crop) at 4 images per class (28) and 16 per class (112); the "real"
sets are the offline example photos (``builder.example_faces``) and their near copies, sorted into class folders
(labels are arbitrary: the accuracies mean nothing, the times do); the backbone, encoder and attribute
classifiers are tiny random-weight transformers models built here from configs, as the tests build them. Real
models (ResNet-18, CLIP ViT-B/32, a ViT age classifier) cost more per image: the fixed costs (imports, loading)
dominate these runs, the per-image costs scale with the model.
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

CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")


def models(root: Path) -> dict:
    import torch
    import transformers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        ResNetConfig,
        ResNetModel,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessorPil,
    )

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
                ).save_pretrained(root / "resnet")
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
                                  ).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip")
    out = {"backbone": root / "resnet", "encoder": root / "clip"}
    for attribute, labels in (("age", ["young", "middle-aged", "old"]), ("gender", ["man", "woman"])):
        id2label = dict(enumerate(labels))
        ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64, id2label=id2label,
                                            label2id={v: k for k, v in id2label.items()})).save_pretrained(
            root / attribute)
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / attribute)
        out[attribute] = root / attribute
    return out


def real_folder(folder: Path, copies: int) -> Path:
    from builder.example_faces import example_faces, near_copy

    kinds = ("resize", "jpeg", "flip", "crop", "crop15", "rotate")
    for i, (name, face) in enumerate(sorted(example_faces().items())):
        for k in range(copies):
            target = folder / CLASSES[(i + k) % len(CLASSES)]
            target.mkdir(parents=True, exist_ok=True)
            (near_copy(face, kinds[k % len(kinds)]) if k else face).save(target / f"{name}-{k}.png")
    return folder


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 2)


def one_size(per_class: int, work: Path, found: dict, tests: list[Path]) -> dict:
    from builder import api

    data = yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())
    data["labels"]["counts"] = per_class
    data["output"]["splits"] = {"train": 1.0}
    manifest = work / f"demo-{per_class}.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    out = work / f"out-{per_class}"
    log = (lambda *a: None)
    times = {"build": timed(lambda: api.build(manifest, out, progress=False, log=lambda *a: None))}
    common = dict(backbone=str(found["backbone"]), epochs=3, batch_size=16, image_size=32, allow_overlap=True,
                  log=log)
    times["evaluate"] = timed(lambda: api.evaluate(out, tests[0], name="single", **common))
    times["evaluate_sweep"] = timed(lambda: api.evaluate(out, tests, name="scaling", sizes="0.5,1", seeds="0,1",
                                                         **common))
    times["fidelity"] = timed(lambda: api.fidelity(out, tests[0], encoder=str(found["encoder"]), progress=False,
                                                   kid_subset_size=20, log=lambda *a: None))
    times["audit"] = timed(lambda: api.audit(out, {"age": str(found["age"]), "gender": str(found["gender"])},
                                             log=lambda *a: None))
    times["report"] = timed(lambda: api.report(out))
    report = json.loads((out / "report" / "report.json").read_text())
    sweep = json.loads((out / "eval" / "scaling.json").read_text())
    return {"per_class": per_class, "images": 7 * per_class, "seconds": times,
            "sweep_parts": sweep["seconds"], "headline": report["headline"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "evaluation_report.json")
    args = parser.parse_args()
    import torch

    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        found = models(work / "models")
        tests = [real_folder(work / "real-a", 3), real_folder(work / "real-b", 2)]
        for per_class in (4, 16):
            result["runs"].append(one_size(per_class, work, found, tests))
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps([{k: r[k] for k in ("images", "seconds")} for r in result["runs"]], indent=2))


if __name__ == "__main__":
    main()
