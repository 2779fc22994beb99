"""Validation while training the generator: images from fixed prompts and seeds, a grid per checkpoint, and the
accuracy per class of a FER expert on them.

The prompts and seeds never change during a run, so grids and accuracies of successive checkpoints compare like
for like. The expert is a model of the tool's registry or a classifier config; it should be neither the guide
nor a labeller of the builds that will use the generator (the builds warn when it is).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.manifest.label_maps import EXPRESSION_TEXT, LABEL_MAPS, canonical_name
from builder.synthesis.training.generator_config import Validation

CELL_MAX = 128
"""Largest side of one image in the grid (pixels)."""


@dataclass(frozen=True)
class Prompt:
    expression: str  # canonical emotion name
    text: str


def prompts(spec: Validation) -> list[Prompt]:
    """One prompt per expression (the label map's classes unless ``spec.expressions`` names them)."""
    names = spec.expressions or list(LABEL_MAPS[spec.label_map])
    out = []
    for name in names:
        canon = canonical_name(name)
        adjective = EXPRESSION_TEXT[canon]
        article = "an" if adjective[:1] in "aeiou" else "a"
        out.append(Prompt(canon, spec.prompt.format(expression=adjective, article=article)))
    return out


def render(pipe, spec: Validation, resolution: int) -> list[list]:
    """Images (PIL) per prompt, one per seed, with the pipeline as it is now (no gradients)."""
    import torch

    rows = []
    for prompt in prompts(spec):
        images = []
        for seed in spec.seeds:
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                images.append(pipe(prompt.text, num_inference_steps=spec.num_inference_steps,
                                   guidance_scale=spec.guidance_scale, height=resolution, width=resolution,
                                   generator=generator).images[0])
        rows.append(images)
    return rows


def save_grid(rows: list[list], spec: Validation, path: Path) -> None:
    """A grid: one row per expression (its name on the left), one column per seed; PNG, written atomically."""
    from PIL import Image, ImageDraw

    cell = min(CELL_MAX, rows[0][0].width)
    label_width = 80
    grid = Image.new("RGB", (label_width + cell * len(rows[0]), cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (prompt, images) in enumerate(zip(prompts(spec), rows)):
        draw.text((4, r * cell + cell // 2 - 6), prompt.expression, fill="black")
        for c, image in enumerate(images):
            grid.paste(image.resize((cell, cell), Image.Resampling.LANCZOS), (label_width + c * cell, r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    tmp.replace(path)


def expert_accuracy(expert, rows: list[list], spec: Validation) -> dict:
    """Accuracy of ``expert`` (a FERClassifier) per expression on the rendered images: {class: fraction, or None
    when the expert has no such class}, and their mean over the classes it knows."""
    import numpy as np
    import torch

    known = {canonical_name(label): i for i, label in enumerate(expert.labels)}
    per_class: dict[str, float | None] = {}
    for prompt, images in zip(prompts(spec), rows):
        if prompt.expression not in known:
            per_class[prompt.expression] = None
            continue
        batch = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), np.float32) / 255 for im in images]))
        with torch.no_grad():
            predicted = expert(batch.permute(0, 3, 1, 2)).argmax(dim=1)
        per_class[prompt.expression] = round(float((predicted == known[prompt.expression]).float().mean()), 4)
    scored = [v for v in per_class.values() if v is not None]
    return {"per_class": per_class, "mean": round(sum(scored) / len(scored), 4) if scored else None}
