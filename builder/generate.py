"""The generation stage: sample specs in, PNG images out, with diffusers."""
from __future__ import annotations

from collections.abc import Iterator

from .manifest import Generator
from .records import Drop, Record
from .stage import Resources, ShardContext, Stage


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
    ``nonfinite_output``.
    """

    name = "generate"
    resources = Resources(cpus=1, gpus=1)

    def __init__(self, spec: Generator):
        self.spec = spec
        self.pipe = None
        self.provenance = None

    def setup(self) -> None:
        from .models import load_pipeline

        self.pipe, self.device, self.provenance = load_pipeline(self.spec)

    def meta(self) -> dict:
        return {"provenance": self.provenance.to_dict()} if self.provenance else {}

    def process(self, records: list[Record], ctx: ShardContext) -> Iterator[Record]:
        import numpy as np
        from PIL import Image

        size = self.spec.batch_size
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            for record, pixels in zip(batch, self.generate(batch)):
                if not np.isfinite(pixels).all():
                    record.drop = Drop(self.name, "nonfinite_output", "decoded image has NaN or inf pixels")
                else:
                    path, stored = ctx.output_path(f"images/{record.sample_id}.png")
                    Image.fromarray(to_uint8(pixels)).save(path, format="PNG")
                    record.image = stored
                yield record

    def generate(self, batch: list[Record]):
        """float32 array (B, H, W, 3) in [0, 1] (NaN where the decode overflowed)."""
        import torch

        spec = self.spec
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
        negative = [r.negative_prompt for r in batch] if spec.guidance_scale > 1 else None
        with torch.inference_mode():
            out = self.pipe(
                prompt=[r.prompt for r in batch],
                negative_prompt=negative,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance_scale,
                height=spec.height,
                width=spec.width,
                generator=generators,
                output_type="np",
            )
        return out.images
