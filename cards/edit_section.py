"""What an ``edit`` build reports: the sources and their consent, the edit settings, the identity check (its
similarity histogram) and how often the edits reached their target expression; for stats.json and the card."""
from __future__ import annotations

from collections import Counter

from builder.core.records import Record
from builder.core.shards import ShardStore


def edit_stats(store: ShardStore, stages: list[str], shards: range, labelled: list[Record]) -> dict | None:
    """The edit report (None without an ``edit`` stage). ``labelled``: what the shard stages kept."""
    if "edit" not in stages or not shards:
        return None
    from curation.identity.calibrate import HIST_BINS, histogram

    meta = store.stats("edit", 0)["meta"]
    after = stages[stages.index("identity_drift"):] if "identity_drift" in stages else []
    measured = [r for r in labelled] + [r for stage in after for s in shards for r in store.rejected(stage, s)]
    values = [r.scores["identity_similarity"] for r in measured if "identity_similarity" in r.scores]
    drift = {}
    if "identity_drift" in stages:
        drift_meta = store.stats("identity_drift", 0)["meta"]
        dropped = Counter(r.drop.reason for s in shards for r in store.rejected("identity_drift", s))
        drift = {**drift_meta, "measured": len(values), "dropped": dict(sorted(dropped.items())),
                 "mean": round(sum(values) / len(values), 4) if values else None,
                 "min": min(values) if values else None, "max": max(values) if values else None,
                 "histogram": {"edges": HIST_BINS.tolist(), "counts": histogram(values)}}
    # the expression reached: the labellers' verdict on every edit that came to them, per target class
    judged = [r for r in labelled if r.labelling] + [r for s in shards for r in store.rejected("label", s)
                                                     if r.labelling] if "label" in stages else []
    per_target = {}
    for record in judged:
        row = per_target.setdefault(record.labelling["target"] or "", Counter())
        row["judged"] += 1
        row[record.labelling["disposition"]] += 1
    confirmed = sum(row["confirmed"] for row in per_target.values())
    return {"source": meta["source"], "settings": meta["settings"], "au_adapter": meta.get("au_adapter"),
            "guidance": meta.get("guidance"), **({"lora": meta["lora"]} if meta.get("lora") else {}),
            "identity": drift,
            "expression": {"judged": len(judged), "confirmed": confirmed,
                           "success_rate": round(confirmed / len(judged), 4) if judged else None,
                           "per_target": {n: dict(sorted(c.items())) for n, c in sorted(per_target.items())}}}


def edit_lines(edit: dict, split_names: list[str], figure: str | None) -> list[str]:
    """The card's '## Edits' section."""
    src, settings, drift, expression = edit["source"], edit["settings"], edit["identity"], edit["expression"]
    kind = "synthetic faces" if src["synthetic"] else "**photographs of real people**"
    lines = ["## Edits", "",
             f"Every image is an edit of one of {src['count']} source images ({kind}, `{src['root']}`, listing "
             f"sha256 `{src['listing_sha256'][:16]}…`, licence {src.get('license') or 'not declared'}) to a target "
             f"expression: DDIM inversion of the source to strength {settings['strength']:g} of "
             f"{settings['steps']} steps, then denoising towards the target prompt with classifier-free guidance "
             f"{settings['guidance_scale']:g}, the source's self-attention keys and values injected for the first "
             f"{settings['inject_steps']} steps ({settings['inject_layers']} layers). Splits are grouped by the "
             f"person a source shows (`source_identity`): no person is in two of {', '.join(split_names)}."]
    if not src["synthetic"]:
        lines += ["", f"Consent, as declared by the builder: \"{src['consent']}\"."]
    if drift:
        dropped = drift["dropped"]
        lines += ["", f"Identity check: the face of each edit was embedded ({drift['backend']}, model sha256 "
                      f"`{drift['model_sha256'][:16]}…`) and compared with its source's; edits below a cosine "
                      f"similarity of {drift['min_similarity']:g} were dropped as `identity_drift`: "
                      f"{dropped.get('identity_drift', 0)} of {drift['measured']} measured ("
                      f"{dropped.get('no_face', 0)} without a face). Similarity mean {drift['mean']}, "
                      f"min {drift['min']}, max {drift['max']}."]
        if figure:
            lines += ["", f"![Identity similarity of every edit to its source]({figure})"]
    if expression["judged"]:
        rate = expression["success_rate"]
        lines += ["", f"Expression reached: the labellers confirmed the target class of {expression['confirmed']} "
                      f"of {expression['judged']} edits they judged ({rate:.1%})."]
    return lines
