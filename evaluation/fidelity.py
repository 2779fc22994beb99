"""``build-dataset fidelity``: how far a release's images lie from a real labelled set, in an encoder's space.

``fidelity(Fidelity(...))`` is the Python API (``builder.api.fidelity`` and the CLI call it); bad input raises
``builder.core.errors.UserError``. The run: open the released build (every split, or ``splits``) and the
reference set with the readers ``build-dataset evaluate`` uses (``evaluation.sources``), match their classes by
emotion name (``evaluation.labels``), load the encoder (``evaluation.encoders``), encode every image once, and
compute (``evaluation.distances``):

- overall: Frechet distance and KID (mean and std over subsets) between all release and all reference images;
- per class, for each class both sets have: the same two, with a KID subset size of at most the smaller class
  (a class with fewer than ``min_class_samples`` images on either side is listed as too small, without numbers);
- diversity: the mean pairwise distance of features within each class (cosine or L2), for both sets.

It writes ``OUT/fidelity/fidelity.json`` and ``OUT/fidelity/fidelity.md`` (a short table); images are used as the
encoder's processor sees them (no face alignment).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.errors import UserError
from evaluation.encoders import DEFAULT_ENCODER
from evaluation.run import LabelledSet

DIVERSITY_METRICS = ("cosine", "l2")


@dataclass(frozen=True)
class Fidelity:
    """One fidelity run. ``splits``: the release's splits to use (default: all); ``encoder``: a Hub id or a
    save_pretrained folder (``evaluation.encoders``); ``kid_subset_size``: at most this many samples per KID subset
    (smaller when a set is smaller); ``min_class_samples``: below this on either side a class gets no FD/KID;
    ``diversity``: 'cosine' or 'l2'; ``command``: how it was started, recorded in the result."""

    out: Path
    reference: LabelledSet
    splits: tuple[str, ...] = ()
    encoder: str = DEFAULT_ENCODER
    revision: str | None = None
    batch_size: int = 32
    device: str = "auto"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    min_class_samples: int = 5
    diversity: str = "cosine"
    faces: str = "whole"
    seed: int = 0
    progress: bool = True
    command: tuple[str, ...] = field(default=())

    def check(self) -> None:
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--kid-subsets", self.kid_subsets, 1),
                                 ("--kid-subset-size", self.kid_subset_size, 2),
                                 ("--min-class-samples", self.min_class_samples, 2)):
            if value < low:
                raise UserError(f"{flag} {value} is below {low}", fix=f"give {flag} >= {low}")
        if self.faces not in ("whole", "crop"):
            raise UserError(f"--faces '{self.faces}' is neither whole nor crop", fix="use whole or crop")
        if self.diversity not in DIVERSITY_METRICS:
            raise UserError(f"--diversity '{self.diversity}' is neither cosine nor l2", fix="use cosine or l2")


@dataclass
class Encoded:
    """One side's features: (N, D) float32, a class index per row (into ``names``), images that failed to read."""

    features: object
    labels: list[int]
    names: tuple[str, ...]
    unreadable: int = 0

    def rows(self, label: int) -> list[int]:
        return [i for i, c in enumerate(self.labels) if c == label]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fidelity(args: Fidelity, log=_log) -> dict:
    """The whole run (see the module docstring); returns the result written to OUT/fidelity/fidelity.json."""
    from evaluation.sources import SetSpec, open_build, open_set

    args.check()
    started = time.perf_counter()
    seconds = {}
    build = open_build(args.out)
    release = _release_sets(build, args.splits)
    ref = args.reference
    reference = open_set(SetSpec(ref.path, "reference", "--reference", ref.split, ref.image_column,
                                 ref.label_column, ref.label_map, ref.label_base))
    names = release[0].names
    alignment = _align(names, reference.names)
    seconds["open"] = time.perf_counter() - started

    from evaluation.encoders import load_encoder
    from evaluation.train import resolve_device

    tick = time.perf_counter()
    device = resolve_device(args.device)
    encoder = load_encoder(args.encoder, args.revision, device, log)
    seconds["encoder"] = time.perf_counter() - tick
    cropper = None
    if args.faces == "crop":  # both sides aligned like `evaluate` crops them (cached in OUT/eval/cache)
        from evaluation.faces import Cropper, CropSpec

        cropper = Cropper(CropSpec.for_build(build.manifest, align=True), build.out / "eval" / "cache", device, log)
    tick = time.perf_counter()
    syn = _encode(encoder, release, names, args, "release", cropper)
    seconds["features_release"] = time.perf_counter() - tick
    tick = time.perf_counter()
    real = _encode(encoder, [reference], reference.names, args, "reference", cropper)
    seconds["features_reference"] = time.perf_counter() - tick
    for side, enc, where in (("release", syn, str(build.out)), ("reference", real, str(ref.path))):
        if len(enc.labels) < 2:
            raise UserError(f"the {side} has {len(enc.labels)} readable image(s); the Frechet distance needs two",
                            file=where, fix=f"give a {side} with at least two readable images")

    tick = time.perf_counter()
    overall, per_class = _distances(syn, real, alignment, args)
    seconds["distances"] = time.perf_counter() - tick
    tick = time.perf_counter()
    diversity = _diversity(syn, real, args)
    seconds["diversity"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    result = _result(args, build, release, reference, alignment, encoder, syn, real, overall, per_class, diversity,
                     seconds)
    _write(build.out, result)
    return result


def _release_sets(build, splits: tuple[str, ...]) -> list:
    """The release's image sets, one per split (every split in the release unless ``splits`` names some)."""
    from evaluation.sources import build_split

    hf = build.out / "hf" / "dataset_dict.json"
    if hf.is_file():
        available = list(json.loads(hf.read_text()).get("splits") or [])
    else:
        available = sorted(p.stem for p in (build.out / "records").glob("*.jsonl"))
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise UserError(f"the release in '{build.out}' has no split {', '.join(unknown)} (splits: "
                        f"{', '.join(available) or 'none'})", file=str(build.out), fix="pick them with --split")
    sets = [build_split(build, s) for s in (splits or available)]
    if not sum(len(s) for s in sets):
        raise UserError(f"the release in '{build.out}' has no images", file=str(build.out),
                        fix="release a build that kept images (`build-dataset release OUT`), then measure it")
    return sets


def _align(release_names, reference_names):
    from evaluation.labels import align

    return align(release_names, reference_names, "--reference", "--reference-label-map")


def _encode(encoder, sets: list, names: tuple[str, ...], args: Fidelity, what: str, cropper=None) -> Encoded:
    """Every image of ``sets`` (whole, or its face crop with a ``cropper``) through the encoder, in batches;
    unreadable images are counted and left out."""
    import torch
    from tqdm.auto import tqdm

    from evaluation.faces import face_images

    items = ((imageset, i, image) for imageset in sets
             for i, (image, _) in enumerate(face_images(imageset, cropper)))
    chunks, labels, unreadable, images = [], [], 0, []
    with tqdm(total=sum(len(s) for s in sets), unit="img", desc=f"encode {what}", disable=not args.progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for imageset, i, image in items:
            bar.update(1)
            if image is None:
                unreadable += 1
                continue
            images.append(image)
            labels.append(imageset.labels[i])
            if len(images) == args.batch_size:
                chunks.append(encoder.encode(images))
                images = []
        if images:
            chunks.append(encoder.encode(images))
    features = torch.cat(chunks) if chunks else torch.zeros(0, encoder.dim)
    return Encoded(features, labels, tuple(names), unreadable)


def _kid(x, y, args: Fidelity) -> dict:
    from evaluation.distances import kernel_distance

    size = min(args.kid_subset_size, len(x), len(y))
    mean, std = kernel_distance(x, y, size, args.kid_subsets, args.seed)
    return {"mean": mean, "std": std, "subset_size": size, "subsets": args.kid_subsets}


def _distances(syn: Encoded, real: Encoded, alignment, args: Fidelity) -> tuple[dict, list[dict]]:
    from evaluation.distances import frechet_distance

    overall = {"fd": frechet_distance(syn.features, real.features), "kid": _kid(syn.features, real.features, args),
               "release_images": len(syn.labels), "reference_images": len(real.labels)}
    rows = []
    ref_of = {m: j for j, m in enumerate(alignment.to_model) if m is not None}  # release class -> reference class
    for c, name in enumerate(syn.names):
        syn_rows = syn.rows(c)
        j = ref_of.get(c)
        ref_rows = real.rows(j) if j is not None else []
        if not syn_rows and not ref_rows:
            continue
        row = {"class": name, "reference_class": real.names[j] if j is not None else None,
               "release_images": len(syn_rows), "reference_images": len(ref_rows),
               "fd": None, "kid": None, "status": "ok", "note": None}
        if not ref_rows:
            row.update(status="release_only", note="the reference set has no image of this class")
        elif not syn_rows:
            row.update(status="reference_only", note="the release has no image of this class")
        elif min(len(syn_rows), len(ref_rows)) < args.min_class_samples:
            small = [f"{side} has {n}" for side, n in (("release", len(syn_rows)), ("reference", len(ref_rows)))
                     if n < args.min_class_samples]
            row.update(status="too_small", note=f"{' and '.join(small)} image(s), below --min-class-samples "
                       f"{args.min_class_samples}")
        else:
            x, y = syn.features[syn_rows], real.features[ref_rows]
            row.update(fd=frechet_distance(x, y), kid=_kid(x, y, args))
        rows.append(row)
    for j, name in enumerate(real.names):
        if alignment.to_model[j] is None and real.rows(j):
            rows.append({"class": None, "reference_class": name, "release_images": 0,
                         "reference_images": len(real.rows(j)), "fd": None, "kid": None, "status": "reference_only",
                         "note": "the release's label map has no such class"})
    return overall, rows


def _diversity(syn: Encoded, real: Encoded, args: Fidelity) -> dict:
    from evaluation.distances import mean_pairwise_distance

    def side(enc: Encoded) -> dict:
        per_class = {name: mean_pairwise_distance(enc.features[enc.rows(c)], args.diversity, seed=args.seed)
                     for c, name in enumerate(enc.names) if enc.rows(c)}
        values = [v for v in per_class.values() if v is not None]
        return {"all_images": mean_pairwise_distance(enc.features, args.diversity, seed=args.seed),
                "class_mean": sum(values) / len(values) if values else None, "per_class": per_class}

    return {"metric": args.diversity, "definition": "mean over pairs i < j of the images of a class of "
            + ("1 - cosine similarity" if args.diversity == "cosine" else "the Euclidean distance")
            + " of their features (up to 2000 images per class, seeded sample above)",
            "release": side(syn), "reference": side(real)}


def _result(args, build, release, reference, alignment, encoder, syn, real, overall, per_class, diversity,
            seconds) -> dict:
    import torch
    import torchmetrics
    import transformers

    counts = (lambda enc: {n: len(enc.rows(c)) for c, n in enumerate(enc.names)})
    return {
        "kind": "fer-synth-fidelity",
        "format": 1,
        "command": list(args.command) or ["build-dataset", "fidelity", "(Python API)"],
        "dataset": {"out": str(build.out), "name": build.name, "version": build.manifest.get("version"),
                    "fingerprint": build.fingerprint, "label_map": build.manifest["labels"]["label_map"],
                    "splits": [s.describe.get("split") for s in release],
                    "read_from": release[0].describe.get("read_from")},
        "release": {"images": len(syn.labels), "unreadable": syn.unreadable, "classes": counts(syn)},
        "reference": {**reference.describe, "images": len(real.labels), "unreadable": real.unreadable,
                      "excluded": reference.excluded, "classes": counts(real)},
        "label_alignment": alignment.to_json(reference.counts()),
        "encoder": {**encoder.info, "given": args.encoder},
        "settings": {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size,
                     "kid_kernel": "(x.y / dim + 1)^3", "min_class_samples": args.min_class_samples,
                     "diversity": args.diversity, "seed": args.seed, "batch_size": args.batch_size,
                     "preprocessing": ("the encoder's image processor on aligned face crops (as `evaluate` crops them)"
                                       if args.faces == "crop" else
                                       "the encoder's image processor on whole images (no face alignment)")},
        "overall": overall,
        "per_class": per_class,
        "classes_too_small": [r["class"] for r in per_class if r["status"] == "too_small"],
        "diversity": diversity,
        "library": {"distances": f"torchmetrics {torchmetrics.__version__} (FrechetInceptionDistance, "
                    "KernelInceptionDistance on precomputed features)", "transformers": transformers.__version__,
                    "torch": torch.__version__},
        "environment": {"python": platform.python_version(), "device": encoder.device,
                        "threads": torch.get_num_threads()},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "files": {"json": "fidelity.json", "markdown": "fidelity.md"},
    }


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _kid_text(kid: dict | None) -> str:
    return "n/a" if kid is None else f"{kid['mean']:.4g} ± {kid['std']:.2g} (subsets of {kid['subset_size']})"


def markdown(result: dict) -> str:
    """The short page: overall numbers, the class table, diversity, timings."""
    o, d = result["overall"], result["diversity"]
    lines = [f"# Fidelity of {result['dataset']['name']} {result['dataset']['version'] or ''}".rstrip(), "",
             f"Encoder `{result['encoder']['given']}` ({result['encoder']['architecture']}, "
             f"{result['encoder']['feature_dim']}-d {result['encoder']['features']}); reference "
             f"`{result['reference']['source']}`; {o['release_images']} release vs {o['reference_images']} "
             "reference images.", "",
             f"- Frechet distance: **{_num(o['fd'])}**",
             f"- KID: **{_kid_text(o['kid'])}**", "",
             "FD is biased upward for small sets: compare values only at similar sizes; KID is unbiased.", "",
             f"| class | reference class | release | reference | FD | KID | diversity release | diversity "
             f"reference ({d['metric']}) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["per_class"]:
        div_syn = d["release"]["per_class"].get(r["class"]) if r["class"] else None
        div_ref = d["reference"]["per_class"].get(r["reference_class"]) if r["reference_class"] else None
        lines.append(f"| {r['class'] or '-'} | {r['reference_class'] or '-'} | {r['release_images']} | "
                     f"{r['reference_images']} | {_num(r['fd'])} | {_kid_text(r['kid'])} | {_num(div_syn)} | "
                     f"{_num(div_ref)} | {r['note'] or ''} |")
    lines += ["", f"Diversity, mean over classes: release {_num(d['release']['class_mean'])}, reference "
              f"{_num(d['reference']['class_mean'])}; over all images: release {_num(d['release']['all_images'])}, "
              f"reference {_num(d['reference']['all_images'])}.", "",
              "Seconds: " + ", ".join(f"{k} {v:g}" for k, v in result["seconds"].items()), ""]
    return "\n".join(lines)


def summary(result: dict) -> str:
    """One line: the overall numbers and where they were written."""
    o = result["overall"]
    scored = [r for r in result["per_class"] if r["fd"] is not None]
    small = result["classes_too_small"]
    return (f"fidelity ({result['encoder']['given']}): FD {_num(o['fd'])}, KID {_kid_text(o['kid'])} over "
            f"{o['release_images']} release and {o['reference_images']} reference images; {len(scored)} class(es) "
            f"scored" + (f", too small: {', '.join(small)}" if small else "")
            + f" -> {Path(result['dataset']['out']) / 'fidelity' / 'fidelity.json'}")


def _write(out: Path, result: dict) -> None:
    from builder.core.build_folder import lock_build_folder
    from builder.core.shards import write_durably

    folder = out / "fidelity"
    with lock_build_folder(out):
        folder.mkdir(exist_ok=True)
        write_durably(folder / "fidelity.json", json.dumps(result, indent=1) + "\n")
        write_durably(folder / "fidelity.md", markdown(result))
