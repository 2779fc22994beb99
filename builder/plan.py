"""The build plan shown by ``--dry-run``: counts, shards and estimated work, no model loaded.

Imports nothing heavy (no torch), so a plan of 100,000 samples takes seconds.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from builder.expand.images import refuse_out_in_source
from builder.expand.specs import class_sequence, draw_prompt, shard_bounds
from builder.manifest import BUILTIN_TINY_MODEL, Manifest
from builder.pipeline import global_stages, stage_names

# SD 1.5 cost at 512x512 (torch FLOP counter, shared/docs/environment.md).
SD15_UNET_TFLOP = 0.677
SD15_DECODE_TFLOP = 2.48
H100_BF16_TFLOPS = 790.0


def make_plan(manifest: Manifest, out: Path | None = None) -> dict:
    refuse_out_in_source(manifest, out)
    plan = (_images_plan(manifest) if manifest.images is not None else _edit_plan(manifest)
            if manifest.edit is not None else _generation_plan(manifest))
    if out is not None and (out / "shards").is_dir():
        from builder.core.shards import ShardStore

        store = ShardStore(out)
        plan["resume"] = {"out": str(out), "shards_done": sum(
            all(store.is_done(st, s) for st in plan["stages"]) for s in range(plan["shards"]["count"]))}
    return plan


def _images_plan(manifest: Manifest) -> dict:
    listing = manifest.listing
    lab = manifest.labelling
    return {
        "name": manifest.name,
        "version": manifest.version,
        "seed": manifest.seed,
        "total": listing.count,
        "label_map": manifest.labels.label_map,
        "source": {"kind": listing.kind, "root": listing.root, "count": listing.count,
                   "listing_sha256": listing.sha256, "top_k_per_class": manifest.images.top_k_per_class},
        "labelling": {"experts": [e.model for e in lab.experts] + ([f"FERAnno {lab.feranno.model}"] if lab.feranno
                                                                    else []), "combine": lab.combine,
                      "min_confidence": lab.min_confidence, "min_agreement": lab.min_agreement},
        "shards": {"count": manifest.num_shards(), "size": manifest.output.shard_size},
        "stages": stage_names(manifest),
        "global_stages": [stage.name for stage in global_stages(manifest)],
        "splits": manifest.output.splits,
    }


def _edit_plan(manifest: Manifest) -> dict:
    """Sources x targets, and the UNet work: per source one inversion pass (batch 1) per inverted step, then per
    batch of targets one pass over [source, edits] (twice with classifier-free guidance) per step."""
    listing, edit, gen = manifest.listing, manifest.edit, manifest.generator
    names = manifest.labels.names
    targets = [names[i] for i in manifest.edit_targets]
    inverted = round(gen.steps * edit.strength)
    cfg = 2 if gen.guidance_scale > 1 else 1
    batches = -(-len(targets) // gen.batch_size)
    rows = listing.count * inverted * (1 + cfg * (len(targets) + batches))
    generated = manifest.total * gen.steps * cfg
    return {
        "name": manifest.name, "version": manifest.version, "seed": manifest.seed, "total": manifest.total,
        "label_map": manifest.labels.label_map,
        "source": {"kind": listing.kind, "root": listing.root, "count": listing.count,
                   "listing_sha256": listing.sha256, "synthetic": edit.sources_are_synthetic},
        "targets": targets, "strength": edit.strength, "inverted_steps": inverted,
        "shards": {"count": manifest.num_shards(), "size": manifest.output.shard_size},
        "stages": stage_names(manifest),
        "work": {"unet_rows": rows, "vae_encodes": listing.count, "vae_decodes": manifest.total,
                 "relative_to_generating": round(rows / generated, 3) if generated else None},
        "global_stages": [stage.name for stage in global_stages(manifest)],
        "splits": manifest.output.splits,
    }


def _format_edit_plan(plan: dict) -> list[str]:
    src, work = plan["source"], plan["work"]
    kind = "synthetic faces" if src["synthetic"] else "real people's faces"
    return [f"plan for {plan['name']} {plan['version']}: edit {src['count']} source images ({kind}, {src['kind']} "
            f"{src['root']}, listing sha256 {src['listing_sha256'][:16]}…) to {len(plan['targets'])} targets "
            f"({', '.join(plan['targets'])}): {plan['total']} edits, label map {plan['label_map']}",
            f"strength {plan['strength']:g}: {plan['inverted_steps']} DDIM steps inverted and denoised again; "
            f"{work['unet_rows']} UNet image-rows, {work['relative_to_generating']} of generating as many images "
            "from noise",
            f"shards: {plan['shards']['count']} of up to {plan['shards']['size']} edits; stages per shard: "
            f"{', '.join(plan['stages'])}, then " + ", ".join([*plan["global_stages"], "release"]),
            "splits (grouped by person, after curation): " + ", ".join(f"{s} {f:g}" for s, f in plan["splits"].items())]


def _generation_plan(manifest: Manifest) -> dict:
    classes = class_sequence(manifest)
    names = manifest.labels.names
    per_class: Counter[str] = Counter()
    per_axis: dict[str, Counter[str]] = {axis: Counter() for axis in manifest.prompts.all_axes}
    cells: Counter[str] = Counter()
    class_cells: Counter[str] = Counter()
    for index, label in enumerate(classes):
        _, attributes = draw_prompt(manifest, index)
        per_class[names[label]] += 1
        for axis, value in attributes.items():
            per_axis[axis][value] += 1
        cell = "|".join(f"{k}={v}" for k, v in attributes.items())
        cells[cell] += 1
        class_cells[f"{names[label]}|{cell}"] += 1

    gen = manifest.generator
    shards = manifest.num_shards()
    batches = sum(-(-len(shard_bounds(manifest, s)) // gen.batch_size) for s in range(shards))
    forwards = manifest.total * gen.steps * (2 if gen.guidance_scale > 1 else 1)
    scale = gen.height * gen.width / 512**2
    tflop = forwards * SD15_UNET_TFLOP * scale + manifest.total * SD15_DECODE_TFLOP * scale
    possible = 1
    for axis in manifest.prompts.all_axes.values():
        possible *= len(axis.values)

    plan = {
        "name": manifest.name,
        "version": manifest.version,
        "seed": manifest.seed,
        "total": manifest.total,
        "label_map": manifest.labels.label_map,
        "classes": {n: per_class.get(n, 0) for n in names},
        "axes": {axis: dict(sorted(c.items())) for axis, c in per_axis.items()},
        "cells": {"possible": possible, "populated": len(cells), "counts": dict(sorted(cells.items())),
                  "class_x_cell_populated": len(class_cells)},
        "shards": {"count": shards, "size": manifest.output.shard_size},
        "stages": stage_names(manifest),
        "work": {"batches": batches, "unet_forwards": forwards, "vae_decodes": manifest.total,
                 "sd15_equivalent_tflop": round(tflop, 1),
                 "h100_seconds_at_50pct": round(tflop / (0.5 * H100_BF16_TFLOPS), 1)},
        "global_stages": [stage.name for stage in global_stages(manifest)],
        "splits": manifest.output.splits,
    }
    return plan


def _format_images_plan(plan: dict) -> list[str]:
    src, lab = plan["source"], plan["labelling"]
    keep = f"the {src['top_k_per_class']} most confident per class" if src["top_k_per_class"] else "all that pass"
    return [f"plan for {plan['name']} {plan['version']}: label {plan['total']} existing images from {src['kind']} "
            f"{src['root']} (listing sha256 {src['listing_sha256'][:16]}…), label map {plan['label_map']}",
            f"labellers: {', '.join(lab['experts'])}, pooled by {lab['combine']}; keep confidence >= "
            f"{lab['min_confidence']:g} and agreement >= {lab['min_agreement']:g}, then {keep}",
            f"shards: {plan['shards']['count']} of up to {plan['shards']['size']} images; stages per shard: "
            f"{', '.join(plan['stages'])}, then " + ", ".join([*plan["global_stages"], "release"]),
            "splits (after labelling): " + ", ".join(f"{s} {f:g}" for s, f in plan["splits"].items())]


def format_plan(plan: dict, manifest: Manifest) -> str:
    if manifest.collection is not None:
        lines = _format_images_plan(plan) if manifest.images is not None else _format_edit_plan(plan)
        if "resume" in plan:
            lines.append(f"{plan['resume']['out']}: {plan['resume']['shards_done']} of {plan['shards']['count']} "
                         "shards done")
        return "\n".join(lines)
    gen = manifest.generator
    lines = [f"plan for {plan['name']} {plan['version']} (seed {plan['seed']}): {plan['total']} samples, "
             f"label map {plan['label_map']}", "", "class counts:"]
    width = max(len(n) for n in plan["classes"])
    lines += [f"  {n:<{width}}  {c:>8}" for n, c in plan["classes"].items()]
    for axis, counts in plan["axes"].items():
        total = sum(counts.values())
        lines.append(f"axis {axis}: " + ", ".join(f"{v} {c} ({100 * c / total:.1f}%)" for v, c in counts.items()))
    cells = plan["cells"]
    if plan["axes"]:
        sizes = list(cells["counts"].values())
        lines.append(f"demographic cells: {cells['populated']} of {cells['possible']} populated; samples per cell "
                     f"min {min(sizes)}, median {statistics.median(sizes):g}, max {max(sizes)}; "
                     f"{cells['class_x_cell_populated']} class x cell combinations (--json lists every cell)")
    work = plan["work"]
    lines += ["", f"shards: {plan['shards']['count']} of up to {plan['shards']['size']} samples; "
              f"stages per shard: {', '.join(plan['stages'])}, then " + ", ".join([*plan["global_stages"], "release"]),
              f"generator: {gen.model} at {gen.width}x{gen.height}, {gen.steps} steps, CFG {gen.guidance_scale:g}, "
              f"batch {gen.batch_size}: {work['batches']} batches, {work['unet_forwards']} UNet forwards, "
              f"{work['vae_decodes']} VAE decodes"]
    if gen.model != BUILTIN_TINY_MODEL:
        lines.append(f"estimated work if the model is SD 1.5-sized: {work['sd15_equivalent_tflop']} TFLOP, about "
                     f"{work['h100_seconds_at_50pct']} s on one H100 at 50% of its bf16 peak")
    lines.append("splits (before curation): " + ", ".join(f"{s} {f:g}" for s, f in plan["splits"].items()))
    if "resume" in plan:
        lines.append(f"{plan['resume']['out']}: {plan['resume']['shards_done']} of {plan['shards']['count']} shards done")
    return "\n".join(lines)


def plan_json(plan: dict) -> str:
    return json.dumps(plan, indent=2)
