"""The data card (``README.md``) of a build, with Hub-style YAML metadata.

Every number in it comes from the build's ``stats.json``; nothing is typed in.
"""
from __future__ import annotations

from builder.manifest import BUILTIN_TINY_MODEL, Manifest

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T"


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _au_conditioning(adapter: dict | None) -> str:
    if not adapter:
        return "none: images follow the prompt only; `au` holds the targets drawn from the manifest"
    return f"AU adapter `{adapter['path']}` (sha256 `{adapter['sha256'][:16]}…`), au_scale {adapter['scale']:g}"


def _guidance(g: dict | None) -> str:
    if not g:
        return "none"
    unguided = f"; not guided (unknown to the guide): {', '.join(g['unguided_classes'])}" if g["unguided_classes"] else ""
    return (f"`{g['classifier']}` (sha256 `{g['sha256'][:16]}…`) on the {g['wrt']} conditioning, lambda "
            f"{g['scale']:g}, steps {g['start_step']}-{g['end_step'] - 1}{unguided}. Do not use the same model "
            "to label or evaluate this data: it would agree with itself")


def _labels_section(lab: dict | None) -> list[str]:
    if not lab:
        return ["Each `label` is the expression the image was *prompted* for. No classifier has confirmed it: this "
                "build ran no label calibration, so expect some images not to show their label."]
    rule = {"product": "product of experts (weighted geometric mean)", "weighted_vote": "weighted vote"}[lab["combine"]]
    lines = [f"Every image was checked by expert FER models after face detection and alignment (MTCNN). Their "
             f"probabilities were pooled by {rule}; an image was kept when the pooled confidence was at least "
             f"{lab['min_confidence']:g} and a weighted share of at least {lab['min_agreement']:g} of the experts "
             f"agreed; " + ("images the experts confidently put in another class were relabelled"
                           if lab["relabel"] else "images the experts put in another class were dropped")
             + ". `target_label` is the prompted class, `label` the final one, and each expert's probabilities "
             "are in its `probs_<name>` column.", "",
             _table(["expert", "model", "sha256", "weight", "classes it cannot predict"],
                    [[e["name"], f"`{e['model']}`", f"`{e['sha256'][:16]}…`", f"{e['weight']:g}",
                      ", ".join(e["unknown_classes"]) or "none"] for e in lab["experts"]]),
             "", "Dispositions: " + ", ".join(f"{k} {v}" for k, v in lab["dispositions"].items())
             + (f"; mean confidence of released images {lab['mean_confidence_released']:.3f}."
                if lab.get("mean_confidence_released") is not None else ".")]
    if lab.get("guide_is_only_labeller"):
        lines += ["", "> **Warning: the model that guided generation is also the only labeller.** Its confirmations "
                      "are not independent evidence: it tends to agree with images it steered. Treat these labels "
                      "as unverified."]
    return lines


def render_card(manifest: Manifest, stats: dict, provenance: dict):
    """A ``huggingface_hub.DatasetCard`` for the build."""
    from huggingface_hub import DatasetCard, DatasetCardData

    released = stats["released"]
    licence = provenance.get("license") or "other"
    data = DatasetCardData(
        pretty_name=manifest.name,
        license=licence,
        task_categories=["image-classification"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        size_categories=[size_category(released["total"])],
        tags=["synthetic-data", "facial-expression-recognition", "fer"],
    )
    tiny = manifest.generator.model == BUILTIN_TINY_MODEL
    names = list(manifest.labels.names)
    split_names = list(released["splits"])

    parts = [f"# {manifest.name} {manifest.version}", ""]
    parts.append(manifest.description.strip() or "A synthetic facial expression recognition (FER) dataset.")
    parts += ["", f"Built by `build-dataset` from a synthesis manifest: {released['total']} images over "
                  f"{sum(1 for n in names if released['classes'].get(n))} expression classes "
                  f"(label map `{manifest.labels.label_map}`), generated with `{provenance['model']}`."]
    if tiny:
        parts += ["", "> **These images are not faces.** They come from the tool's built-in tiny pipeline with "
                      "random weights (`builtin:tiny-sd`), which exists to exercise the tool offline. "
                      "Do not train or evaluate a model on this dataset."]
    parts += ["", "## Contents", "", _table(
        ["class", "label id", *split_names, "total"],
        [[n, i, *(released["class_by_split"][s].get(n, 0) for s in split_names), released["classes"].get(n, 0)]
         for i, n in enumerate(names)],
    )]
    parts += ["", "Columns: `image`, `label` (ClassLabel), `au` (AU intensities 0-5 in the order "
                  f"{', '.join(manifest.aus.names)}), `prompt`, `negative_prompt`, `seed`, `sample_id`"
                  + "".join(f", `{a}`" for a in manifest.prompts.all_axes)
                  + ", and the generator's provenance columns."]
    parts += ["", "## Generation", "", _table(["field", "value"], [
        ["model", f"`{provenance['model']}`"],
        ["revision", f"`{provenance['revision']}`"],
        ["weights sha256", f"`{provenance['weights_sha256']}`"],
        ["model licence", provenance.get("license") or "unknown: check it before publishing"],
        ["scheduler / steps / CFG", f"{manifest.generator.scheduler} / {manifest.generator.steps} / {manifest.generator.guidance_scale:g}"],
        ["resolution", f"{manifest.generator.width}x{manifest.generator.height}"],
        ["AU conditioning", _au_conditioning(stats.get("au_adapter"))],
        ["semantic guidance", _guidance(stats.get("guidance"))],
        ["layout initialisation", (f"DDIM-inverted references from `{stats['layout']['images']}` "
                                   f"({stats['layout']['count']} images, sha256 `{stats['layout']['sha256'][:16]}…`)")
         if stats.get("layout") else "none: random starting noise"],
        ["global seed", manifest.seed],
        ["prompts truncated", f"{stats['prompts'].get('truncated', 0)} (text encoder limit "
                              f"{stats['prompts'].get('max_tokens', '?')} tokens, longest prompt "
                              f"{stats['prompts'].get('longest', 0)})"],
        ["tool", f"fer-synth {stats['tool_version']}"],
    ])]
    parts += ["", "## Processing funnel", "", _table(
        ["stage", "in", "kept", "dropped (reason: count)"],
        [[name, s["in"], s["kept"], ", ".join(f"{r}: {c}" for r, c in s["dropped"].items()) or "none"]
         for name, s in stats["stages"].items()],
    )]
    parts += ["", "## Labels", "", *_labels_section(stats.get("labelling"))]
    parts += ["", "## Intended use and limitations", "",
              "Research on facial expression recognition with synthetic training data. Prompted demographic "
              "attributes describe the prompt, not a verified property of the image. Synthetic images can carry "
              "the biases of the generator and its training data."]
    parts += ["", "## Privacy", "", "All images are generated; no photograph of a real person is included. "
              "This build ran no identity-leak check against real face sets, so it cannot rule out that a "
              "generated face resembles a person in the generator's training data."]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts) + "\n")
