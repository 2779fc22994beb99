"""The 'edit' stage of an ``edit`` source: each listed face, edited to every target class with the generator.

Per source image (the records of one source sit together in a shard): read it from ``edit.folder`` (only while it
still resolves inside it) or the dataset row, fit it to the generator's size (shorter side scaled, centre crop,
PIL's ``ImageOps.fit``), store that crop once per shard under ``sources/`` (the identity check and the review
compare against it), then edit it to the shard's targets in one batch (``builder.synthesis.editing``: DDIM
inversion to ``edit.strength``, the source's self-attention keys and values injected for ``edit.inject.steps``
steps, the AU adapter and LoRAs of the generator section when configured). Every edit is a pure function of the
source image, the target's prompt and AUs and the settings, so reruns give the same images.

Drop reasons (each record of the source gets them): ``missing_image``, ``link_outside_folder``, ``corrupt_image``,
``unreadable_image``, as the ingest stage; ``no_face_in_source`` with ``edit.region: face`` when MTCNN finds no face
in the source (the edit region is its face box, grown by ``region_margin``); ``nonfinite_output`` for an edit whose
decoded pixels are not finite.
A failure to write is a run failure (``StorageError``), never a drop.
"""
from __future__ import annotations

from collections.abc import Iterator

from builder.core.errors import storage_error
from builder.core.images import CorruptImage, to_rgb8
from builder.core.listed_images import OutsideFolder, read_entry, row_image, undecoded
from builder.core.records import Drop, Record
from builder.core.stage import Column, Resources, ShardContext, Stage, device_resources

REGION_MIN_SCORE = 0.9
"""MTCNN score a source's face needs to define the edit region (``edit.region: face``)."""


def fit(image, width: int, height: int):
    """``image`` scaled so it covers (width, height), centre-cropped to it (bicubic)."""
    from PIL import Image, ImageOps

    return ImageOps.fit(image, (width, height), Image.BICUBIC)


class EditStage(Stage):
    """Expression edits of existing faces (see the module docstring)."""

    name = "edit"
    columns = (
        Column("au", "aus", "the AU intensity targets (FACS 0-5) the edit was conditioned on, one named float per AU",
               lambda r, meta: r.au),
        Column("prompt", "string", "the target prompt", lambda r, meta: r.prompt),
        Column("sample_id", "string", "the sample's id (dataset name, source position and target class)",
               lambda r, meta: r.sample_id),
        Column("source_id", "string", "the source image: its path in edit.folder, or its row in edit.dataset",
               lambda r, meta: r.source),
        Column("source_identity", "string", "who the source image shows (splits never share one)",
               lambda r, meta: r.attributes.get("source_identity")),
        Column("generator_model", "string", "the generator (Hub id, folder or built-in)",
               lambda r, meta: meta["provenance"]["model"]),
        Column("generator_weights_sha256", "string", "sha256 over its weight files",
               lambda r, meta: meta["provenance"]["weights_sha256"]),
    )

    def __init__(self, edit, generator, listing, au_names: tuple[str, ...] = (), label_names: tuple[str, ...] = (),
                 trust_remote_code: bool = False):
        self.spec, self.generator, self.listing = edit, generator, listing
        self.au_names, self.label_names = tuple(au_names), tuple(label_names)
        self.trust_remote_code = trust_remote_code
        self.guide = self.guide_targets = self.guide_decoder = self.guide_provenance = None
        self.pipe = self.provenance = self.dtype = None
        self.adapter = self.adapter_provenance = None
        self.lora_provenance = None
        self.dataset = None
        self.detector = None

    @property
    def resources(self) -> Resources:
        return device_resources(self.generator.device)

    def setup(self) -> None:
        from diffusers import DDIMScheduler

        from builder.models.diffusion import load_pipeline

        self.pipe, self.dtype, self.provenance = load_pipeline(self.generator)
        self.pipe.scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)  # inversion needs DDIM
        if self.generator.lora:
            from builder.models.lora import apply_loras

            self.lora_provenance = apply_loras(self.pipe, self.generator.lora, fuse=self.generator.fuse_lora,
                                               model=self.generator.model)
        if self.generator.au_adapter is not None:
            from builder.synthesis.au_adapter import attach_au_adapter

            self.adapter, self.adapter_provenance = attach_au_adapter(self.pipe, self.generator.au_adapter,
                                                                      self.au_names)
        if self.spec.region == "face":
            from builder.models.diffusion import resolve_device
            from curation.faces.detect import load_detector

            self.detector = load_detector(resolve_device(self.generator.device))
        if self.generator.guidance is not None:
            from builder.synthesis.guidance import load_guide

            self.guide, self.guide_targets, self.guide_decoder, self.guide_provenance = load_guide(
                self.generator.guidance, self.pipe, self.label_names, self.trust_remote_code)
            if self.guide_provenance["end_step"] is None:  # steps count over the edit's own denoising steps
                self.guide_provenance["end_step"] = len(self._timesteps())
        if self.spec.dataset is not None:
            from builder.core.errors import ManifestError
            from builder.core.saved_datasets import open_split

            spec = self.spec
            self.dataset = undecoded(open_split(spec.dataset, spec.split, {"image_column": spec.image_column}, "edit",
                                                error=ManifestError), spec.image_column)

    def settings(self):
        from builder.synthesis.editing import EditSettings

        g, spec = self.generator, self.spec
        return EditSettings(steps=g.steps, strength=spec.strength, guidance_scale=g.guidance_scale,
                            inject_steps=spec.inject.steps, inject_layers=spec.inject.layers)

    def meta(self) -> dict:
        if self.provenance is None:
            return {}
        listing = self.listing
        return {"provenance": self.provenance.to_dict(), "dtype": str(self.dtype).removeprefix("torch."),
                "scheduler": "ddim", "settings": self.settings().__dict__,
                "source": {"kind": listing.kind, "root": listing.root, "count": listing.count,
                           "listing_sha256": listing.sha256, "synthetic": self.spec.sources_are_synthetic,
                           "consent": self.spec.consent, "license": self.spec.license},
                "au_adapter": self.adapter_provenance, "guidance": self.guide_provenance,
                **({"lora": self.lora_provenance} if self.lora_provenance else {})}

    def runtime(self) -> dict:
        return {} if self.pipe is None else {"device": str(self.pipe.unet.device)}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        import numpy as np
        from PIL import Image

        from builder.core.errors import is_run_fault
        from builder.synthesis.generate import to_uint8

        groups: dict[str, list[Record]] = {}
        for record in records:
            groups.setdefault(record.source, []).append(record)
        for group in groups.values():
            try:
                source = fit(self._read(group[0]), self.generator.width, self.generator.height)
            except Exception as exc:  # a bad source image is counted and skipped, never a crash
                if is_run_fault(exc):
                    raise
                drop = _read_drop(self.name, exc, group[0].source)
                for record in group:
                    record.drop = drop
                yield from group
                continue
            mask = None
            if self.spec.region == "face":
                mask = self._face_mask(source)
                if mask is None:
                    for record in group:
                        record.drop = Drop(self.name, "no_face_in_source", "edit.region is 'face' and MTCNN finds no "
                                           "face in the source")
                    yield from group
                    continue
            stored = self._store(ctx, f"sources/{group[0].sample_id.rsplit('-', 1)[0]}.png", source)
            size = max(1, self.generator.batch_size)
            for start in range(0, len(group), size):
                batch = group[start:start + size]
                for record, pixels in zip(batch, self._edit(source, batch, mask)):
                    record.attributes["source_image"] = stored
                    if not np.isfinite(pixels).all():
                        record.drop = Drop(self.name, "nonfinite_output", "decoded image has NaN or inf pixels")
                    else:
                        image = Image.fromarray(to_uint8(pixels))
                        record.image = self._store(ctx, f"images/{record.sample_id}.png", image)
                    yield record

    def _face_mask(self, source):
        """The edit region of ``source``: its primary face's box grown by ``region_margin``, or None."""
        import numpy as np

        from builder.synthesis.editing import region_mask
        from curation.faces.detect import primary

        found = primary([d for d in self.detector.detect(np.asarray(source)) if d.score >= REGION_MIN_SCORE])
        return None if found is None else region_mask(source.width, source.height, found.box, self.spec.region_margin)

    def _edit(self, source, batch: list[Record], mask=None) -> list:
        import torch

        from builder.synthesis.editing import EditGuidance, edit

        guidance = None
        if self.guide is not None:
            g = self.guide_provenance
            guidance = EditGuidance(self.guide, tuple(self.guide_targets.get(r.label) for r in batch), g["scale"],
                                    g["start_step"], g["end_step"], self.guide_decoder)
        with torch.no_grad():
            return edit(self.pipe, source, self.spec.source_prompt, [r.prompt for r in batch], self.settings(),
                        negative_prompt=self.spec.negative_prompt, adapter=self.adapter,
                        aus=[r.au for r in batch] if self.adapter is not None else None, guidance=guidance,
                        mask=mask)

    def _timesteps(self) -> list[int]:
        from builder.synthesis.editing import inversion_timesteps

        return inversion_timesteps(self.pipe, self.generator.steps, self.spec.strength)

    def _read(self, record: Record):
        if self.dataset is not None:
            return to_rgb8(row_image(self.dataset, int(record.source), self.spec.image_column))
        image, _ = read_entry(self.listing.root, record.source, self.spec.follow_links_outside, "edit.folder")
        return to_rgb8(image)

    @staticmethod
    def _store(ctx: ShardContext, relative: str, image) -> str:
        target = ctx.staging / relative
        try:
            target, stored = ctx.output_path(relative)
            image.save(target, format="PNG")
        except OSError as exc:
            exc.filename = exc.filename or str(target)
            raise storage_error(exc, ctx.root) from None
        return stored


def _read_drop(stage: str, exc: Exception, source: str) -> Drop:
    if isinstance(exc, FileNotFoundError):
        return Drop(stage, "missing_image", f"{exc.filename or source} is gone")
    if isinstance(exc, OutsideFolder):
        return Drop(stage, "link_outside_folder", str(exc))
    if isinstance(exc, CorruptImage):
        return Drop(stage, "corrupt_image", str(exc))
    return Drop(stage, "unreadable_image", f"{type(exc).__name__}: {exc}")
