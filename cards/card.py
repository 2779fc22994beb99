"""The data card (``README.md``) of a build, with Hub-style YAML metadata.

Every number in it comes from the build's ``stats.json``; nothing is typed in.
"""
from __future__ import annotations

from pathlib import Path

from builder.manifest import BUILTIN_TINY_MODEL, Manifest

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (10**9, "100M<n<1B"),
                   (10**10, "1B<n<10B"), (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


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


def _lora_rows(loras: list[dict] | None) -> list[list[object]]:
    """One table row per LoRA: its folder, scale and sha256, and what its training summary says."""
    rows = []
    for i, lora in enumerate(loras or []):
        expert = lora.get("validation_expert")
        summary = "".join([f"; trained on `{lora['base_model']}`" if lora.get("base_model") else "",
                           f"; selected with the FER model `{expert['name']}`" if expert else ""])
        rows.append([f"LoRA {i}" if len(loras) > 1 else "LoRA",
                     f"`{lora['path']}`, scale {lora['scale']:g} (sha256 `{lora['sha256'][:16]}…`){summary}"])
    return rows


def _lora_notes(loras: list[dict] | None, stats: dict, provenance: dict) -> list[str]:
    """The LoRA warnings the build logged, from what stats.json recorded: another base model, a validation
    expert that guided or labelled this build."""
    from builder.models.lora import base_model_warning, selection_warnings

    used = []
    if stats.get("guidance"):
        used.append({"role": "guided the generation", "where": "stats.json guidance",
                     "model": stats["guidance"]["classifier"], "sha256": stats["guidance"].get("sha256")})
    for i, expert in enumerate((stats.get("labelling") or {}).get("experts") or []):
        used.append({"role": "labelled the data", "where": f"stats.json labelling.experts[{i}]",
                     "model": expert.get("model"), "sha256": expert.get("sha256")})
    notes = []
    for i, lora in enumerate(loras or []):
        notes += [w for w in [base_model_warning(i, lora, provenance["model"])] if w]
        notes += selection_warnings(i, lora, used)
    return [line for note in notes for line in ("", f"> **Warning:** {note}.")]


def _guidance(g: dict | None) -> str:
    if not g:
        return "none"
    unguided = f"; not guided (unknown to the guide): {', '.join(g['unguided_classes'])}" if g["unguided_classes"] else ""
    return (f"`{g['classifier']}` (sha256 `{g['sha256'][:16]}…`) on the {g['wrt']} conditioning, lambda "
            f"{g['scale']:g}, steps {g['start_step']}-{g['end_step'] - 1}{unguided}. Do not use the same model "
            "to label or evaluate this data: it would agree with itself")


def _labels_section(lab: dict | None, collected: bool = False, detector: str = "MTCNN",
                    source_labels=None) -> list[str]:
    if not lab and collected:
        where = ("the name of the folder each image is in" if source_labels == "folder-names" else
                 f"the labels file `{Path(source_labels['csv']).name}`" if isinstance(source_labels, dict)
                 and source_labels.get("csv") else f"the dataset column `{(source_labels or {}).get('column')}`")
        return [f"Each `label` is the source's own label ({where}), mapped onto the label map by emotion name; "
                "images whose label no label map knows were dropped (`unknown_source_label`). No classifier "
                "confirmed the labels: this build ran no label calibration."]
    if not lab:
        return ["Each `label` is the expression the image was *prompted* for. No classifier has confirmed it: this "
                "build ran no label calibration, so expect some images not to show their label."]
    rule = {"product": "product of experts (weighted geometric mean)", "weighted_vote": "weighted vote"}[lab["combine"]]
    if collected:
        outcome = ("each kept image got the class the pooled experts chose (its `label`; `target_label` is empty "
                   "because the source had no class)")
    else:
        outcome = (("images the experts confidently put in another class were relabelled" if lab["relabel"]
                    else "images the experts put in another class were dropped")
                   + ". `target_label` is the prompted class, `label` the final one")
    lines = [f"Every image was checked by expert FER models after face detection and alignment ({detector}). Their "
             f"probabilities were pooled by {rule}; an image was kept when the pooled confidence was at least "
             f"{lab['min_confidence']:g} and a weighted share of at least {lab['min_agreement']:g} of the experts "
             f"agreed; {outcome}, and each expert's probabilities are in its `probs_<name>` column.", "",
             _table(["expert", "model", "sha256", "weight", "classes it cannot predict"],
                    [[e["name"], f"`{e['model']}`", f"`{e['sha256'][:16]}…`", f"{e['weight']:g}",
                      ", ".join(e["unknown_classes"]) or "none"] for e in lab["experts"]]),
             "", "Dispositions: " + ", ".join(f"{k} {v}" for k, v in lab["dispositions"].items())
             + (f"; mean confidence of released images {lab['mean_confidence_released']:.3f}."
                if lab.get("mean_confidence_released") is not None else ".")]
    agree = lab.get("agreement_released")
    if agree:
        lines += ["", f"Agreement on the released images: mean {agree['mean']:.3f}, all labellers agree on "
                      f"{agree['unanimous']:.1%}; share of images whose label is each labeller's top class: "
                      + ", ".join(f"{k} {v:.1%}" for k, v in agree["labeller_matches_label"].items() if v is not None)
                      + "."]
    for e in lab["experts"]:
        if "feranno" in e:
            f = e["feranno"]
            lines += ["", f"`{e['name']}` is FERAnno: a classifier on the diffusion features (decoder feature maps and "
                          f"cross-attention maps) of the face crop, DDIM-inverted to timestep {f['timestep']} with "
                          f"`{f['base_model']}` (weights sha256 `{f['base_weights_sha256'][:16]}…`), its probabilities "
                          f"temperature-scaled by {f['temperature']:.3f}."]
    if lab.get("guide_is_only_labeller"):
        lines += ["", "> **Warning: the model that guided generation is also the only labeller.** Its confirmations "
                      "are not independent evidence: it tends to agree with images it steered. Treat these labels "
                      "as unverified."]
    return lines


def _model_rows(provenance: dict, loras: list[dict] | None) -> list[list]:
    """The card's rows naming the diffusion model (and its LoRAs)."""
    return [["model", f"`{provenance['model']}`"], ["revision", f"`{provenance['revision']}`"],
            ["weights sha256", f"`{provenance['weights_sha256']}`"],
            ["model licence", provenance.get("license") or "unknown: check it before publishing"], *_lora_rows(loras)]


def _generation_section(manifest: Manifest, stats: dict, provenance: dict) -> list[str]:
    gen = manifest.generator
    loras = stats.get("lora")
    return ["## Generation", "", _table(["field", "value"], [
        *_model_rows(provenance, loras),
        ["scheduler / steps / CFG", f"{gen.scheduler} / {gen.steps} / {gen.guidance_scale:g}"],
        ["resolution", f"{gen.width}x{gen.height}"],
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
    ]), *_lora_notes(loras, stats, provenance)]


def _source_section(stats: dict) -> list[str]:
    src = stats["source"]
    where = f"folder `{src['root']}`" if src["kind"] == "folder" else f"dataset `{src['root']}`"
    top_k = src.get("top_k_per_class")
    return ["## Source", "", _table(["field", "value"], [
        ["images", f"{src['count']} listed in {where}"],
        ["listing sha256", f"`{src['listing_sha256']}`"],
        ["selection", f"the {top_k} most confident images per class" if top_k
         else "every image that passed the labelling thresholds"],
        ["tool", f"fer-synth {stats['tool_version']}"],
    ])]


def _pairs_section(pairs: dict, stats: dict) -> list[str]:
    """How the training pairs were made: the crop, the upscaler, the AU detector, the captions and their checks."""
    steps = pairs["stages"]
    crop = pairs["crop"]
    up = steps.get("upscale", {})
    lines = ["## Training pairs", "",
             "> **These are real people's faces.** Each image is a crop of a photograph of a person; use it only as "
             "its licence and the consent of the people shown allow, and never to identify anyone.", "",
             f"Each face was aligned by its five landmarks and cropped at {crop['size']} px with a margin of "
             f"{crop['margin']:g}. Faces smaller than the crop went through "
             + (f"the super-resolution model `{up['model']}` (sha256 `{str(up.get('sha256'))[:16]}…`)"
                if up.get("model") not in (None, "none") else "a bicubic resize (no super-resolution model)")
             + "; per image: " + ", ".join(f"{k} {v}" for k, v in pairs["upscaled_by"].items()) + "."]
    aus = steps.get("aus")
    if aus:
        missing = aus.get("missing") or []
        lines += ["", f"AU intensities (0-5) were measured by `{aus.get('config', aus.get('model'))}` (sha256 "
                      f"`{str(aus.get('sha256'))[:16]}…`) and stored as named floats of the AU set "
                      f"{', '.join(pairs['au_names'])}" + (f"; it does not measure {', '.join(missing)} (null)"
                                                            if missing else "") + "."]
    else:
        lines += ["", "No AU detector ran: the pairs carry no AU intensities."]
    cap = steps.get("caption", {})
    if cap.get("model") not in (None, "template"):
        lines += ["", f"Captions were written by the vision-language model `{cap['model']}` (sha256 "
                      f"`{str(cap.get('sha256'))[:16]}…`, {cap.get('sampling', 'greedy')} decoding) with the "
                      f"instruction:", "", f"> {cap.get('instruction', '')}"]
    else:
        lines += ["", "Captions were written from a template: the label, the active AUs in words, and what the tool "
                      "measured of the face (no vision-language model)."]
    tokens = pairs.get("caption_tokens")
    check = stats["stages"].get("caption_check", {})
    lines += ["", "Caption checks (too short, too long for the text encoder, an expression that disagrees with the "
                  "label) dropped " + (", ".join(f"{r} {n}" for r, n in check.get("dropped", {}).items()) or "none")
              + (f"; released captions have {tokens['mean']:g} tokens on average, at most {tokens['max']}"
                 if tokens else "") + "."]
    lines += _figure(stats, "pairs", "Pairs: the image, its class and its caption")
    lines += _figure(stats, "caption_lengths", "Caption lengths in text-encoder tokens")
    lines += _figure(stats, "au_by_class", "Mean AU intensity per class")
    return lines


def _privacy_lines(leak: dict | None, collected: bool = False) -> list[str]:
    if collected:
        head = ("**This dataset contains photographs of real people** copied from the source. Publish it only "
                "if you have the right to redistribute these images and the people in them have agreed to this "
                "use.")
        return [head] if not leak else [head, "", *_leak_lines(leak)]
    if not leak:
        return ["All images are generated; no photograph of a real person is included. This build ran no "
                "identity-leak check against real face sets, so it cannot rule out that a generated face "
                "resembles a person in the generator's training data."]
    return ["All images are generated; no photograph of a real person is included.", "", *_leak_lines(leak)]


def _edit_privacy_lines(stats: dict, real_faces: bool) -> list[str]:
    leak = stats.get("identity_leak")
    if real_faces:
        head = ("**This dataset contains edited photographs of real people**: an edit keeps its source's identity "
                f"by design. Consent, as declared by the builder: \"{stats['edit']['source']['consent']}\". Publish "
                "it only if the people shown agreed to this use.")
    else:
        head = ("The source faces are declared synthetic; the edits keep their identities. No photograph of a real "
                "person is included, as far as the sources' declaration holds.")
    return [head] if not leak else [head, "", *_leak_lines(leak)]


def _edit_model_lines(manifest: Manifest, stats: dict, provenance: dict) -> list[str]:
    gen = manifest.generator
    return ["Editing model:", "", _table(["field", "value"], [
        *_model_rows(provenance, stats["edit"].get("lora")),
        ["scheduler / steps / CFG", f"ddim / {gen.steps} / {gen.guidance_scale:g}"],
        ["resolution", f"{gen.width}x{gen.height}"],
        ["AU conditioning", _au_conditioning(stats["edit"].get("au_adapter"))],
        ["semantic guidance", _guidance(stats["edit"].get("guidance"))],
        ["global seed", manifest.seed],
        ["tool", f"fer-synth {stats['tool_version']}"],
    ])]


def _leak_lines(leak: dict) -> list[str]:
    how = (f"calibrated to a false-match rate of {leak['calibration']['target_fmr']:g} on verification pairs"
           if leak.get("threshold_from") == "calibrated" and leak.get("calibration") else "given in the manifest")
    ref = leak["reference"]
    edges, counts = leak["histogram"]["edges"], leak["histogram"]["counts"]
    rows = [[f"{lo:.2f} to {hi:.2f}", c] for lo, hi, c in zip(edges[:-1], edges[1:], counts) if c]
    lines = [f"Every face was embedded "
             f"({leak['backend']}, model sha256 `{leak['model_sha256'][:16]}…`) and compared with "
             f"{ref['count']} real reference faces (index sha256 `{ref['index_sha256'][:16]}…`); faces with a "
             f"cosine similarity of {leak['threshold']:.3f} or more to any of them ({how}) were dropped as "
             f"`identity_leak`: {leak['at_or_above_threshold']} of {leak['count']}. Highest similarity: "
             f"{leak['max']}.", "", _table(["nearest-reference similarity", "faces"], rows)]
    if leak.get("figure"):
        lines += ["", f"![Nearest-reference similarity of every face]({leak['figure']})"]
    if leak["closest"]:
        lines += ["", "Closest pairs:", "", _table(
            ["sample", "reference", "similarity", "dropped"],
            [[c["sample_id"], f"{c['reference_source']}/{c['reference_id']}", f"{c['similarity']:.3f}",
              "yes" if c["dropped"] else "no"] for c in leak["closest"]])]
    return lines


def _balance_section(b: dict, names: list[str]) -> str:
    by = f" within each cell of {', '.join(b['by'])}" if b["by"] else ""
    table = _table(["class", "before", "target", "after", "shortfall"],
                   [[n, b["before"][n], "not capped" if b["target"][n] is None else b["target"][n], b["after"][n],
                     b["shortfall"].get(n, 0)] for n in names])
    return (f"Classes were undersampled to their targets{by}, keeping the most confident images. Imbalance "
            f"(largest / smallest class) {b['imbalance_before']} before, {b['imbalance_after']} after.\n\n" + table)


def _dedupe_lines(d: dict) -> list[str]:
    checks = ["identical pixels" if d["exact"] else None,
              f"a perceptual hash (or its mirror's) within {d['near_distance']} bits"
              if d["near_distance"] is not None else None,
              f"a face embedding ({d['embedder']['backend']}) with cosine similarity {d['embedding_similarity']:g} "
              "or more" if d.get("embedding_similarity") is not None else None]
    checks = [c for c in checks if c]
    if not checks:
        return []
    lines = [f"Duplicates were removed, keeping the most confident copy: {'; '.join(checks)}. "
             f"{d['duplicate_groups']} images had duplicates dropped."]
    if d.get("embedding_similarity") is not None:
        lines[0] += _approximate_search(d)
    if d.get("reference"):
        lines[0] += (f" Images matching any of the {d['reference']['images']} images of the reference set "
                     f"`{d['reference']['index']}` the same way were dropped too.")
    return lines


def _approximate_search(meta: dict) -> str:
    """A sentence when the face-pair search was approximate (FAISS IVF above curation.whole_set.embeddings.EXACT_UP_TO, with
    the cells curation.whole_set.embeddings.probes picks for the threshold)."""
    search = meta.get("face_search") or {}
    if search.get("exact", True):
        return ""
    return (f" With this many faces the pair search was approximate (FAISS IVF, {search.get('nprobe')} of "
            f"{search.get('nlist')} cells probed, more for lower thresholds): a pair whose faces fall in cells "
            "not probed is missed (in the project's benchmark on random vectors, the hardest case, at most 0.3 % "
            "of the pairs at thresholds from 0.45 to 0.95).")


def _identities_lines(m: dict) -> list[str]:
    b, a = m["before"], m["after"]
    if not b["identities"]:
        return ["No face could be embedded, so no identity was formed."]
    cap = (f" At most {m['max_per_identity']} images were kept per identity (the most confident): "
           f"{a['images']} images of {a['identities']} identities remain." if m["max_per_identity"] else "")
    lines = [f"Faces were grouped into identities ({m['embedder']['backend']} embeddings, cosine similarity "
             f"{m['threshold']:g} or more to the identity's first, most confident face): {b['images']} images "
             f"form {b['identities']} identities, {b['mean_images']} images per identity on average, "
             f"{b['singletons']} seen once, largest {b['max_images']}; effective number of identities "
             f"{b['effective_identities']}.{cap}"
             + (f" {m['without_face']} images had no face to embed." if m["without_face"] else "")
             + _approximate_search(m),
             "", _table(["images per identity", "identities"], [[k, v] for k, v in b["size_histogram"].items()])]
    if m["largest"]:
        lines += ["", "Largest identities:", "", _table(
            ["identity (first image)", "images", "kept", "classes"],
            [[g["identity"], g["images"], g["kept"], ", ".join(f"{c}: {n}" for c, n in g["classes"].items())]
             for g in m["largest"]])]
    return lines


LICENCE_ANCHOR = "README.md#licence"  # the card's own "## Licence" section, where the Hub links license_link


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() or c in ".-" else " " for c in text.lower()).split()) or "unknown"


def _model_page(provenance: dict | None) -> str | None:
    """The generator's Hub page, where its licence is (None for a local folder or the built-in model)."""
    if not provenance or provenance["revision"] == "local" or provenance["model"].startswith("builtin:"):
        return None
    return f"https://huggingface.co/{provenance['model']}"


def source_licence(declared: str | None) -> dict | None:
    """The card's licence metadata from an images source's declared licence (``images.license``), or None."""
    from cards.hub_metadata import HUB_LICENSES

    if declared is None:
        return None
    if declared in HUB_LICENSES and declared != "other":
        return {"license": declared}
    name = "source-images-licence" if declared == "other" else _slug(declared)
    return {"license": "other", "license_name": name, "license_link": LICENCE_ANCHOR}


def card_licence(provenance: dict | None) -> dict:
    """The card's licence metadata, from the generator's model card (``provenance['license']``).

    A Hub licence id is used as it is: ``{"license": id}``. Anything else is ``license: other``, which the Hub
    wants with ``license_name`` (an id) and ``license_link`` (a URL or a file of the repo):

    - ``license_name``: the generator's licence text as an id when its model card has one that is not a Hub
      id; ``generator-model-licence`` when the model card says ``other`` (its own name for it is on its page);
      ``unknown`` when the model card names no licence, and for an images source, whose licence is the source
      images' and unknown to the tool;
    - ``license_link``: the generator's Hub page when it came from the Hub, else the card's own Licence
      section (``README.md#licence``), which says what is known and what to check.
    """
    from cards.hub_metadata import HUB_LICENSES

    model = (provenance or {}).get("license")
    if isinstance(model, str) and model in HUB_LICENSES and model != "other":
        return {"license": model}
    if not isinstance(model, str) or not model.strip() or provenance is None:
        name = "unknown"
    else:
        name = "generator-model-licence" if model == "other" else _slug(model)
    return {"license": "other", "license_name": name, "license_link": _model_page(provenance) or LICENCE_ANCHOR}


def _licence_lines(licence: dict, provenance: dict | None, declared: str | None = None) -> list[str]:
    """The card's Licence section: what the metadata says and where it comes from."""
    if provenance is None and declared is not None:
        named = f"`license: {licence['license']}`" + (f", `license_name: {licence['license_name']}`"
                                                       if licence["license"] == "other" else "")
        return [f"{named}: the licence the publisher declared for the source images (`images.license: "
                f"{declared}`). The images are copies of them (cropped, aligned, maybe upscaled), so this dataset "
                "is bound by that licence and by the consent of the people shown; the tool did not verify either."]
    if provenance is None:
        return [f"`license: other`, `license_name: {licence['license_name']}`: the images are copies of the source "
                "images, so this dataset's licence is theirs, and the tool cannot know it. Find the source's licence "
                "and the consent of the people shown, and set `license` (a Hub licence id) or `license_name` and "
                "`license_link` to it, before publishing."]
    model, page = provenance["model"], _model_page(provenance)
    where = f" ({page})" if page else ""
    if licence["license"] != "other" and model == BUILTIN_TINY_MODEL:
        return [f"`license: {licence['license']}`: the built-in model's weights are random, made by this tool, and "
                "under the tool's licence."]
    if licence["license"] != "other":
        return [f"`license: {licence['license']}`: the licence the generator `{model}`{where} declares in its model "
                "card. Generated images are bound by the use terms of the model that made them; check that its "
                "licence allows the use you intend, and change `license` if you release the images under other "
                "terms."]
    declared = provenance.get("license")
    said = (f"its model card declares a licence that is not a Hub id (`{declared}`)" if declared not in (None, "other")
            else "its model card declares its own licence (`other`) without a Hub id" if declared == "other"
            else "its model card names no licence")
    return [f"`license: other`, `license_name: {licence['license_name']}`, `license_link: {licence['license_link']}`: "
            f"this dataset's images come from the generator `{model}`{where}, and {said}. Read the model's licence"
            + (" on its page" if page else "") + " before publishing, and set `license` (a Hub licence id) or "
            "`license_name` and `license_link` to the terms the images are released under."]


def hub_configs(files: dict[str, list[str]]) -> list[dict]:
    """The card's ``configs``: the default config's splits and, when anything was dropped, 'rejected'."""
    from cards.export import REJECTED

    configs = [{"config_name": "default", "default": True,
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in files if split != REJECTED]}]
    if REJECTED in files:
        configs.append({"config_name": REJECTED,
                        "data_files": [{"split": REJECTED, "path": f"data/{REJECTED}-*"}]})
    return configs


def _figure(stats: dict, name: str, caption: str) -> list[str]:
    path = stats.get("figures", {}).get(name)
    return ["", f"![{caption}]({path})"] if path else []


def _files_lines(files: dict[str, list[str]]) -> list[str]:
    from cards.export import REJECTED

    lines = ["Files: " + "; ".join(f"`{name}` {len(paths)} parquet shard{'s' if len(paths) != 1 else ''}"
                                   for name, paths in files.items()) + ". Load with `datasets.load_dataset(REPO)`."]
    if REJECTED in files:
        lines[0] += (" Every dropped sample, with the stage, reason and detail that dropped it (and its image where "
                     "one was made), is in the `rejected` config: `load_dataset(REPO, \"rejected\")`.")
    else:
        lines[0] += (" No sample was dropped, so this release has no `rejected` config (`datasets` cannot load a "
                     "config without rows).")
    return lines


def _coverage_lines(coverage: dict) -> list[str]:
    """A warning for each split that lacks a released class or holds very few of its images."""
    if not coverage:
        return []
    from cards.splits import FEW_PER_CLASS

    lines = ["", "> **Uneven splits.** Per-class results on these splits are unreliable:"]
    for split, gaps in coverage.items():
        said = []
        if gaps["missing"]:
            said.append(f"no image of {', '.join(gaps['missing'])}")
        if gaps["few"]:
            said.append(f"fewer than {FEW_PER_CLASS} images of " + ", ".join(f"{c} ({n})" for c, n in gaps["few"].items()))
        lines.append(f"> - `{split}`: {'; '.join(said)}")
    return lines


def _review_line(r: dict) -> str:
    where = (f"in FiftyOne (dataset `{r['dataset']}`)" if r.get("source", "fiftyone") == "fiftyone" and r["dataset"]
             else "(a decisions file)")
    return (f"A reviewer looked at the samples {where} and tagged {r['decisions']}: "
            f"{r['rejected']} rejected (`reviewer_reject`), {r['relabelled']} relabelled (disposition "
            f"`reviewer_relabelled`, `target_label` kept)" + (f"; {r['not_released']} tags were on samples a stage "
                                                            "had already dropped" if r["not_released"] else "") + ".")


def _detector(manifest: Manifest) -> str:
    """The detector whose faces the labellers saw: the faces stage's when it ran (they reuse its face)."""
    faces = manifest.curation.faces
    return "SCRFD" if faces.enabled and faces.detector == "scrfd" else "MTCNN"


def render_card(manifest: Manifest, stats: dict, provenance: dict | None, root=None, columns=None):
    """A ``huggingface_hub.DatasetCard`` for the build (``provenance`` is None for an images source;
    ``columns``: the (stage, Column) pairs the stages declared, listed in the card)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    released = stats["released"]
    collected = manifest.images is not None
    edited = manifest.edit is not None
    real_faces = collected or (edited and not manifest.edit.sources_are_synthetic)
    declared = manifest.images.license if collected else manifest.edit.license if edited else None
    licence = source_licence(declared) or card_licence(provenance)
    pairs = stats.get("annotate")
    data = DatasetCardData(
        pretty_name=manifest.name,
        **licence,
        task_categories=["image-classification", *(["text-to-image"] if pairs else [])],
        annotations_creators=["machine-generated"],
        **({} if collected else {"language_creators": ["machine-generated"], "source_datasets": ["original"]}),
        size_categories=[size_category(released["total"])],
        tags=["facial-expression-recognition", "fer"] + (["pseudo-labels"] if collected else ["synthetic-data"])
        + (["expression-editing"] if edited else [])
        + (["training-pairs"] if pairs else []),
        **({"configs": hub_configs(stats["files"])} if stats.get("files") else {}),
    )
    names = list(manifest.labels.names)
    split_names = list(released["splits"])
    n_classes = sum(1 for n in names if released["classes"].get(n))

    parts = [f"# {manifest.name} {manifest.version}", ""]
    if collected:
        parts.append(manifest.description.strip() or "Facial expression labels for an existing image collection.")
        parts += ["", f"Built by `build-dataset` from a manifest with an `images` source: {released['total']} of "
                      f"{stats['source']['count']} existing images, pseudo-labelled by the labellers below into "
                      f"{n_classes} expression classes (label map `{manifest.labels.label_map}`). The images are "
                      "not generated: they are copies of the source's images."]
    elif edited:
        parts.append(manifest.description.strip() or "Facial expression edits of existing faces.")
        parts += ["", f"Built by `build-dataset` from a manifest with an `edit` source: {released['total']} images, "
                      f"edits of {stats['edit']['source']['count']} source images to {len(manifest.edit_targets)} "
                      f"target expressions (label map `{manifest.labels.label_map}`) with `{provenance['model']}`; "
                      "each edit keeps its source's person (checked) and is labelled like a generated image."]
    else:
        parts.append(manifest.description.strip() or "A synthetic facial expression recognition (FER) dataset.")
        parts += ["", f"Built by `build-dataset` from a synthesis manifest: {released['total']} images over "
                      f"{n_classes} expression classes (label map `{manifest.labels.label_map}`), generated with "
                      f"`{provenance['model']}`."]
    if not collected and manifest.generator.model == BUILTIN_TINY_MODEL:
        parts += ["", "> **These images are not faces.** They come from the tool's built-in tiny pipeline with "
                      "random weights (`builtin:tiny-sd`), which exists to exercise the tool offline. "
                      "Do not train or evaluate a model on this dataset."]
    parts += ["", "## Contents", "", _table(
        ["class", "label id", *split_names, "total"],
        [[n, i, *(released["class_by_split"][s].get(n, 0) for s in split_names), released["classes"].get(n, 0)]
         for i, n in enumerate(names)],
    )]
    parts += _coverage_lines(released.get("split_coverage") or {})
    parts += _figure(stats, "samples", "Samples per class (lowest sample index first; the count in brackets)")
    parts += _figure(stats, "classes", "Released images per class and split")
    for axis, table in released.get("by_attribute", {}).items():
        values = sorted({v for counts in table.values() for v in counts})
        parts += ["", f"Images per class and `{axis}` (released):", "", _table(
            ["class", *values], [[n, *(table[n].get(v, 0) for v in values)] for n in names if n in table])]
    if stats.get("files"):
        parts += ["", *_files_lines(stats["files"])]
    label_note = "the labellers' class" if collected else "the expression"
    parts += ["", "Columns (each stage declares its own): `image`, `label` (ClassLabel: " + label_note + ")"
                  + "".join(f", `{c.name}` ({c.doc})" for _, c in columns or ()) + "."]
    if collected:
        parts += ["", *_source_section(stats)]
        if pairs:
            parts += ["", *_pairs_section(pairs, stats)]
    elif edited:
        from cards.edit_section import edit_lines

        parts += ["", *edit_lines(stats["edit"], split_names, stats.get("figures", {}).get("identity_similarity")),
                  "", *_edit_model_lines(manifest, stats, provenance)]
    else:
        parts += ["", *_generation_section(manifest, stats, provenance)]
    parts += ["", "## Processing funnel", "", _table(
        ["stage", "in", "kept", "dropped (reason: count)"],
        [[name, s["in"], s["kept"], ", ".join(f"{r}: {c}" for r, c in s["dropped"].items()) or "none"]
         for name, s in stats["stages"].items()],
    )]
    parts += _figure(stats, "funnel", "Samples into each stage, kept and dropped")
    parts += ["", "## Labels", "", *_labels_section(stats.get("labelling"), collected, _detector(manifest),
                                                   (stats.get("source") or {}).get("labels"))]
    dedupe = stats["stages"].get("dedupe", {}).get("meta")
    if dedupe and _dedupe_lines(dedupe):
        parts += ["", "## Duplicates", "", *_dedupe_lines(dedupe)]
    identities = stats["stages"].get("identities", {}).get("meta")
    if identities:
        parts += ["", "## Identities", "", *_identities_lines(identities)]
    balance = stats["stages"].get("balance", {}).get("meta")
    if balance:
        parts += ["", "## Balance", "", _balance_section(balance, names)]
    review = stats["stages"].get("review", {}).get("meta")
    if review:
        parts += ["", "## Human review", "", _review_line(review)]
    if collected:
        parts += ["", "## Intended use and limitations", "",
                  "Research on facial expression recognition. Every label is a machine prediction (a pseudo-label), "
                  "not a human annotation; the labellers' own biases and errors carry over to it. The licence of "
                  "this dataset cannot be more permissive than the licence of the source images: check it "
                  "before publishing."]
        parts += ["", "## Licence", "", *_licence_lines(licence, None, declared)]
        parts += ["", "## Privacy", "", *_privacy_lines(stats.get("identity_leak"), collected=True)]
    elif edited:
        parts += ["", "## Intended use and limitations", "",
                  "Research on facial expression recognition: the same people across expression classes, so a "
                  "classifier learns expression rather than identity. Every label is the labellers' verdict on an "
                  "edit, not a human annotation; an edit can carry the generator's biases and artefacts, and the "
                  "identity check is only as good as its embedder."]
        parts += ["", "## Licence", "", f"`license: {licence['license']}`"
                  + (f" (from `edit.license: {declared}`)" if declared else " (from the editing model; the source "
                     "images' licence was not declared: set edit.license)")
                  + f". The images are edits of the source images made with `{provenance['model']}`: they are bound "
                  "by the source images' licence, by the model's use terms and by the consent of the people shown; "
                  "the tool did not verify any of them."]
        parts += ["", "## Privacy", "", *_edit_privacy_lines(stats, real_faces)]
    else:
        parts += ["", "## Intended use and limitations", "",
                  "Research on facial expression recognition with synthetic training data. Prompted demographic "
                  "attributes describe the prompt, not a verified property of the image. Synthetic images can carry "
                  "the biases of the generator and its training data."]
        parts += ["", "## Licence", "", *_licence_lines(licence, provenance)]
        parts += ["", "## Privacy", "", *_privacy_lines(stats.get("identity_leak"))]
    if root is not None:  # results of `build-dataset evaluate` live in the build folder (eval/), not in stats
        from cards.evaluation_section import evaluation_section

        section = evaluation_section(root)
        if section:
            parts += ["", *section]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts) + "\n")
