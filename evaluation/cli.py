"""``build-dataset evaluate OUT --test REAL_SET [--train-real REAL_TRAIN --mix RATIO]``.

``main(argv)`` takes the arguments after ``evaluate`` and returns 0; bad input
raises ``builder.errors.UserError`` (the CLI turns it into one message and exit
code 2). The run: open the released build and the real sets, align their label
maps by emotion name, load the backbone, check the guard, crop the faces, train
(seeded), predict the test set, and write ``OUT/eval/<name>.*`` and the card's
Evaluation section.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from builder.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_BACKBONE = "microsoft/resnet-18"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-dataset evaluate",
        description="Train an expression classifier on a released build (synthetic only, or mixed with real "
        "images) and test it on a real labelled set; results go to OUT/eval/ and the data card.")
    p.add_argument("out", type=Path, help="the released build folder")
    p.add_argument("--train-split", default="train", help="the build's split to train on (default: train)")
    for flag, role, split in (("--test", "the real labelled test set", "test"),
                              ("--train-real", "a real labelled training set to mix in (needs --mix)", "train")):
        p.add_argument(flag, type=Path, required=flag == "--test", metavar="PATH",
                       help=f"{role}: a dataset saved with save_to_disk, or an image folder class_name/*.jpg")
        p.add_argument(f"{flag}-split", help=f"split of a saved DatasetDict (default: {split})")
        p.add_argument(f"{flag}-image-column", default="image", help="image column (default: image)")
        p.add_argument(f"{flag}-label-column", default="label", help="label column (default: label)")
        p.add_argument(f"{flag}-label-map", metavar="MAP",
                       help="class order of integer labels or numbered class folders: affectnet7, affectnet8, "
                       "rafdb, fer2013, or names separated by commas (default: the ClassLabel / folder names)")
        p.add_argument(f"{flag}-label-base", type=int, default=0, choices=(0, 1),
                       help="1 when those integers count from 1 (RAF-DB's files)")
    p.add_argument("--mix", type=float, metavar="RATIO",
                   help="fraction of real samples in every epoch, 0-1 (0: synthetic only, 1: real only)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="a Hub id (microsoft/resnet-18, microsoft/resnet-50, google/vit-base-patch16-224), a "
                   "save_pretrained folder, or ir50:CHECKPOINT (ir50 alone: random init); "
                   f"default {DEFAULT_BACKBONE}")
    p.add_argument("--revision", help="Hub revision of the backbone (default: main)")
    p.add_argument("--mode", choices=("finetune", "linear"), default="finetune",
                   help="fine-tune the whole network, or train a linear probe on frozen features")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate when fine-tuning (AdamW)")
    p.add_argument("--head-lr", type=float, help="head learning rate (default: 1e-3 fine-tuning, 1e-2 linear)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--image-size", type=int, help="backbone input side (default: the backbone's own)")
    p.add_argument("--no-align", action="store_true",
                   help="do not detect and align faces (pre-aligned sets): centre crops")
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--name", help="result name: OUT/eval/NAME.json (default: backbone-mode-testset[-mixR])")
    p.add_argument("--force", action="store_true",
                   help="evaluate even with the model that guided or labelled the build (result marked "
                   "guard_overridden)")
    return p


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "eval"


def default_name(args) -> str:
    backbone = "ir50" if args.backbone.startswith("ir50") else Path(args.backbone.rstrip("/")).name
    test = Path(str(args.test).rstrip("/")).name + (f"-{args.test_split}" if args.test_split else "")
    name = f"{backbone}-{args.mode}-{test}" + (f"-mix{args.mix:g}" if args.train_real is not None else "")
    return _slug(name)[:100]


def _check_args(args) -> None:
    if (args.train_real is None) != (args.mix is None):
        raise UserError("--train-real and --mix go together" if args.train_real is None else
                        "--train-real needs --mix (the fraction of real samples per epoch)",
                        fix="give both --train-real PATH and --mix RATIO, or neither (synthetic only)")
    if args.mix is not None and not 0 <= args.mix <= 1:
        raise UserError(f"--mix {args.mix:g} is not between 0 and 1", fix="0: synthetic only, 1: real only")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 2),
                             ("--image-size", args.image_size or 16, 16)):
        if value < low:
            raise UserError(f"{flag} {value} is below {low}", fix=f"give {flag} >= {low}")
    for flag, value in (("--lr", args.lr), ("--head-lr", args.head_lr if args.head_lr is not None else 1.0)):
        if not value > 0:
            raise UserError(f"{flag} must be positive", fix=f"give {flag} > 0")
    if args.name is not None and not NAME.match(args.name):
        raise UserError(f"--name '{args.name}' is not a plain file name",
                        fix="use letters, digits, '.', '_' and '-' (up to 100)")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(argv)
    _check_args(args)
    evaluate(args)
    return 0


def evaluate(args) -> dict:
    """The whole run (see the module docstring); returns the result dict written to OUT/eval/<name>.json."""
    from .sources import SetSpec, build_split, open_build, open_set

    started = time.perf_counter()
    seconds = {}
    build = open_build(args.out)
    name = args.name or default_name(args)
    train = build_split(build, args.train_split)
    test = open_set(SetSpec(args.test, "test", "--test", args.test_split, args.test_image_column,
                            args.test_label_column, args.test_label_map, args.test_label_base))
    real = None
    if args.train_real is not None:
        real = open_set(SetSpec(args.train_real, "real train", "--train-real", args.train_real_split,
                                args.train_real_image_column, args.train_real_label_column,
                                args.train_real_label_map, args.train_real_label_base))
    seconds["open"] = time.perf_counter() - started

    import torch

    from . import guard
    from .backbones import load_backbone
    from .train import resolve_device

    device = resolve_device(args.device)
    tick = time.perf_counter()
    torch.manual_seed(args.seed)  # weights a checkpoint lacks (a random IR-50, a new pooler) are seeded too
    backbone = load_backbone(args.backbone, args.image_size, args.revision)
    guard_record = guard.check(backbone, build.stats, build.manifest, args.force)
    if guard_record["overridden"]:
        _log(f"warning: --force: the evaluator is a model that {guard_record['conflicts'][0]['role']}; the result "
             "is marked guard_overridden")
    seconds["backbone"] = time.perf_counter() - tick

    result = _run(args, build, name, train, test, real, backbone, device, guard_record, seconds)
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    _write(build.out, name, result)
    m = result["metrics"]
    print(f"{name}: accuracy {m['accuracy']:.4f}, macro accuracy {m['macro_accuracy']:.4f}, macro F1 "
          f"{m['macro_f1']:.4f} over {len(m['evaluated_classes'])} classes ({m['samples_evaluated']} of "
          f"{m['samples_total']} test samples) -> {build.out / 'eval' / (name + '.json')}")
    return result


def _run(args, build, name, train, test, real, backbone, device, guard_record, seconds) -> dict:
    import numpy as np

    from . import metrics as metrics_mod
    from .faces import Cropper, CropSpec
    from .labels import align
    from .train import Pool, Settings, fit, mix_counts, predict

    ratio = args.mix if real is not None else 0.0
    build_names = train.names
    real_alignment = align(build_names, real.names, "--train-real") if real is not None else None
    # the label checks first (before any face is cropped), then again without unreadable images
    _model_classes(train, range(len(train)), real, real_alignment, range(len(real or ())), ratio, test)

    spec = CropSpec.for_build(build.manifest, align=not args.no_align)
    cropper = Cropper(spec, build.out / "eval" / "cache", device, _log)
    tick = time.perf_counter()
    train_crops = cropper.crops(train)
    test_crops = cropper.crops(test)
    real_crops = cropper.crops(real) if real is not None and ratio > 0 else None
    seconds["faces"] = time.perf_counter() - tick

    syn_keep = [i for i in range(len(train)) if train_crops.status[i] != "unreadable"]
    real_readable = [i for i in range(len(real or ())) if real_crops is None or real_crops.status[i] != "unreadable"]
    test_keep = [i for i in range(len(test)) if test_crops.status[i] != "unreadable"]
    with_samples, real_keep, test_alignment = _model_classes(train, syn_keep, real, real_alignment, real_readable,
                                                             ratio, test, test_keep)
    model_names = tuple(build_names[c] for c in with_samples)
    to_model = {c: k for k, c in enumerate(with_samples)}
    syn_counts = _count([train.labels[i] for i in syn_keep], len(build_names))
    real_counts = _count([real_alignment.map_label(real.labels[i]) for i in real_keep], len(build_names))
    real_excluded = {}
    for i in real_readable:
        if real_alignment.map_label(real.labels[i]) is None:
            name_ = real.names[real.labels[i]]
            real_excluded[name_] = real_excluded.get(name_, 0) + 1

    syn_rows = syn_keep if ratio < 1 else []  # ratio 1: real data only
    pools = [Pool("synthetic", train_crops.pixels, np.array(syn_rows, np.int64),
                  np.array([to_model[train.labels[i]] for i in syn_rows], np.int64))]
    use_real = ratio > 0 and bool(real_keep)
    if use_real:
        pools.append(Pool("real", real_crops.pixels, np.array(real_keep, np.int64),
                          np.array([to_model[real_alignment.map_label(real.labels[i])] for i in real_keep], np.int64)))
    n_syn, n_real = len(pools[0].labels), len(pools[1].labels) if use_real else 0
    per_epoch = mix_counts(n_syn, n_real, ratio)

    settings = Settings(args.mode, args.epochs, args.batch_size, args.lr,
                        args.head_lr if args.head_lr is not None else (1e-2 if args.mode == "linear" else 1e-3),
                        args.weight_decay, args.seed, not args.no_flip, device)
    _log(f"training {backbone.info['id']} ({args.mode}) on {per_epoch[0]} synthetic + {per_epoch[1]} real samples "
         f"per epoch, {len(model_names)} classes, {args.epochs} epochs, on {device}")
    tick = time.perf_counter()
    model, history = fit(backbone, pools, len(model_names), settings, ratio, _log)
    seconds["train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    probs = predict(model, backbone, test_crops.pixels, np.array(test_keep, np.int64), args.batch_size * 2, device)
    seconds["predict"] = time.perf_counter() - tick
    predictions = probs.argmax(1)
    rows, targets = [], []
    for k, i in enumerate(test_keep):
        target = test_alignment.map_label(test.labels[i])
        targets.append(target)
        rows.append({"i": i, "id": test.ids[i], "label": test.names[test.labels[i]],
                     "target": None if target is None else model_names[target],
                     "prediction": model_names[int(predictions[k])],
                     "correct": None if target is None else bool(target == int(predictions[k])),
                     "face": test_crops.status[i], "probs": [round(float(p), 6) for p in probs[k]]})
    metrics = metrics_mod.compute(targets, [int(p) for p in predictions], model_names)

    test_counts = test.counts()
    unpredictable, where_they_went = {}, {}
    for row in rows:
        if row["target"] is None:
            unpredictable[row["label"]] = unpredictable.get(row["label"], 0) + 1
            went = where_they_went.setdefault(row["label"], {})
            went[row["prediction"]] = went.get(row["prediction"], 0) + 1
    coverage = {
        "build_classes": list(build_names),
        "model_classes": list(model_names),
        "build_classes_without_training_samples": [n for n in build_names if n not in model_names],
        "model_classes_not_in_test": metrics["model_classes_not_in_test"],
        "test_classes_not_predictable": test_alignment.missing_in_model,
        "unpredictable_test_samples": dict(sorted(unpredictable.items())),
        "unpredictable_predicted_as": {k: dict(sorted(v.items())) for k, v in sorted(where_they_went.items())},
        "test_classes_without_samples": [n for n, c in zip(test.names, test_counts) if c == 0],
        "real_train_excluded": dict(sorted(real_excluded.items())),
    }
    import platform

    import torch
    import transformers

    return {
        "kind": "fer-synth-evaluation",
        "format": 1,
        "name": name,
        "command": ["build-dataset", "evaluate", *getattr(args, "argv", [])],
        "dataset": {"out": str(build.out), "name": build.name, "version": build.manifest.get("version"),
                    "fingerprint": build.fingerprint, "label_map": build.manifest["labels"]["label_map"]},
        "train": {**train.describe, "samples": len(syn_keep), "classes": dict(zip(build_names, syn_counts)),
                  "faces": train_crops.counts()},
        "train_real": None if real is None else {
            **real.describe, "samples": len(real_keep), "excluded": {**real.excluded, **real_excluded},
            "classes": dict(zip(build_names, real_counts)),
            "faces": real_crops.counts() if real_crops is not None else None},
        "test": {**test.describe, "samples": len(test_keep), "excluded": {**test.excluded,
                 **({"unreadable": len(test) - len(test_keep)} if len(test) > len(test_keep) else {})},
                 "classes": dict(zip(test.names, test_counts)), "faces": test_crops.counts()},
        "mix": {"ratio": ratio, "synthetic_per_epoch": per_epoch[0], "real_per_epoch": per_epoch[1],
                "definition": "every synthetic training sample once per epoch plus round(N_syn * ratio / "
                "(1 - ratio)) real samples taken in turn from seeded permutations of the real set; ratio 1: "
                "one pass over the real set only"},
        "backbone": {**backbone.info, "input_size": backbone.input_size, "feature_dim": backbone.dim,
                     "mean": list(backbone.mean), "std": list(backbone.std)},
        "config": {**settings.to_json(), "train_split": args.train_split, "image_size": backbone.input_size,
                   "schedule": "AdamW, cosine decay over all steps, cross-entropy; the last epoch's model is tested"},
        "faces": spec.to_json(),
        "label_alignment": {"test": test_alignment.to_json(test_counts),
                            "train_real": None if real_alignment is None else real_alignment.to_json(real.counts())},
        "coverage": coverage,
        "metrics": metrics,
        "training": history,
        "guard": guard_record,
        "guard_overridden": guard_record["overridden"],
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "device": device, "threads": torch.get_num_threads()},
        "files": {"predictions": f"{name}-predictions.jsonl", "confusion": f"{name}-confusion.png",
                  "card_fragment": f"{name}.md"},
        "_rows": rows,
    }


def _count(labels: list[int], n: int) -> list[int]:
    """How many of ``labels`` fall on each of 0..n-1."""
    return [labels.count(c) for c in range(n)]


def _model_classes(train, syn_rows, real, real_alignment, real_rows, ratio, test, test_rows=None):
    """(build class indices the model predicts, real rows used, test alignment); UserError when the model would
    have fewer than two classes or no test sample belongs to one of them."""
    from .labels import align

    syn = {train.labels[i] for i in syn_rows} if ratio < 1 else set()
    real_keep = [i for i in real_rows if real_alignment.map_label(real.labels[i]) is not None] if real else []
    if ratio > 0:
        syn |= {real_alignment.map_label(real.labels[i]) for i in real_keep}
    with_samples = sorted(syn)
    if len(with_samples) < 2:
        raise UserError(f"the training data has {len(with_samples)} class(es) with samples; a classifier needs two",
                        fix="evaluate a build with at least two released classes (or mix in real data)")
    model_names = tuple(train.names[c] for c in with_samples)
    test_alignment = align(model_names, test.names, "--test")
    rows = range(len(test)) if test_rows is None else test_rows
    if not any(test_alignment.map_label(test.labels[i]) is not None for i in rows):
        raise UserError(f"no test sample belongs to a class the model predicts (model: {', '.join(model_names)}; "
                        f"test set: {', '.join(test.names)})",
                        fix="test on a set that shares classes with the build (classes are matched by emotion name)")
    return with_samples, real_keep, test_alignment


def _write(out: Path, name: str, result: dict) -> None:
    from . import report

    rows = result.pop("_rows")
    folder = out / "eval"
    folder.mkdir(exist_ok=True)
    from builder.run import lock_build_folder

    with lock_build_folder(out):
        if (folder / f"{name}.json").exists():
            _log(f"replacing the earlier result {folder / (name + '.json')}")
        report.write_predictions(folder / result["files"]["predictions"], rows)
        m = result["metrics"]
        report.confusion_figure(m, folder / result["files"]["confusion"],
                                f"{name}: accuracy {100 * m['accuracy']:.1f}%, macro {100 * m['macro_accuracy']:.1f}%",
                                result["coverage"]["unpredictable_predicted_as"])
        (folder / result["files"]["card_fragment"]).write_text("\n".join(report.fragment(result)) + "\n")
        tmp = folder / f".{name}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, folder / f"{name}.json")
        report.update_card(out)
