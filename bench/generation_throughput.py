"""Generation throughput: the tool's generate stage against a plain diffusers pipeline, in the same run.

Stable Diffusion 1.5's architecture with random weights (``bench/sd15.py``: the
same compute as the real model) at 512x512, 25 steps, classifier-free
guidance, over batch sizes. Each run is a *variant*, a colon-separated list:

    diffusers:fp16                  StableDiffusionPipeline.from_pretrained(..., torch_dtype=float16), defaults
    stage:bf16                      the generate stage (PNGs written by its writer threads, timed)
    stage:bf16:cl:fuse              + generator.speed.channels_last, fuse_qkv
    stage:bf16:compile=MODE         + generator.speed.compile (MODE: default, reduce-overhead, max-autotune, ...)
    stage:bf16:guide=vae|taesd      + semantic guidance, x0 decoded by the VAE or a TAESD-architecture decoder
    stage:bf16:guide=taesd:window=5-15   guided steps 5..14 only
    stage:bf16:adapter              + an AU adapter (random weights, SD 1.5 layer sizes)
    stage:bf16:writer=0             PNGs written in the generating thread

Images per second exclude model loading and one warm-up batch (which pays any
compile); the clock stops after a CUDA synchronise and, for the stage, after
the last PNG is on disk. The physical limit is the measured bf16 matmul peak
over the FLOPs of an image (``count_flops``: 2 UNet forwards per step with
CFG, one VAE decode). ``--tiny`` runs the same code on the built-in tiny model
on CPU in seconds (a smoke test, not a measurement).

    python bench/generation_throughput.py --out bench/generation.json
    python bench/generation_throughput.py --variants diffusers:fp16 stage:bf16:cl:fuse --batch-sizes 8 16
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sd15 import sync  # noqa: E402

DEFAULT_VARIANTS = ["diffusers:fp16", "stage:fp16", "stage:bf16", "stage:bf16:cl:fuse",
                    "stage:bf16:cl:fuse:compile=max-autotune-no-cudagraphs", "stage:bf16:cl:fuse:guide=vae",
                    "stage:bf16:cl:fuse:guide=taesd", "stage:bf16:cl:fuse:guide=taesd:window=5-15",
                    "stage:bf16:cl:fuse:adapter"]
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def parse_variant(text: str) -> dict:
    kind, *tokens = text.split(":")
    if kind not in ("diffusers", "stage"):
        raise SystemExit(f"variant '{text}': must start with 'diffusers' or 'stage'")
    v = {"name": text, "kind": kind, "dtype": "float16", "speed": {}, "guide": None, "window": None,
         "adapter": False}
    for token in tokens:
        key, _, value = token.partition("=")
        if key in DTYPES:
            v["dtype"] = DTYPES[key]
        elif key == "cl":
            v["speed"]["channels_last"] = True
        elif key == "fuse":
            v["speed"]["fuse_qkv"] = True
        elif key == "compile":
            v["speed"]["compile"] = value or "default"
        elif key == "writer":
            v["speed"]["writer_threads"] = int(value)
        elif key == "guide" and value in ("vae", "taesd"):
            v["guide"] = value
        elif key == "window":
            start, end = value.split("-")
            v["window"] = (int(start), int(end))
        elif key == "adapter":
            v["adapter"] = True
        else:
            raise SystemExit(f"variant '{text}': unknown part '{token}'")
    if kind == "diffusers" and (v["speed"] or v["guide"] or v["adapter"]):
        raise SystemExit(f"variant '{text}': the plain pipeline takes only a dtype")
    return v


def matmul_peak_tflops(device: str) -> float | None:
    """bf16 8192^3 matrix products on random data: the mean of 10 after 3 warm-ups."""
    import torch

    if not device.startswith("cuda"):
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - start) / 1e12


class Bench:
    def __init__(self, args):
        import torch

        self.args = args
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if args.tiny:
            from builder.models.tiny_sd import ensure_tiny_pipeline

            self.model = ensure_tiny_pipeline()
        else:
            from bench.sd15 import build_sd15

            self.model = Path(args.model) if args.model else build_sd15(self.work / "sd15")

    def manifest(self, v: dict, batch: int, count: int):
        """The demo manifest pointed at the benchmark model, with the variant's settings."""
        import yaml

        from builder.manifest import Manifest

        data = yaml.safe_load((Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml").read_text())
        data["labels"]["counts"] = {"happy": count}
        gen = {"model": str(self.model), "steps": self.args.steps, "guidance_scale": 7.5, "height": self.args.size,
               "width": self.args.size, "dtype": v["dtype"], "device": self.device, "batch_size": batch,
               "speed": v["speed"]}
        if v["guide"]:
            start, end = v["window"] or (0, self.args.steps)
            gen["guidance"] = {"classifier": self.args.guide, "start_step": start, "end_step": end,
                               "decoder": str(self.taesd()) if v["guide"] == "taesd" else None}
        if v["adapter"]:
            gen["au_adapter"] = {"path": str(self.adapter(data))}
        data["generator"] = gen
        return Manifest.model_validate(data)

    def taesd(self) -> Path:
        from bench.sd15 import build_taesd

        return build_taesd(self.work / "taesd")

    def adapter(self, data: dict) -> Path:
        folder = self.work / f"au-adapter-{self.model.name}"
        if not (folder / "au_adapter_config.json").exists():
            from diffusers import UNet2DConditionModel

            from builder.manifest.au_sets import AU_SETS
            from builder.synthesis.au_adapter import AUAdapter

            unet = UNet2DConditionModel.from_pretrained(self.model / "unet", local_files_only=True)
            AUAdapter.for_unet(unet, list(AU_SETS[data["aus"]["au_set"]]), seed=0).save_pretrained(folder)
        return folder

    def run(self, v: dict, batch: int) -> dict:
        import gc

        import torch

        count = batch * self.args.batches
        prompts = [f"a close-up portrait photo of a happy person, seed {i}" for i in range(count)]
        started = time.perf_counter()
        if v["kind"] == "diffusers":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(self.model, torch_dtype=getattr(torch, v["dtype"]),
                                                           safety_checker=None, requires_safety_checker=False,
                                                           local_files_only=True).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            kwargs = dict(num_inference_steps=self.args.steps, guidance_scale=7.5, height=self.args.size,
                          width=self.args.size)
            loaded = time.perf_counter()
            pipe(prompts[:batch], **kwargs)
            warm = time.perf_counter()
            self._reset_memory()
            for i in range(self.args.batches):
                pipe(prompts[i * batch:(i + 1) * batch], generator=torch.Generator(self.device).manual_seed(i),
                     **kwargs)
            sync(self.device)
            kept = count
        else:
            from builder.core.shards import ShardStore
            from builder.expand.specs import shard_specs
            from builder.synthesis.generate import GenerateStage

            manifest = self.manifest(v, batch, count + batch)
            stage = GenerateStage(manifest.generator, manifest.aus.names, manifest.labels.names, manifest.seed)
            stage.setup()
            loaded = time.perf_counter()
            records = shard_specs(manifest, 0, shard_size=count + batch)
            with tempfile.TemporaryDirectory(dir=self.work) as tmp:
                store = ShardStore(Path(tmp))
                list(stage.process(records[:batch], store.context("generate", 0)))
                sync(self.device)
                warm = time.perf_counter()
                self._reset_memory()
                out = list(stage.process(records[batch:], store.context("generate", 1)))
                sync(self.device)
            kept = sum(r.drop is None for r in out)
            pipe = stage
        done = time.perf_counter()
        seconds = done - warm
        row = {"variant": v["name"], "batch_size": batch, "images": count, "seconds": round(seconds, 4),
               "images_per_s": round(count / seconds, 4), "load_s": round(loaded - started, 2),
               "warmup_s": round(warm - loaded, 2), "finite_images": kept, "peak_gpu_gb": self._peak_memory()}
        del pipe
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return row

    def _reset_memory(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def _peak_memory(self) -> float | None:
        import torch

        if self.device.startswith("cuda"):
            return round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return None


def summarise(result: dict) -> None:
    """Add the physical limit, each run's share of it, and each stage run's speed-up and extra cost."""
    flops, peak = result["flops"], result["matmul_peak_tflops"]
    if flops and peak:
        steps = result["settings"]["steps"]
        per_image = 2 * steps * flops["unet_forward"] + flops["vae_decode"]
        no_attention = 2 * steps * flops["unet_forward_no_attention"] + flops["vae_decode"]
        result["physical_limit_images_per_s"] = round(peak * 1e12 / per_image, 2)
        result["physical_limit_images_per_s_without_attention_flops"] = round(peak * 1e12 / no_attention, 2)
    rows = {(r["variant"], r["batch_size"]): r for r in result["runs"]}
    for r in result["runs"]:
        if result.get("physical_limit_images_per_s"):
            r["share_of_limit"] = round(r["images_per_s"] / result["physical_limit_images_per_s"], 4)
        plain = rows.get(("diffusers:fp16", r["batch_size"]))
        if plain and r["variant"].startswith("stage"):
            r["speedup_vs_diffusers_fp16"] = round(r["images_per_s"] / plain["images_per_s"], 3)
        parts = r["variant"].split(":")
        extra = [p for p in parts if p.startswith(("guide", "window", "adapter"))]
        if extra:
            base = rows.get((":".join(p for p in parts if p not in extra), r["batch_size"]))
            if base:
                r["extra_cost_vs_" + base["variant"]] = round(base["images_per_s"] / r["images_per_s"] - 1, 4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--model", help="a diffusers SD folder (default: build SD 1.5's architecture in --work)")
    parser.add_argument("--guide", default="mini-xception-fer2013", help="guidance.classifier for guide= variants")
    parser.add_argument("--device", default=None)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fer-bench"))
    parser.add_argument("--tiny", action="store_true", help="built-in tiny model on CPU: a smoke test")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 25)
    args.size = args.size or (64 if args.tiny else 512)
    args.batch_sizes = args.batch_sizes or ([1, 2] if args.tiny else [1, 4, 8, 16, 32])
    variants = [parse_variant(v) for v in (args.variants or DEFAULT_VARIANTS)]

    import diffusers
    import torch

    from bench.sd15 import count_flops
    from builder.models.diffusion import quiet_loading

    quiet_loading()
    bench = Bench(args)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["bench/generation_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(0) if bench.device.startswith("cuda") else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "cuda": torch.version.cuda},
        "settings": {"steps": args.steps, "size": args.size, "cfg": 7.5, "batches": args.batches,
                     "model": "builtin:tiny-sd" if args.tiny else "SD 1.5 architecture, random weights"},
        "matmul_peak_tflops": matmul_peak_tflops(bench.device),
        "flops": None if args.tiny else count_flops(args.size, args.size),
        "runs": [],
    }
    for v in variants:
        for batch in args.batch_sizes:
            try:
                row = bench.run(v, batch)
            except torch.OutOfMemoryError:
                row = {"variant": v["name"], "batch_size": batch, "error": "out of GPU memory"}
                torch.cuda.empty_cache()
            except Exception as exc:  # record it and go on: one failing variant must not lose the others
                row = {"variant": v["name"], "batch_size": batch, "error": f"{type(exc).__name__}: {exc}"[:500]}
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
    summarise(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
