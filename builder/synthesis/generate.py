"""The generation stage: sample specs in, PNG images out, with diffusers."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from builder.core.errors import UserError
from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources
from builder.manifest import Generator


def to_uint8(image):
    """float HxWx3 in [0, 1] -> uint8, rounded as diffusers' numpy_to_pil does."""
    import numpy as np

    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class GenerateStage(Stage):
    """Text-to-image generation, one seeded generator per sample.

    Each sample's initial noise comes from its own CPU ``torch.Generator``
    seeded from its spec, so an image does not depend on the batch or shard it
    lands in (up to float rounding across batch sizes) nor on the device.
    Images whose decoded pixels are not finite (fp16 overflow) are dropped as
    ``nonfinite_output``. Each record gets ``scores["prompt_tokens"]`` (text
    encoder tokens, before truncation to ``max_prompt_tokens``).

    LoRAs (``generator.lora``) are checked against the loaded pipeline and
    loaded in ``setup`` before anything else touches it (``builder.models.lora``);
    their paths, sha256s and scales are part of ``meta``, so a resume with a
    changed LoRA file is refused like one with changed model files.

    With ``speed.compile`` on, a shard's last, smaller batch is padded to
    ``batch_size`` with repeats of its last sample (their images discarded):
    compiled graphs and CUDA graphs are specialised to the batch shape, and a
    new shape means compiling again, for minutes with ``max-autotune``.
    """

    name = "generate"
    head_columns = (
        Column("au", "aus", "the AU intensity targets (FACS 0-5) the sample was drawn with, one named float per AU",
               lambda r, meta: r.au),
        Column("prompt", "string", "the text prompt", lambda r, meta: r.prompt),
        Column("negative_prompt", "string", "the negative prompt", lambda r, meta: r.negative_prompt),
        Column("seed", "int64", "the seed of the sample's starting noise", lambda r, meta: r.seed),
        Column("sample_id", "string", "the sample's id (dataset name and index)", lambda r, meta: r.sample_id),
    )
    provenance_columns = (
        Column("generator_model", "string", "the generator (Hub id, folder or built-in)",
               lambda r, meta: meta["provenance"]["model"]),
        Column("generator_revision", "string", "its revision", lambda r, meta: meta["provenance"]["revision"]),
        Column("generator_weights_sha256", "string", "sha256 over its weight files",
               lambda r, meta: meta["provenance"]["weights_sha256"]),
    )
    @property
    def resources(self) -> Resources:
        return device_resources(self.spec.device)

    def __init__(self, spec: Generator, au_names: tuple[str, ...] = (), label_names: tuple[str, ...] = (),
                 seed: int = 0, trust_remote_code: bool = False, axes: tuple[str, ...] = ()):
        self.spec = spec
        self.axes = tuple(axes)
        self.trust_remote_code = trust_remote_code
        self.seed = seed
        self.layout = None
        self.au_names = tuple(au_names)
        self.label_names = tuple(label_names)
        self.pipe = None
        self.provenance = None
        self.adapter = None
        self.adapter_provenance = None
        self.lora_provenance: list[dict] | None = None
        self.guide = None
        self.guide_provenance = None
        self.guide_targets: dict[int, int | None] = {}
        self.guide_decoder = None
        self.speedups: list[str] = []
        self.fixed_batch = False  # pad short batches to batch_size (set when compiled)

    def dataset_columns(self) -> tuple[Column, ...]:
        """The generation columns, one per prompt axis, the layout reference when used, the provenance."""
        axes = tuple(Column(axis, "string", f"the prompt's '{axis}' value",
                            lambda r, meta, axis=axis: r.attributes.get(axis)) for axis in self.axes)
        layout = (Column("layout_reference", "string", "the reference image the layout was inverted from",
                         lambda r, meta: r.attributes.get("layout_reference")),) if self.spec.layout else ()
        return self.head_columns + axes + layout + self.provenance_columns

    def setup(self) -> None:
        from builder.models.diffusion import load_pipeline
        from builder.synthesis.speed import apply_compile, apply_layout

        self.pipe, self.dtype, self.provenance = load_pipeline(self.spec)
        lora_speedups = self._setup_loras() if self.spec.lora else []
        self.speedups = lora_speedups + apply_layout(self.pipe, self.spec.speed)
        if self.spec.au_adapter is not None:
            from builder.synthesis.au_adapter import attach_au_adapter

            self.adapter, self.adapter_provenance = attach_au_adapter(self.pipe, self.spec.au_adapter, self.au_names)
        if self.spec.guidance is not None:
            self._setup_guide()
        if self.spec.layout is not None:
            from builder.synthesis.layout import LayoutSource

            spec = self.spec
            self.layout = LayoutSource(spec.layout, self.pipe, spec.steps, spec.height, spec.width, self.seed)
        extra = (self.guide_decoder.decoder,) if self.guide_decoder is not None else ()
        self.speedups += apply_compile(self.pipe, self.spec.speed, extra)
        self.fixed_batch = self.spec.speed.compile != "off"

    def _setup_loras(self) -> list[str]:
        """Check every LoRA against the loaded pipeline and load it, before the AU adapter attaches (its processors
        wrap the layers' own, LoRA included) and before fused projections (``speed.fuse_qkv`` concatenates the q,
        k and v weights, which must hold the LoRAs by then, so it fuses them too: the same images up to float
        rounding, like every speed setting). Returns what it applied beyond the manifest, for ``runtime``."""
        from builder.models.lora import apply_loras

        spec = self.spec
        fuse = spec.fuse_lora or spec.speed.fuse_qkv
        self.lora_provenance = apply_loras(self.pipe, spec.lora, fuse=fuse, model=spec.model)
        return ["fuse_lora"] if fuse and not spec.fuse_lora else []

    def _setup_guide(self) -> None:
        from builder.synthesis.guidance import load_guide

        self.guide, self.guide_targets, self.guide_decoder, self.guide_provenance = load_guide(
            self.spec.guidance, self.pipe, self.label_names, self.trust_remote_code)
        if self.guide_provenance["end_step"] is None:
            self.guide_provenance["end_step"] = self.spec.steps

    def meta(self) -> dict:
        if self.provenance is None:
            return {}
        return {
            "provenance": self.provenance.to_dict(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_prompt_tokens": int(self.pipe.tokenizer.model_max_length),
            "au_adapter": self.adapter_provenance,
            "guidance": self.guide_provenance,
            "layout": self.layout.meta if self.layout else None,
            **({"lora": self.lora_provenance} if self.lora_provenance else {}),  # builds without LoRAs keep their meta
        }

    def runtime(self) -> dict:
        from builder.synthesis.speed import attention_backend

        if self.pipe is None:
            return {}
        return {"device": str(self.pipe.unet.device), "speed": self.speedups, "attention": attention_backend(self.pipe),
                "batch_size": self.spec.batch_size, "fixed_batch": self.fixed_batch,
                "writer_threads": self.spec.speed.writer_threads}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        """Batches in order; a batch's PNGs are encoded on the writer threads while the next batch denoises,
        and its records are yielded once their files are written."""
        import numpy as np

        from builder.synthesis.speed import ImageWriter

        size = self.spec.batch_size
        writer = ImageWriter(self.spec.speed.writer_threads, _write_png)
        waiting: list[tuple[Record, object]] = []
        try:
            for start in range(0, len(records), size):
                batch = records[start : start + size]
                token_counts = [len(ids) for ids in self.pipe.tokenizer([r.prompt for r in batch]).input_ids]
                if self.layout is not None:
                    for record in batch:
                        record.attributes["layout_reference"] = self.layout.reference(record.index)
                written = []
                padding = [batch[-1]] * (size - len(batch)) if self.fixed_batch else []
                images = self.generate(batch + padding)[: len(batch)]
                for record, pixels, tokens in zip(batch, images, token_counts):
                    record.scores["prompt_tokens"] = tokens
                    done = None
                    if not np.isfinite(pixels).all():
                        record.drop = Drop(self.name, "nonfinite_output", "decoded image has NaN or inf pixels")
                    else:
                        path, record.image = ctx.output_path(f"images/{record.sample_id}.png")
                        done = writer.submit(path, pixels)
                    written.append((record, done))
                yield from _finished(waiting)
                waiting = written
            yield from _finished(waiting)
        finally:
            writer.close()

    def generate(self, batch: list[Record]):
        """float32 array (B, H, W, 3) in [0, 1] (NaN where the decode overflowed)."""
        import torch

        spec = self.spec
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
        cfg = spec.guidance_scale > 1
        start = self._start(batch) if self.layout is not None else None
        if self.guide is not None:
            return self._guided(batch, generators, cfg, start)
        with torch.inference_mode(), _explain_oom(len(batch), spec):
            if self.adapter is not None:
                cond, uncond = self._embeddings(batch, cfg)
                text = {"prompt_embeds": cond, "negative_prompt_embeds": uncond}
            else:
                text = {"prompt": [r.prompt for r in batch],
                        "negative_prompt": [r.negative_prompt for r in batch] if cfg else None}
            out = self.pipe(
                **text,
                latents=start,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance_scale,
                height=spec.height,
                width=spec.width,
                generator=generators,
                output_type="np",
            )
        return out.images

    def _guided(self, batch: list[Record], generators, cfg: bool, start):
        import torch

        from builder.synthesis.guidance import guided_sample

        spec, g = self.spec, self.spec.guidance
        with torch.no_grad(), _explain_oom(len(batch), spec):
            cond, uncond = self._embeddings(batch, cfg)
            images = guided_sample(
                self.pipe, cond, uncond, generators, steps=spec.steps, cfg_scale=spec.guidance_scale,
                height=spec.height, width=spec.width, guide=self.guide,
                targets=[self.guide_targets.get(r.label) for r in batch], scale=g.scale, start=g.start_step,
                end=g.end_step if g.end_step is not None else spec.steps, wrt=g.wrt, latents=start,
                decoder=self.guide_decoder)
        return images.numpy()

    def _start(self, batch: list[Record]):
        """Inverted reference latents for the batch (layout initialisation)."""
        return self.layout.start_latents([self.layout.reference(r.index) for r in batch]).to(self.pipe.unet.dtype)

    def _embeddings(self, batch: list[Record], cfg: bool):
        """(conditional, unconditional or None) prompt embeddings; with an adapter, AU tokens appended
        (the sample's AUs, and all-zero AUs for the negative)."""
        import torch

        cond, uncond = self.pipe.encode_prompt([r.prompt for r in batch], self.pipe.unet.device, 1, cfg,
                                               negative_prompt=[r.negative_prompt for r in batch])
        if self.adapter is not None:
            au = torch.tensor([r.au for r in batch], dtype=torch.float32)
            cond = self.adapter.condition(cond, au)
            uncond = self.adapter.condition(uncond, torch.zeros_like(au)) if cfg else None
        return cond, (uncond if cfg else None)


def _write_png(path, pixels) -> None:
    from PIL import Image

    Image.fromarray(to_uint8(pixels)).save(path, format="PNG")


def _finished(waiting: list) -> Iterator[Record]:
    for record, done in waiting:
        if done is not None:
            done()
        yield record


@contextmanager
def _explain_oom(batch: int, spec: Generator):
    """Turn a GPU out-of-memory error into a message that says what to change."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of GPU memory generating {batch} images of {spec.width}x{spec.height} at once",
            fix="lower generator.batch_size and rerun: finished shards are kept, and the batch size "
            "may change when a build resumes",
        ) from None
