"""Expand a manifest into sample specs (``Record`` objects without images).

Sample ``i`` depends only on (manifest, i): its class comes from a fixed
interleaving of the per-class counts, and every random draw (template, axes,
AU jitter, generator seed) from ``seeding`` keyed by (global seed, i). So the
specs are the same whatever the shard size, worker count or processing order.
"""
from __future__ import annotations

from collections.abc import Iterator

from builder.core.records import Record
from builder.core.seeding import SampleRng, derive_seed
from builder.expand.aus import draw_aus
from builder.manifest import Manifest
from builder.manifest.label_maps import expression_text
from builder.manifest.templates import au_cues, render_prompt


def class_sequence(manifest: Manifest) -> list[int]:
    """Label index of every sample, classes interleaved in proportion to their counts.

    Sample k of a class with n samples sits at position (k + 0.5) / n of the
    run, so any prefix of the run (one shard, or a partial build) holds the
    classes in about the requested proportions.
    """
    keyed = []
    for label, count in enumerate(manifest.labels.per_class().values()):
        keyed.extend(((k + 0.5) / count, label) for k in range(count))
    keyed.sort()
    return [label for _, label in keyed]


def draw_prompt(manifest: Manifest, index: int) -> tuple[str, dict[str, str]]:
    """(template, axis values) of sample ``index``."""
    rng = SampleRng(manifest.seed, index, "prompt")
    template = rng.choice(manifest.prompts.all_templates)
    return template, {axis: rng.choice(spec.values, spec.weights) for axis, spec in manifest.prompts.all_axes.items()}


def make_spec(manifest: Manifest, index: int, label: int) -> Record:
    """The spec of sample ``index`` whose class is ``label``."""
    label_name = manifest.labels.names[label]
    prompts = manifest.prompts
    au = draw_aus(manifest, index, label_name)

    template, attributes = draw_prompt(manifest, index)
    expression = prompts.expression_text.get(label_name) or expression_text(label_name)
    cues, codes = au_cues(manifest.aus.names, au, prompts.au_cues.min_intensity, prompts.au_cues.max_cues)
    prompt = render_prompt(template, {"expression": expression, "au_cues": cues, "au_names": codes, **attributes})
    return Record(
        sample_id=manifest.sample_id(index),
        index=index,
        label=label,
        label_name=label_name,
        au=au,
        attributes=attributes,
        prompt=prompt,
        negative_prompt=prompts.negative_prompt,
        seed=derive_seed(manifest.seed, index, "generator"),
    )


def shard_bounds(manifest: Manifest, shard: int, shard_size: int | None = None) -> range:
    size = shard_size or manifest.output.shard_size
    return range(shard * size, min((shard + 1) * size, manifest.total))


def iter_specs(manifest: Manifest, indices: range | None = None, classes: list[int] | None = None) -> Iterator[Record]:
    """Specs for ``indices`` (default: the whole run)."""
    classes = classes if classes is not None else class_sequence(manifest)
    for index in indices if indices is not None else range(len(classes)):
        yield make_spec(manifest, index, classes[index])


def shard_specs(manifest: Manifest, shard: int, shard_size: int | None = None) -> list[Record]:
    """Specs of one shard (listed images, with an ``images`` source; sources x targets with an ``edit`` source)."""
    if manifest.edit is not None:
        from builder.expand.edit_specs import edit_specs

        return edit_specs(manifest, shard_bounds(manifest, shard, shard_size))
    if manifest.images is not None:
        from builder.expand.images import image_specs

        return image_specs(manifest, shard_bounds(manifest, shard, shard_size))
    return list(iter_specs(manifest, shard_bounds(manifest, shard, shard_size)))
