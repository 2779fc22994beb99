"""``build-dataset evaluate``: train a classifier on a released build and test it on a real labelled set.

``evaluate(Evaluation(...))`` is the Python API (``builder.api.evaluate`` and the CLI call it); bad input
raises ``builder.core.errors.UserError``. The run: open the released build and the real sets, align their label
maps by emotion name, check that the test set does not overlap the training data (``evaluation.overlap``), load the
backbone, check the guard, crop the faces, train (seeded), predict the test set,
and write ``OUT/eval/<name>.json``, the predictions and the confusion figure (the card's section is written by
``cards.evaluation_section``).
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_BACKBONE = "microsoft/resnet-18"


@dataclass(frozen=True)
class LabelledSet:
    """A real labelled set: a dataset saved with ``save_to_disk``, or an image folder ``class_name/*.jpg``.

    ``label_map``: the class order of integer labels or numbered class folders (affectnet7, affectnet8, rafdb,
    fer2013, or names separated by commas; default: the ClassLabel or folder names); ``label_base`` 1 when the
    integers count from 1 (RAF-DB's files).
    """

    path: Path
    split: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    label_map: str | None = None
    label_base: int = 0


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run. ``mix``: the fraction of real samples per epoch (0: synthetic only, 1: real only),
    with ``train_real``; ``backbone``: a Hub id, a save_pretrained folder, or ``ir50[:CHECKPOINT]``; ``mode``:
    'finetune' or 'linear'; ``head_lr``: default 1e-3 fine-tuning, 1e-2 linear; ``image_size``: default the
    backbone's own; ``align``: detect and align faces (False for pre-aligned sets: centre crops); ``force``:
    evaluate even with the model that guided or labelled the build (the result is marked guard_overridden);
    ``allow_overlap``: evaluate even when test images are exact or near duplicates of training images (refused
    by default; the result and the card report the overlap either way); ``name``: the result's file name
    (default backbone-mode-testset[-mixR]); ``command``: how it was started, recorded in the result."""

    out: Path
    test: LabelledSet
    train_split: str = "train"
    train_real: LabelledSet | None = None
    mix: float | None = None
    backbone: str = DEFAULT_BACKBONE
    revision: str | None = None
    mode: str = "finetune"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float | None = None
    weight_decay: float = 1e-4
    image_size: int | None = None
    align: bool = True
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    force: bool = False
    allow_overlap: bool = False
    more_tests: tuple[LabelledSet, ...] = ()
    sizes: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    synthetic_ratios: tuple[float, ...] = ()
    command: tuple[str, ...] = field(default=())

    @property
    def tests(self) -> tuple[LabelledSet, ...]:
        return (self.test, *self.more_tests)

    @property
    def is_sweep(self) -> bool:
        """A sweep (``evaluation.sweep``): sizes, synthetic ratios, several seeds or several test sets."""
        return bool(self.sizes or self.synthetic_ratios or len(self.seeds) > 1 or self.more_tests)

    def check(self) -> None:
        """Refuse inconsistent settings (``UserError``), before anything is opened."""
        if (self.train_real is None) != (self.mix is None) and not self.synthetic_ratios:
            raise UserError("--train-real and --mix go together" if self.train_real is None else
                            "--train-real needs --mix (the fraction of real samples per epoch)",
                            fix="give both --train-real PATH and --mix RATIO, or neither (synthetic only)")
        if self.mix is not None and not 0 <= self.mix <= 1:
            raise UserError(f"--mix {self.mix:g} is not between 0 and 1", fix="0: synthetic only, 1: real only")
        if self.mode not in ("finetune", "linear"):
            raise UserError(f"mode '{self.mode}' is neither finetune nor linear", fix="use finetune or linear")
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 2),
                                 ("--image-size", self.image_size or 16, 16)):
            if value < low:
                raise UserError(f"{flag} {value} is below {low}", fix=f"give {flag} >= {low}")
        for flag, value in (("--lr", self.lr), ("--head-lr", self.head_lr if self.head_lr is not None else 1.0)):
            if not value > 0:
                raise UserError(f"{flag} must be positive", fix=f"give {flag} > 0")
        self._check_sweep()
        if self.name is not None and not NAME.match(self.name):
            raise UserError(f"--name '{self.name}' is not a plain file name",
                            fix="use letters, digits, '.', '_' and '-' (up to 100)")

    def _check_sweep(self) -> None:
        """Refuse inconsistent sweep settings (``--sizes``, ``--seeds``, ``--synthetic-ratios``)."""
        if self.sizes and self.synthetic_ratios:
            raise UserError("--sizes and --synthetic-ratios exclude each other",
                            fix="--sizes: synthetic-only scaling; --synthetic-ratios: real plus synthetic (run twice)")
        if self.sizes and self.train_real is not None:
            raise UserError("--sizes trains on synthetic subsets only; it does not take --train-real / --mix",
                            fix="drop --train-real and --mix, or use --train-real R --synthetic-ratios ...")
        if self.synthetic_ratios and self.train_real is None:
            raise UserError("--synthetic-ratios needs --train-real (the fixed real part the synthetic images are "
                            "added to)", fix="give --train-real PATH, or use --sizes for synthetic-only scaling")
        if self.synthetic_ratios and self.mix is not None:
            raise UserError("--synthetic-ratios and --mix exclude each other (--mix: the fraction of real samples "
                            "per epoch of one run; --synthetic-ratios: synthetic images added = ratio x |real|)",
                            fix="drop --mix (with --synthetic-ratios, --train-real needs no --mix)")
        for size in self.sizes:
            if not size > 0:
                raise UserError(f"--sizes: a size of {size:g} trains on nothing",
                                fix="give sizes above 0: sample counts (1000,5000) or fractions of the split "
                                "(0.25,0.5,1)")
        if self.sizes and any(s <= 1 for s in self.sizes) and any(s > 1 for s in self.sizes):
            raise UserError(f"--sizes {','.join(f'{s:g}' for s in self.sizes)} mixes fractions (<= 1) and sample "
                            "counts", fix="give either counts (1000,5000,20000) or fractions (0.25,0.5,1)")
        for size in self.sizes:
            if size > 1 and size != int(size):
                raise UserError(f"--sizes: {size:g} is neither a whole number of samples nor a fraction in (0, 1]",
                                fix="give whole sample counts (1000,5000) or fractions (0.25,0.5,1)")
        for ratio in self.synthetic_ratios:
            if not ratio >= 0 or ratio != ratio or ratio == float("inf"):
                raise UserError(f"--synthetic-ratios: {ratio:g} is negative or not finite",
                                fix="give ratios >= 0 (synthetic images added = ratio x the real training set; "
                                "0: real only)")
        for flag, values in (("--sizes", self.sizes), ("--seeds", self.seeds),
                             ("--synthetic-ratios", self.synthetic_ratios)):
            if len(set(values)) < len(values):
                raise UserError(f"{flag} repeats a value ({','.join(f'{v:g}' for v in values)})",
                                fix=f"give each {flag[2:-1]} once")

    def default_name(self) -> str:
        backbone = "ir50" if self.backbone.startswith("ir50") else Path(self.backbone.rstrip("/")).name
        test = Path(str(self.test.path).rstrip("/")).name + (f"-{self.test.split}" if self.test.split else "")
        name = f"{backbone}-{self.mode}-{test}" + (f"-mix{self.mix:g}" if self.train_real is not None else "")
        return _slug(name)[:100]


def numbers(value, flag: str, kind: type = float) -> tuple:
    """``--sizes`` / ``--seeds`` / ``--synthetic-ratios``: '1000,5000' (or a sequence) as a tuple of ``kind``;
    UserError naming ``flag`` for anything that is not a number (an integer for ``int``)."""
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            number = kind(item) if kind is float or not isinstance(item, str) else int(item, 10)
            if kind is int and number != float(item):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{flag} '{value if isinstance(value, str) else ','.join(map(str, items))}': "
                            f"'{item}' is not {'an integer' if kind is int else 'a number'}",
                            fix=f"give {flag} as numbers separated by commas, e.g. "
                            + {"--sizes": "1000,5000,20000 or 0.25,0.5,1", "--seeds": "0,1,2"}.get(
                                flag, "0,0.25,0.5,1")) from None
        out.append(number)
    if not out:
        raise UserError(f"{flag} is empty", fix=f"give {flag} as numbers separated by commas")
    return tuple(out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "eval"


def evaluate(args: Evaluation) -> dict:
    """The whole run (see the module docstring); returns the result dict written to OUT/eval/<name>.json."""
    from evaluation.sources import SetSpec, build_split, open_build, open_set

    args.check()
    if args.is_sweep:
        raise UserError("this Evaluation is a sweep (sizes, synthetic ratios, several seeds or test sets)",
                        fix="run it with evaluation.sweep.evaluate_sweep (builder.api.evaluate picks the right one)")
    if args.seeds:  # one seed: a single run with it
        from dataclasses import replace

        args = replace(args, seed=args.seeds[0], seeds=())
    started = time.perf_counter()
    seconds = {}
    build = open_build(args.out)
    name = args.name or args.default_name()
    train = build_split(build, args.train_split)
    test = open_set(SetSpec(args.test.path, "test", "--test", args.test.split, args.test.image_column,
                            args.test.label_column, args.test.label_map, args.test.label_base))
    real = None
    if args.train_real is not None:
        real = open_set(SetSpec(args.train_real.path, "real train", "--train-real", args.train_real.split,
                                args.train_real.image_column, args.train_real.label_column,
                                args.train_real.label_map, args.train_real.label_base))
    seconds["open"] = time.perf_counter() - started
    tick = time.perf_counter()
    overlap_report, hasher = _overlap(args, build, train, test, real)
    seconds["overlap"] = time.perf_counter() - tick

    import torch

    from evaluation import guard
    from evaluation.backbones import load_backbone
    from evaluation.train import resolve_device

    device = resolve_device(args.device)
    tick = time.perf_counter()
    torch.manual_seed(args.seed)  # weights a checkpoint lacks (a random IR-50, a new pooler) are seeded too
    backbone = load_backbone(args.backbone, args.image_size, args.revision)
    guard_record = guard.check(backbone, build.stats, build.manifest, args.force)
    if guard_record["overridden"]:
        _log(f"warning: --force: the evaluator is a model that {guard_record['conflicts'][0]['role']}; the result "
             "is marked guard_overridden")
    seconds["backbone"] = time.perf_counter() - tick
    hasher.save()  # every check passed: the hashes join the crop cache

    result = _run(args, build, name, train, test, real, backbone, device, guard_record, seconds)
    result["overlap"] = overlap_report
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    _write(build.out, name, result)
    m = result["metrics"]
    print(f"{name}: accuracy {m['accuracy']:.4f}, macro accuracy {m['macro_accuracy']:.4f}, macro F1 "
          f"{m['macro_f1']:.4f} over {len(m['evaluated_classes'])} classes ({m['samples_evaluated']} of "
          f"{m['samples_total']} test samples) -> {build.out / 'eval' / (name + '.json')}")
    return result


def _overlap(args, build, train, test, real):
    """The test set's overlap with what the model trains on (the build's split unless --mix 1, the real set
    when mixed in), refused unless --allow-overlap; (report, the Hasher holding hashes to cache)."""
    from evaluation import overlap

    ratio = args.mix if real is not None else 0.0
    hasher = overlap.Hasher(build.out / "eval" / "cache", _log)
    labels = {"train": f"the build's '{args.train_split}' split",
              "train_real": f"--train-real '{args.train_real.path}'" if real is not None else "--train-real"}
    sources = []
    if ratio < 1:
        sources.append(overlap.Source("train", train.ids, hasher.hashes(train)))
    if real is not None and ratio > 0:
        sources.append(overlap.Source("train_real", real.ids, hasher.hashes(real)))
    report = overlap.find(sources, test.ids, hasher.hashes(test))
    overlap.check(report, args.allow_overlap, "--test", args.test.path, labels)
    report["allowed"] = args.allow_overlap
    if report["exact"] or report["near"]:
        _log(f"warning: --allow-overlap: the test set overlaps the training data: {overlap.describe(report, labels)}")
    return report, hasher


def _run(args, build, name, train, test, real, backbone, device, guard_record, seconds) -> dict:
    import numpy as np

    from evaluation import metrics as metrics_mod
    from evaluation.faces import Cropper, CropSpec
    from evaluation.labels import align
    from evaluation.train import Pool, Settings, fit, mix_counts, predict

    ratio = args.mix if real is not None else 0.0
    build_names = train.names
    real_alignment = align(build_names, real.names, "--train-real") if real is not None else None
    # the label checks first (before any face is cropped), then again without unreadable images
    _model_classes(train, range(len(train)), real, real_alignment, range(len(real or ())), ratio, test)

    spec = CropSpec.for_build(build.manifest, align=args.align)
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
                        args.weight_decay, args.seed, args.flip, device)
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
        "command": list(args.command) or ["build-dataset", "evaluate", "(Python API)"],
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
    from evaluation.labels import align

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
    from builder.core.build_folder import lock_build_folder
    from builder.core.shards import write_durably
    from evaluation import report

    rows = result.pop("_rows")
    folder = out / "eval"
    folder.mkdir(exist_ok=True)
    with lock_build_folder(out):
        if (folder / f"{name}.json").exists():
            _log(f"replacing the earlier result {folder / (name + '.json')}")
        report.write_predictions(folder / result["files"]["predictions"], rows)
        m = result["metrics"]
        report.confusion_figure(m, folder / result["files"]["confusion"],
                                f"{name}: accuracy {100 * m['accuracy']:.1f}%, macro {100 * m['macro_accuracy']:.1f}%",
                                result["coverage"]["unpredictable_predicted_as"])
        write_durably(folder / f"{name}.json", json.dumps(result, indent=1) + "\n")
