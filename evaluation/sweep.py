"""Sweeps of ``build-dataset evaluate``: scaling curves, real + synthetic mixes, several seeds, several test sets.

A sweep trains one classifier per *training configuration* and tests each on every test set (a matrix of
training configuration x test set):

- scaling (``sizes``): nested, class-balanced subsets of the build's training split, synthetic only. Sizes are
  sample counts (``1000,5000``) or, when every value is <= 1, fractions of the usable split (``0.25,0.5,1``).
  Per seed, every class's samples are put in a seeded order and a subset of N takes the first q_c of each class,
  the quotas filled level by level (equal per class as far as each class allows; the remainder one by one in a
  seeded class order): the quotas never shrink as N grows, so every smaller subset lies inside every larger one.
  A size larger than the split is refused before anything is cropped (when unreadable images later leave fewer,
  the subset is capped and the result says so).
- mixes (``synthetic_ratios`` with ``train_real``): the whole real training set plus ratio x |real| synthetic
  images (a nested class-balanced subset, as above), every image once per epoch; ratio 0 (real only, the
  baseline) is always run, and each ratio reports its gain over it, paired by seed. (``mix`` is different: the
  fraction of real samples in every epoch of one run, ``evaluation.train``.)
- otherwise one configuration per seed: the whole split (plus ``mix`` with ``train_real``), as a single run.

Each configuration repeats with every seed of ``seeds`` (subset and training seeded by it); the summary gives
the mean and sample standard deviation (n - 1) over seeds. The model's classes are the build's classes that
have training samples anywhere in the sweep, the same head for every configuration. The overlap check runs on
every test set, and the guard once, on the backbone (every configuration trains the same weights, reloaded).
Result: ``OUT/eval/<name>.json`` (kind ``fer-synth-evaluation-sweep``, which the card's single-result section
does not read) and a figure ``<name>-scaling.png`` / ``<name>-mixes.png``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from builder.core.errors import UserError
from evaluation.run import Evaluation, _count, _log, _slug

KIND = "fer-synth-evaluation-sweep"


# -- subsets -----------------------------------------------------------------------------------------------------
def quotas(available: dict[int, int], n: int, order: list[int]) -> dict[int, int]:
    """Samples per class in a class-balanced subset of ``n``: the highest level t with sum(min(a_c, t)) <= n,
    then one more for the next classes of ``order`` that have more than t. Non-decreasing in ``n`` per class."""
    n = min(n, sum(available.values()))
    lo, hi = 0, max(available.values(), default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(a, mid) for a in available.values()) <= n:
            lo = mid
        else:
            hi = mid - 1
    out = {c: min(a, lo) for c, a in available.items()}
    extra = n - sum(out.values())
    for c in order:
        if extra == 0:
            break
        if available[c] > out[c]:
            out[c] += 1
            extra -= 1
    return out


def nested_subsets(labels, sizes, seed: int) -> dict[int, np.ndarray]:
    """Size -> positions (sorted) into ``labels`` of a class-balanced subset; nested across sizes (module doc)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 22])
    classes = sorted({int(c) for c in labels})
    ordered = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    order = [int(c) for c in rng.permutation(classes)] if classes else []
    available = {c: len(v) for c, v in ordered.items()}
    out = {}
    for n in sizes:
        q = quotas(available, int(n), order)
        rows = np.concatenate([ordered[c][:q[c]] for c in classes]) if classes else np.zeros(0, np.int64)
        out[int(n)] = np.sort(rows).astype(np.int64)
    return out


# -- configurations ------------------------------------------------------------------------------------------------
def _kind(args: Evaluation) -> str:
    return "scaling" if args.sizes else "mixes" if args.synthetic_ratios else "seeds"


def _sizes(args: Evaluation, available: int) -> list[int]:
    """Sample counts of ``--sizes`` for a split of ``available`` samples (fractions rounded), ascending."""
    if all(s <= 1 for s in args.sizes):
        return sorted({max(1, round(s * available)) for s in args.sizes})
    return sorted(int(s) for s in args.sizes)


def _ratios(args: Evaluation) -> list[float]:
    return sorted({0.0, *(float(r) for r in args.synthetic_ratios)})


def _test_keys(args: Evaluation) -> list[str]:
    keys = []
    for s in args.tests:
        key = _slug(Path(str(s.path).rstrip("/")).name + (f"-{s.split}" if s.split else ""))
        k, n = key, 2
        while k in keys:
            k, n = f"{key}-{n}", n + 1
        keys.append(k)
    return keys


def default_name(args: Evaluation) -> str:
    backbone = "ir50" if args.backbone.startswith("ir50") else Path(args.backbone.rstrip("/")).name
    keys = _test_keys(args)
    tests = keys[0] + (f"+{len(keys) - 1}" if len(keys) > 1 else "")
    return _slug(f"{backbone}-{args.mode}-{_kind(args)}-{tests}")[:100]


def _refuse_sizes(args: Evaluation, n_train: int, n_classes: int, n_real: int) -> None:
    """Sizes and ratios that the split cannot give (UserError before anything is cropped)."""
    split = f"the build's '{args.train_split}' split"
    if args.sizes:
        for n in _sizes(args, n_train):
            if n > n_train:
                raise UserError(f"--sizes {n} is larger than {split} ({n_train} samples)",
                                fix=f"give sizes up to {n_train}, or fractions of the split (0.25,0.5,1)")
            if n < n_classes:
                raise UserError(f"--sizes: a class-balanced subset of {n} cannot hold one sample of each of the "
                                f"{n_classes} classes of {split}", fix=f"give sizes of at least {n_classes}")
    for r in args.synthetic_ratios:
        if round(r * n_real) > n_train:
            raise UserError(f"--synthetic-ratios {r:g}: {round(r * n_real)} synthetic images ({r:g} x {n_real} real) "
                            f"are more than {split} holds ({n_train})",
                            fix=f"give ratios up to {n_train / max(1, n_real):.3g}")


def _stats(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


# -- the run --------------------------------------------------------------------------------------------------------
def evaluate_sweep(args: Evaluation) -> dict:
    """The whole sweep (module doc); returns the result written to ``OUT/eval/<name>.json``."""
    import torch

    from evaluation import guard, overlap
    from evaluation import metrics as metrics_mod
    from evaluation.backbones import load_backbone
    from evaluation.faces import Cropper, CropSpec
    from evaluation.labels import align
    from evaluation.sources import SetSpec, build_split, open_build, open_set
    from evaluation.train import Pool, Settings, fit, mix_counts, predict, resolve_device

    args.check()
    if not args.is_sweep:
        raise UserError("this Evaluation is a single run", fix="run it with evaluation.run.evaluate")
    started = time.perf_counter()
    seconds: dict = {}
    kind = _kind(args)
    seeds = list(args.seeds or (args.seed,))
    build = open_build(args.out)
    name = args.name or default_name(args)
    keys = _test_keys(args)
    train = build_split(build, args.train_split)
    tests = [open_set(SetSpec(s.path, "test", "--test", s.split, s.image_column, s.label_column, s.label_map,
                              s.label_base)) for s in args.tests]
    real = None
    if args.train_real is not None:
        r = args.train_real
        real = open_set(SetSpec(r.path, "real train", "--train-real", r.split, r.image_column, r.label_column,
                                r.label_map, r.label_base))
    build_names = train.names
    real_alignment = align(build_names, real.names, "--train-real") if real is not None else None
    n_real_mapped = sum(real_alignment.map_label(v) is not None for v in real.labels) if real is not None else 0
    _refuse_sizes(args, len(train), len(set(train.labels)), n_real_mapped)
    seconds["open"] = time.perf_counter() - started

    # what the configurations train on: synthetic (unless --mix 1) and real (mixes, or --mix > 0)
    uses_syn = not (kind == "seeds" and args.mix is not None and args.mix >= 1)
    uses_real = real is not None and (kind == "mixes" or (args.mix or 0) > 0)
    tick = time.perf_counter()
    hasher = overlap.Hasher(build.out / "eval" / "cache", _log)
    labels = {"train": f"the build's '{args.train_split}' split",
              "train_real": f"--train-real '{args.train_real.path}'" if real is not None else "--train-real"}
    sources = ([overlap.Source("train", train.ids, hasher.hashes(train))] if uses_syn else []) + \
        ([overlap.Source("train_real", real.ids, hasher.hashes(real))] if uses_real else [])
    overlaps = {}
    for key, spec, test in zip(keys, args.tests, tests):
        report = overlap.find(sources, test.ids, hasher.hashes(test))
        overlap.check(report, args.allow_overlap, "--test", spec.path, labels)
        report["allowed"] = args.allow_overlap
        if report["exact"] or report["near"]:
            _log(f"warning: --allow-overlap: --test '{spec.path}' overlaps the training data: "
                 f"{overlap.describe(report, labels)}")
        overlaps[key] = report
    seconds["overlap"] = time.perf_counter() - tick

    device = resolve_device(args.device)
    tick = time.perf_counter()
    torch.manual_seed(seeds[0])
    backbone = load_backbone(args.backbone, args.image_size, args.revision)
    guard_record = guard.check(backbone, build.stats, build.manifest, args.force)  # once: same weights every run
    if guard_record["overridden"]:
        _log(f"warning: --force: the evaluator is a model that {guard_record['conflicts'][0]['role']}; the result "
             "is marked guard_overridden")
    seconds["backbone"] = time.perf_counter() - tick
    hasher.save()

    spec = CropSpec.for_build(build.manifest, align=args.align)
    cropper = Cropper(spec, build.out / "eval" / "cache", device, _log)
    crop_seconds: dict = {}
    tick = time.perf_counter()
    train_crops = cropper.crops(train)
    crop_seconds["train"] = time.perf_counter() - tick
    real_crops = None
    if uses_real:
        tick = time.perf_counter()
        real_crops = cropper.crops(real)
        crop_seconds["train_real"] = time.perf_counter() - tick
    test_crops = {}
    crop_seconds["test"] = {}
    for key, test in zip(keys, tests):
        tick = time.perf_counter()
        test_crops[key] = cropper.crops(test)
        crop_seconds["test"][key] = time.perf_counter() - tick
    seconds["crops"] = crop_seconds

    syn_keep = [i for i in range(len(train)) if train_crops.status[i] != "unreadable"] if uses_syn else []
    real_keep = [i for i in range(len(real)) if (real_crops is None or real_crops.status[i] != "unreadable")
                 and real_alignment.map_label(real.labels[i]) is not None] if uses_real else []
    with_samples = sorted({train.labels[i] for i in syn_keep} |
                          {real_alignment.map_label(real.labels[i]) for i in real_keep})
    if len(with_samples) < 2:
        raise UserError(f"the training data has {len(with_samples)} class(es) with samples; a classifier needs two",
                        fix="evaluate a build with at least two released classes (or mix in real data)")
    model_names = tuple(build_names[c] for c in with_samples)
    to_model = {c: k for k, c in enumerate(with_samples)}
    alignments, test_keep = {}, {}
    for key, spec_, test in zip(keys, args.tests, tests):
        alignments[key] = align(model_names, test.names, f"--test '{spec_.path}'", "--test-label-map")
        test_keep[key] = [i for i in range(len(test)) if test_crops[key].status[i] != "unreadable"]
        if not any(alignments[key].map_label(test.labels[i]) is not None for i in test_keep[key]):
            raise UserError(f"--test '{spec_.path}': no test sample belongs to a class the model predicts (model: "
                            f"{', '.join(model_names)}; test set: {', '.join(test.names)})",
                            fix="test on a set that shares classes with the build (classes are matched by "
                            "emotion name)")

    syn_labels = np.array([to_model[train.labels[i]] for i in syn_keep], np.int64)
    syn_rows = np.array(syn_keep, np.int64)
    real_labels = np.array([to_model[real_alignment.map_label(real.labels[i])] for i in real_keep], np.int64)
    real_pool = Pool("real", real_crops.pixels, np.array(real_keep, np.int64), real_labels) if uses_real else None
    points = _points(args, kind, len(syn_keep), len(real_keep))
    head_lr = args.head_lr if args.head_lr is not None else (1e-2 if args.mode == "linear" else 1e-3)

    runs, seconds["runs"] = [], 0.0
    for s_index, seed in enumerate(seeds):
        subsets = nested_subsets(syn_labels, sorted({p["synthetic"] for p in points}), seed) \
            if kind != "seeds" else {}
        for point in points:
            tick = time.perf_counter()
            run_seconds = {}
            if runs:  # fine-tuning changed the weights: the same backbone again, seeded like the first
                torch.manual_seed(seed)
                backbone = load_backbone(args.backbone, args.image_size, args.revision)
            run_seconds["backbone"] = time.perf_counter() - tick
            if kind == "seeds":
                pick = np.arange(len(syn_rows))
            else:
                pick = subsets[point["synthetic"]]
            pools = [Pool("synthetic", train_crops.pixels, syn_rows[pick], syn_labels[pick])]
            if kind == "mixes":
                pools.append(real_pool)
                ratio = None  # the union: every image once per epoch
            elif kind == "seeds" and real_pool is not None:
                pools.append(real_pool)
                ratio = args.mix
            else:
                ratio = 0.0
            settings = Settings(args.mode, args.epochs, args.batch_size, args.lr, head_lr, args.weight_decay, seed,
                                args.flip, device)
            n_syn, n_real = len(pools[0].labels), len(pools[1].labels) if len(pools) > 1 else 0
            per_epoch = (n_syn, n_real) if ratio is None else mix_counts(n_syn, n_real, ratio)
            label = _label(kind, point, seed)
            _log(f"[{len(runs) + 1}/{len(points) * len(seeds)}] {label}: training on {per_epoch[0]} synthetic + "
                 f"{per_epoch[1]} real samples per epoch, {len(model_names)} classes, {args.epochs} epochs")
            tick = time.perf_counter()
            model, history = fit(backbone, pools, len(model_names), settings, ratio, _log)
            run_seconds["train"] = time.perf_counter() - tick
            results, run_seconds["test"] = {}, {}
            for key, test in zip(keys, tests):
                tick = time.perf_counter()
                rows = np.array(test_keep[key], np.int64)
                probs = predict(model, backbone, test_crops[key].pixels, rows, args.batch_size * 2, device)
                targets = [alignments[key].map_label(test.labels[i]) for i in test_keep[key]]
                results[key] = metrics_mod.compute(targets, [int(p) for p in probs.argmax(1)], model_names)
                run_seconds["test"][key] = time.perf_counter() - tick
            classes = _count([int(v) for v in pools[0].labels], len(model_names))
            runs.append({
                "label": label, **{k: v for k, v in point.items() if k != "key"}, "seed": seed,
                "synthetic_classes": dict(zip(model_names, classes)),
                "synthetic_per_epoch": per_epoch[0], "real_per_epoch": per_epoch[1],
                "final_loss": history[-1]["loss"], "final_train_accuracy": history[-1]["train_accuracy"],
                "results": {k: _short(m) for k, m in results.items()},
                "seconds": _round(run_seconds)})
            seconds["runs"] += sum(v if isinstance(v, float) else sum(v.values()) for v in run_seconds.values())
            del model

    summary = _summary(kind, points, seeds, keys, runs)
    import platform

    import transformers

    result = {
        "kind": KIND,
        "format": 1,
        "sweep": kind,
        "name": name,
        "command": list(args.command) or ["build-dataset", "evaluate", "(Python API)"],
        "dataset": {"out": str(build.out), "name": build.name, "version": build.manifest.get("version"),
                    "fingerprint": build.fingerprint, "label_map": build.manifest["labels"]["label_map"]},
        "definitions": {
            "scaling": "nested class-balanced subsets of the build's split (synthetic only), seeded per seed",
            "mixes": "the whole real training set plus ratio x |real| synthetic images (nested class-balanced "
                     "subset), every image once per epoch; gain = accuracy minus the real-only (ratio 0) accuracy "
                     "of the same seed",
            "seeds": "the whole split (plus --mix with --train-real), once per seed",
            "std": "sample standard deviation over seeds (n - 1; 0 with one seed)"},
        "train": {**train.describe, "samples": len(syn_keep), "faces": train_crops.counts(),
                  "classes": dict(zip(build_names, _count([train.labels[i] for i in syn_keep], len(build_names))))},
        "train_real": None if real is None else {
            **real.describe, "samples": len(real_keep), "excluded": real.excluded,
            "faces": real_crops.counts() if real_crops is not None else None},
        "mix": None if args.mix is None else {"ratio": args.mix},
        "points": points,
        "seeds": seeds,
        "model_classes": list(model_names),
        "tests": [{"key": key, **test.describe, "samples": len(test_keep[key]), "faces": test_crops[key].counts(),
                   "label_alignment": alignments[key].to_json(test.counts()), "overlap": overlaps[key]}
                  for key, test in zip(keys, tests)],
        "runs": runs,
        "summary": summary,
        "matrix": {"rows": [r["label"] for r in runs], "columns": keys,
                   "accuracy": [[r["results"][k]["accuracy"] for k in keys] for r in runs],
                   "macro_accuracy": [[r["results"][k]["macro_accuracy"] for k in keys] for r in runs]},
        "backbone": {**backbone.info, "input_size": backbone.input_size, "feature_dim": backbone.dim},
        "config": {**Settings(args.mode, args.epochs, args.batch_size, args.lr, head_lr, args.weight_decay, seeds[0],
                              args.flip, device).to_json(), "seeds": seeds, "train_split": args.train_split,
                   "image_size": backbone.input_size},
        "faces": spec.to_json(),
        "guard": guard_record,
        "guard_overridden": guard_record["overridden"],
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "device": device, "threads": torch.get_num_threads()},
        "files": {"figure": f"{name}-{kind}.png"} if kind != "seeds" else {},
    }
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = _round(seconds)
    _write(build.out, name, result)
    return result


def _points(args: Evaluation, kind: str, n_syn: int, n_real: int) -> list[dict]:
    """The configurations of one seed: {'key', 'size' | 'synthetic_ratio', 'synthetic': samples}."""
    if kind == "scaling":
        out = []
        for n in _sizes(args, n_syn):
            if n > n_syn:
                _log(f"warning: --sizes {n}: only {n_syn} training images are readable; capped at {n_syn}")
            out.append({"key": f"size {min(n, n_syn)}", "size": n, "synthetic": min(n, n_syn)})
        return out
    if kind == "mixes":
        if 0 not in args.synthetic_ratios:
            _log("--synthetic-ratios: ratio 0 (real only) added, the baseline of the gains")
        out = []
        for r in _ratios(args):
            n = round(r * n_real)
            if n > n_syn:
                _log(f"warning: --synthetic-ratios {r:g}: only {n_syn} synthetic images are readable; capped")
            out.append({"key": f"ratio {r:g}", "synthetic_ratio": r, "synthetic": min(n, n_syn)})
        return out
    return [{"key": "all", "synthetic": n_syn}]


def _label(kind: str, point: dict, seed: int) -> str:
    return f"{point['key']}, seed {seed}"


def _short(m: dict) -> dict:
    return {"accuracy": m["accuracy"], "macro_accuracy": m["macro_accuracy"], "macro_f1": m["macro_f1"],
            "samples_evaluated": m["samples_evaluated"], "samples_total": m["samples_total"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items()}, "confusion": m["confusion"]}


def _round(obj):
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    return round(obj, 3) if isinstance(obj, float) else obj


def _summary(kind: str, points: list[dict], seeds: list[int], keys: list[str], runs: list[dict]) -> list[dict]:
    """Per (configuration, test set): accuracy and macro accuracy over seeds (mean, std, values); for mixes the
    gain over ratio 0, paired by seed."""
    out = []
    for point in points:
        for key in keys:
            mine = [r for r in runs if _label(kind, point, r["seed"]) == r["label"]]
            row = {"point": point["key"], **{k: v for k, v in point.items() if k != "key"}, "test": key,
                   "seeds": [r["seed"] for r in mine],
                   "accuracy": _stats([r["results"][key]["accuracy"] for r in mine]),
                   "macro_accuracy": _stats([r["results"][key]["macro_accuracy"] for r in mine])}
            if kind == "mixes":
                base = {r["seed"]: r["results"][key] for r in runs if r.get("synthetic_ratio") == 0}
                row["gain"] = _stats([r["results"][key]["accuracy"] - base[r["seed"]]["accuracy"] for r in mine])
                row["macro_gain"] = _stats([r["results"][key]["macro_accuracy"] - base[r["seed"]]["macro_accuracy"]
                                            for r in mine])
            out.append(row)
    return out


def curve_figure(result: dict, path: Path) -> None:
    """Accuracy (solid) and macro accuracy (dashed) against size or ratio, one colour per test set, error bars
    one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evaluation.report import META

    scaling = result["sweep"] == "scaling"
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, test in enumerate(t["key"] for t in result["tests"]):
        rows = [r for r in result["summary"] if r["test"] == test]
        x = [r["synthetic"] if scaling else r["synthetic_ratio"] for r in rows]
        colour = f"C{k}"
        for metric, style, text in (("accuracy", "-", "accuracy"), ("macro_accuracy", "--", "macro")):
            ax.errorbar(x, [100 * r[metric]["mean"] for r in rows], yerr=[100 * r[metric]["std"] for r in rows],
                        fmt="o" + style, color=colour, capsize=3, markersize=4, label=f"{test} ({text})")
    if scaling and len({r["synthetic"] for r in result["summary"]}) > 1:
        xs = [r["synthetic"] for r in result["summary"]]
        if max(xs) / max(1, min(xs)) >= 10:
            ax.set_xscale("log")
    ax.set_xlabel("synthetic training images" if scaling else "synthetic images added / real training images",
                  fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    seeds = len(result["seeds"])
    ax.set_title(f"{result['name']}: {result['sweep']}, {seeds} seed{'s' if seeds > 1 else ''}"
                 + (" (mean ± std)" if seeds > 1 else ""), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=META)
    plt.close(fig)


def _write(out: Path, name: str, result: dict) -> None:
    import json

    from builder.core.build_folder import lock_build_folder
    from builder.core.shards import write_durably

    folder = out / "eval"
    folder.mkdir(exist_ok=True)
    with lock_build_folder(out):
        if (folder / f"{name}.json").exists():
            _log(f"replacing the earlier result {folder / (name + '.json')}")
        if result["files"].get("figure"):
            curve_figure(result, folder / result["files"]["figure"])
        write_durably(folder / f"{name}.json", json.dumps(result, indent=1) + "\n")


__all__ = ["KIND", "curve_figure", "default_name", "evaluate_sweep", "nested_subsets", "quotas"]
