"""FERAnno labelling throughput (images per second) per batch size and dtype, to set against generation's.

    .venv/bin/python bench/feranno_throughput.py [--model DIR] [--batch-sizes 1 8 16 32] [--dtype bfloat16 float32]
    .venv/bin/python bench/feranno_throughput.py --tiny      # CPU smoke run, seconds

Backbone: ``--model DIR`` (a diffusers Stable Diffusion folder), or by default
the random-weight SD 1.5-architecture pipeline of ``bench/sd15.py`` (written
once under ``--work``; random weights cost the same compute as the real ones).

Labeller: a FERAnno model of the shape ``build-dataset train-feranno`` makes
for that backbone (default prompt, inversion, network size), with seeded
random head weights and input statistics fitted on one image, saved with
``FERAnno.save_pretrained`` (``feranno.safetensors`` + ``feranno_config.json``,
the meta ``train.py`` writes). It is loaded with
``FERAnnoLabeller.from_pretrained`` (the label stage's loader) with the
backbone in each ``--dtype`` (``labelling.feranno.dtype``), and timed through ``FERAnnoExpert.predict``, the call
the label stage makes: a (B, 3, H, W) float tensor of crops in [0, 1], split
by the labeller into batches of ``batch_size``.

Images: seeded smooth random RGB images, written as PNG files and read back
(decode time reported on its own). Face detection and alignment, shared by
every expert of the label stage, are not part of FERAnno's cost and are not
timed.

Per (dtype, batch size): one warm-up batch (not timed), then ``--images``
images rounded up to whole batches; ``torch.cuda.synchronize()`` before every
timer read; peak GPU memory (``max_memory_allocated``) since the warm-up. A
second pass over the same images times the parts (pixels: resize to the
labeller's resolution; VAE encode; DDIM inversion, k UNet forwards; the feature
pass, one UNet forward under ``FeatureTap`` with the maps copied to the CPU;
the head; the rest: copies to the device and the expert's label mapping) by
wrapping ``curation.labelling.feranno.extract``'s functions for that pass only.
FLOPs per image (VAE encode + (k + 1) UNet forwards + head) are counted with
``torch.utils.flop_counter`` on meta-device copies of the backbone.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sd15 import sync  # noqa: E402

TINY_MODEL = "builtin:tiny-sd"
DTYPES = ("float32", "bfloat16", "float16")
PARTS = ("pixels", "vae_encode", "inversion", "feature_pass", "head", "other")


# -- arguments ----------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="diffusers Stable Diffusion folder (default: the random-weight SD 1.5 "
                   "architecture built under --work; with --tiny: builtin:tiny-sd)")
    p.add_argument("--work", type=Path, default=Path("/tmp/fer-bench"),
                   help="folder for the SD 1.5 pipeline, the labeller and the images (default /tmp/fer-bench)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feranno_throughput.json",
                   help="JSON results file (default bench/results/feranno_throughput.json)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="labeller batch sizes (default 1 8 16 32; tiny 1 2)")
    p.add_argument("--images", type=int, help="images per measurement, rounded up to whole batches "
                   "(default 64; tiny 4)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda if available)")
    p.add_argument("--dtype", nargs="+", choices=DTYPES,
                   help="backbone dtypes, each measured in turn (default bfloat16 on cuda, float32 on cpu); "
                   "manifests choose with labelling.feranno.dtype (default float32)")
    p.add_argument("--resolution", type=int, help="labeller resolution, the train-feranno config's "
                   "'resolution' (default 512; tiny 64)")
    p.add_argument("--image-size", type=int, help="side of the PNG images (default: --resolution)")
    p.add_argument("--steps", type=int, default=50, help="inversion.steps of the labeller (default 50)")
    p.add_argument("--timestep", type=int, default=200, help="inversion.timestep of the labeller (default 200)")
    p.add_argument("--label-map", default="affectnet7", help="label map of the labeller (default affectnet7)")
    p.add_argument("--hidden-dim", type=int, help="FERAnno hidden_dim (default 128, train-feranno's; tiny 32)")
    p.add_argument("--heads", type=int, help="FERAnno heads (default 4)")
    p.add_argument("--mlp-ratio", type=int, help="FERAnno mlp_ratio (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the images and the head weights")
    p.add_argument("--no-breakdown", action="store_true", help="skip the second pass that times the parts")
    p.add_argument("--generation-ips", type=float, help="generation images/s to compare with (printed)")
    p.add_argument("--tiny", action="store_true", help="smoke mode: builtin:tiny-sd at 64x64, a small head, "
                   "batch sizes 1 2, 4 images")
    args = p.parse_args(argv)
    tiny = args.tiny
    defaults = {"batch_sizes": [1, 2] if tiny else [1, 8, 16, 32], "images": 4 if tiny else 64,
                "resolution": 64 if tiny else 512, "hidden_dim": 32 if tiny else 128, "heads": 4, "mlp_ratio": 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.image_size is None:
        args.image_size = args.resolution
    if tiny and args.model is None:
        args.model = TINY_MODEL
    if min(args.batch_sizes) < 1 or args.images < 1:
        p.error("--batch-sizes and --images must be positive")
    return args


# -- helpers ------------------------------------------------------------------
def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    return f"CPU: {platform.processor() or platform.machine()}"


def make_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """n seeded smooth random RGB PNG images (8x8 noise, bicubic upsampled, a little fine noise)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        if not path.exists():
            Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def read_batch(paths):
    """PNG files -> (B, 3, H, W) float in [0, 1], as the label stage hands its crops to the experts."""
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


# -- the backbone and the labeller -------------------------------------------
def backbone(args) -> tuple[str, str]:
    """(model argument for the loaders, description)."""
    if args.model == TINY_MODEL:
        return TINY_MODEL, "builtin tiny-sd (random weights)"
    if args.model:
        return str(Path(args.model).expanduser().resolve()), "given folder"
    from bench.sd15 import build_sd15

    return str(build_sd15(args.work / "sd15").resolve()), "random-weight SD 1.5 architecture (bench/sd15.py)"


def write_labeller(args, model: str, device: str, dtype: str, paths, folder: Path) -> dict:
    """A random-head FERAnno model for ``model`` in the format ``train-feranno`` writes; returns its meta."""
    import torch

    from builder.manifest import Generator
    from builder.manifest.label_maps import LABEL_MAPS
    from builder.models.diffusion import load_pipeline
    from curation.labelling.feranno.extract import (
        ExtractSettings,
        FeatureExtractor,
        default_prompt,
    )
    from curation.labelling.feranno.model import FERAnno, FERAnnoConfig

    names = LABEL_MAPS[args.label_map]
    pipe, _, provenance = load_pipeline(Generator(model=model, device=device, dtype=dtype))
    settings = ExtractSettings(args.resolution, default_prompt(names), args.steps, args.timestep)
    extractor = FeatureExtractor(pipe, settings)
    batch = extractor(read_batch(paths[:1]))
    shapes = {"features": [list(f.shape[1:]) for f in batch["features"]],
              "attention": {f"{h}x{w}": list(a.shape[1:]) for (h, w), a in batch["attention"].items()}}
    text = extractor.text
    meta = {"label_map": args.label_map, "label_names": list(names), "base_model": model, "revision": None,
            "resolved_revision": provenance.revision, "weights_sha256": provenance.weights_sha256,
            "resolution": args.resolution, "prompt": settings.prompt,
            "inversion": {"steps": settings.steps, "timestep": settings.timestep, "t": int(batch["t"])},
            "tokens": text.shape[1], "feature_shapes": shapes, "dtype": "float32",
            "benchmark": "random head weights (bench/feranno_throughput.py), not a trained labeller"}
    config = FERAnnoConfig(feature_channels=[s[0] for s in shapes["features"]], tokens=text.shape[1],
                           text_dim=text.shape[2], num_classes=len(names), hidden_dim=args.hidden_dim,
                           heads=args.heads, mlp_ratio=args.mlp_ratio, meta=meta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        head = FERAnno(config)
    head.fit_input_stats([(batch["features"], batch["attention"])])
    head.save_pretrained(folder)
    flops = flops_per_image(pipe, extractor, head, batch)
    del pipe, extractor
    free_memory(device)
    return {"meta": meta, "flops": flops, "config": {k: v for k, v in vars(config).items() if k != "meta"}}


def load_labeller(folder: Path, device: str, dtype: str, batch_size: int = 8):
    """(FERAnnoLabeller, how it was loaded): ``from_pretrained``, the label stage's loader
    (``labelling.feranno.dtype`` and ``batch_size``)."""
    from curation.labelling.feranno.labeller import FERAnnoLabeller

    return (FERAnnoLabeller.from_pretrained(folder, device, batch_size, dtype),
            f"FERAnnoLabeller.from_pretrained (label stage path), backbone {dtype}")


def free_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def flops_per_image(pipe, extractor, head, batch) -> dict:
    """FLOPs per image (batch 1) of the VAE encode, one UNet forward and the head; the total for k inversion
    steps + 1 feature pass."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from curation.labelling.feranno.inversion import schedule

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    s = extractor.settings
    k = len(schedule(pipe, s.steps, s.timestep))
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    with torch.device("meta"), torch.no_grad():
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
        vae = AutoencoderKL.from_config(pipe.vae.config)
        latents = torch.empty(1, pipe.unet.config.in_channels, s.resolution // scale, s.resolution // scale)
        context = torch.empty(1, *extractor._text.shape[1:])
        unet_forward = count(lambda: unet(latents, torch.tensor([s.timestep]), encoder_hidden_states=context))
        vae_encode = count(lambda: vae.encode(torch.empty(1, 3, s.resolution, s.resolution)))
    with torch.no_grad():
        head_flops = count(lambda: head([f[:1] for f in batch["features"]],
                                        {hw: a[:1] for hw, a in batch["attention"].items()}, extractor.text))
    return {"vae_encode": vae_encode, "unet_forward": unet_forward, "inversion_unet_forwards": k,
            "feature_unet_forwards": 1, "head": head_flops,
            "total": vae_encode + (k + 1) * unet_forward + head_flops, "resolution": s.resolution}


# -- timing -------------------------------------------------------------------
class Parts:
    """Wraps ``curation.labelling.feranno.extract``'s steps and the labeller's extractor and head for one pass;
    ``seconds`` per part (synchronised)."""

    def __init__(self, labeller, device: str):
        self.labeller, self.device = labeller, device
        self.seconds = dict.fromkeys(PARTS + ("extractor",), 0.0)

    def timed(self, name: str, fn):
        def wrapper(*a, **kw):
            sync(self.device)
            started = time.perf_counter()
            out = fn(*a, **kw)
            sync(self.device)
            self.seconds[name] += time.perf_counter() - started
            return out
        return wrapper

    @contextlib.contextmanager
    def patched(self):
        from curation.labelling.feranno import extract

        saved = {name: getattr(extract, name) for name in ("to_pixels", "encode", "invert_to")}
        extractor, model = self.labeller.extractor, self.labeller.model
        extract.to_pixels = self.timed("pixels", saved["to_pixels"])
        extract.encode = self.timed("vae_encode", saved["encode"])
        extract.invert_to = self.timed("inversion", saved["invert_to"])
        self.labeller.extractor = _Proxy(extractor, self.timed("extractor", extractor.__call__))
        model.predict_proba = self.timed("head", model.predict_proba)
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(extract, name, fn)
            self.labeller.extractor = extractor
            del model.predict_proba

    def per_image(self, total: float, n: int) -> dict:
        s = self.seconds
        parts = {"pixels": s["pixels"], "vae_encode": s["vae_encode"], "inversion": s["inversion"],
                 "feature_pass": s["extractor"] - s["pixels"] - s["vae_encode"] - s["inversion"],
                 "head": s["head"], "other": total - s["extractor"] - s["head"]}
        return {k: v / n for k, v in parts.items()}


class _Proxy:
    """The extractor with a timed ``__call__`` (``text`` and the rest read through)."""

    def __init__(self, inner, call):
        self._inner, self._call = inner, call

    def __call__(self, images, **kwargs):
        return self._call(images, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def measure(expert, labeller, label_names, paths, batch_size: int, n_images: int, device: str,
            breakdown: bool) -> tuple[dict, np.ndarray]:
    import torch

    n = math.ceil(n_images / batch_size) * batch_size
    chosen = [paths[i % len(paths)] for i in range(n)]
    labeller.batch_size = batch_size
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    expert.predict(read_batch(chosen[:batch_size]), label_names)  # warm-up, not timed
    sync(device)

    started = time.perf_counter()
    crops = read_batch(chosen)
    read_seconds = time.perf_counter() - started
    sync(device)
    started = time.perf_counter()
    probs = expert.predict(crops, label_names)
    sync(device)
    seconds = time.perf_counter() - started
    row = {"batch_size": batch_size, "images": n, "batches": n // batch_size, "seconds": seconds,
           "images_per_s": n / seconds, "s_per_image": seconds / n, "read_s_per_image": read_seconds / n,
           "images_per_s_with_read": n / (seconds + read_seconds)}
    if device.startswith("cuda"):
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    sums = probs.sum(1)
    row["probabilities"] = {"rows": int(probs.shape[0]), "classes": int(probs.shape[1]),
                            "all_finite": bool(np.isfinite(probs).all()),
                            "max_abs_sum_error": float(np.abs(sums - 1).max()) if len(sums) else None}
    if breakdown:
        parts = Parts(labeller, device)
        with parts.patched():
            sync(device)
            started = time.perf_counter()
            expert.predict(crops, label_names)
            sync(device)
            total = time.perf_counter() - started
        row["breakdown"] = {"seconds": total, "s_per_image": parts.per_image(total, n)}
    return row, probs


# -- main ---------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    import diffusers
    import torch

    from builder.models.diffusion import resolve_device
    from curation.labelling.experts import FERAnnoExpert

    device = resolve_device(args.device)  # a ModelLoadError (exit 2) when the GPU asked for is absent
    dtypes = args.dtype or (["bfloat16"] if device.startswith("cuda") else ["float32"])
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, kind = backbone(args)
    n_files = max(math.ceil(args.images / b) * b for b in args.batch_sizes)
    paths = make_images(args.work / f"images-{args.image_size}-seed{args.seed}", n_files, args.image_size, args.seed)
    tag = "tiny" if model == TINY_MODEL else "backbone"
    folder = args.work / f"feranno-{tag}-r{args.resolution}-h{args.hidden_dim}"
    labeller_info = write_labeller(args, model, device, dtypes[0], paths, folder)
    setup_seconds = time.perf_counter() - started
    meta, flops = labeller_info["meta"], labeller_info["flops"]

    result = {
        "benchmark": "feranno_throughput",
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else
        shlex.join(["bench/feranno_throughput.py", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
                     if torch.backends.cudnn.is_available() else None},
        "device": device, "device_name": device_name(device), "torch_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "backbone": {"model": model, "kind": kind, "weights_sha256": meta["weights_sha256"]},
        "labeller": {"folder": str(folder), "resolution": meta["resolution"], "prompt": meta["prompt"],
                     "tokens": meta["tokens"], "inversion": meta["inversion"],
                     "feature_shapes": meta["feature_shapes"], "network": labeller_info["config"],
                     "label_names": meta["label_names"]},
        "images": {"folder": str(paths[0].parent), "size": args.image_size, "files": len(paths),
                   "per_measurement": args.images},
        "flops_per_image": flops, "setup_seconds": setup_seconds, "runs": [],
    }
    if args.generation_ips:
        result["generation_images_per_s"] = args.generation_ips

    for dtype in dtypes:
        free_memory(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        labeller, loader = load_labeller(folder, device, dtype)
        expert = FERAnnoExpert(labeller, 1.0)
        run = {"dtype": dtype, "loader": loader, "load_seconds": time.perf_counter() - started, "batches": []}
        if device.startswith("cuda"):
            run["weights_memory_gb"] = torch.cuda.memory_allocated(device) / 2**30
        first = None
        for batch_size in args.batch_sizes:
            row, probs = measure(expert, labeller, labeller.label_names, paths, batch_size, args.images, device,
                                 not args.no_breakdown)
            row["tflops_per_s"] = flops["total"] * row["images_per_s"] / 1e12
            if first is None:
                first = (batch_size, probs)
            else:
                m = min(len(probs), len(first[1]))
                row["probabilities"][f"max_abs_diff_vs_batch_{first[0]}"] = float(np.abs(probs[:m] - first[1][:m]).max())
            run["batches"].append(row)
        result["runs"].append(run)
        del expert, labeller
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nresults: {args.out}")
    return result


def table(result: dict) -> str:
    flops = result["flops_per_image"]
    lines = [f"FERAnno labelling throughput on {result['device_name']} ({result['device']}); backbone "
             f"{result['backbone']['kind']}; resolution {flops['resolution']}; "
             f"{flops['inversion_unet_forwards']} inversion + 1 feature UNet forwards; "
             f"{flops['total'] / 1e12:.3f} TFLOP per image", "",
             "| dtype | batch | images | img/s | ms/img | pixels | vae | inversion | features | head | other "
             "| peak GB | TFLOP/s |", "|" + "---|" * 13]
    for run in result["runs"]:
        for row in run["batches"]:
            parts = row.get("breakdown", {}).get("s_per_image", {})
            cells = [run["dtype"], row["batch_size"], row["images"], f"{row['images_per_s']:.2f}",
                     f"{row['s_per_image'] * 1e3:.1f}", *(f"{parts[p] * 1e3:.1f}" if p in parts else "" for p in PARTS),
                     f"{row['peak_memory_gb']:.2f}" if "peak_memory_gb" in row else "", f"{row['tflops_per_s']:.2f}"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("\npixels ... other: ms per image in a second pass with the parts timed (synchronised); "
                 "peak GB: torch.cuda.max_memory_allocated; TFLOP/s: FLOPs per image x img/s")
    generation = result.get("generation_images_per_s")
    if generation:
        lines.append("")
        for run in result["runs"]:
            best = max(run["batches"], key=lambda row: row["images_per_s"])
            lines.append(f"{run['dtype']}: best {best['images_per_s']:.2f} img/s (batch {best['batch_size']}) = "
                         f"{best['images_per_s'] / generation:.2f}x generation's {generation:.2f} img/s "
                         "(target: >= 2x)")
    return "\n".join(lines)


if __name__ == "__main__":
    from builder.core.errors import UserError

    try:
        main()
    except UserError as exc:  # e.g. --dtype bfloat16 on the CPU, a folder that is not a pipeline
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
