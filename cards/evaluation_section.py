"""The data card's "Evaluation" section, read from the results ``build-dataset evaluate`` left in ``OUT/eval/``.

Evaluation (``evaluation``) computes and writes ``<name>.json``, the predictions and the confusion figure; this
module presents them: ``<name>.md`` (one result's card fragment), and the section between two HTML comments in
``OUT/README.md`` (``update_card``; ``cards/card.py`` renders the same lines at every release). The card reads
the JSON reports only: it never imports evaluation. No torch, no numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

from builder.core.shards import write_durably

KIND = "fer-synth-evaluation"
"""The ``kind`` of an evaluation result JSON (``evaluation.report`` writes it)."""
BEGIN = "<!-- fer-synth:evaluation -->"
END = "<!-- /fer-synth:evaluation -->"


def write_fragment(out: Path, result: dict) -> Path:
    """``OUT/eval/<name>.md``: the card fragment of one result."""
    path = Path(out) / "eval" / result["files"]["card_fragment"]
    write_durably(path, "\n".join(fragment(result)) + "\n")
    return path


def backbone_label(b: dict) -> str:
    """How the card names a backbone: the Hub id, or a local file or folder by its name (no local paths)."""
    if b.get("source") == "hub":
        return b["id"]
    if b.get("kind") == "ir50":
        return f"ir50:{Path(b['path']).name}" if b.get("path") else "ir50 (random init)"
    return f"{Path(str(b['id']).rstrip('/')).name} (local)"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _train_text(r: dict) -> str:
    train = f"{r['train']['samples']} synthetic images"
    real = r.get("train_real")
    if real and r["mix"]["ratio"] >= 1:
        return f"real `{Path(real['source']).name}` only ({real['samples']} images; mix 1, the baseline)"
    if real:
        mix = r["mix"]
        train += (f" + real `{Path(real['source']).name}` ({real['samples']} images) at mix {mix['ratio']:g} "
                  f"({mix['synthetic_per_epoch']} synthetic + {mix['real_per_epoch']} real per epoch)")
    return train


def _overlap_text(r: dict) -> str | None:
    """One sentence on the test set's overlap with the training data (None for results from before the check)."""
    o = r.get("overlap")
    if not o:
        return None
    counts = f"{o['exact']} exact, {o['near']} near duplicates (pHash distance <= {o['threshold']})"
    if not (o["exact"] or o["near"]):
        return f"Overlap with the training data: {counts}."
    return (f"> **Overlap with the training data**: {counts} among the {o['test_images']} test images; run with "
            "`--allow-overlap`, so these numbers overstate how the model does on images it has not seen.")


def fragment(r: dict) -> list[str]:
    """The card fragment (markdown lines) of one result."""
    m, cfg, b = r["metrics"], r["config"], r["backbone"]
    lines = [f"### {r['name']}", ""]
    overlap = _overlap_text(r)
    if overlap and overlap.startswith(">"):
        lines += [overlap, ""]
    if r.get("guard_overridden"):
        lines += ["> **guard_overridden**: the evaluator is a model that guided or labelled this dataset "
                  f"({'; '.join(c['where'] for c in r['guard']['conflicts'])}); run with `--force`, so these "
                  "numbers do not measure the dataset independently.", ""]
    digest = f", weights sha256 `{b['weights_sha256'][:12]}…`" if b.get("weights_sha256") else ""
    lines += [f"`{backbone_label(b)}` ({cfg['mode']}, {cfg['epochs']} epochs, seed {cfg['seed']}, {b['input_size']} px"
              f"{digest}, "
              f"faces {'aligned' if r['faces']['align'] else 'not aligned'}), trained on {_train_text(r)}, tested on "
              f"`{Path(r['test']['source']).name}` ({r['test']['samples']} images).", "",
              "| metric | value |", "|---|---|",
              f"| accuracy | {_pct(m['accuracy'])} |", f"| macro (mean-class) accuracy | {_pct(m['macro_accuracy'])} |",
              f"| macro F1 | {_pct(m['macro_f1'])} |",
              f"| accuracy over all test samples | {_pct(m['accuracy_all_test_samples'])} |", "",
              f"Computed over the {len(m['evaluated_classes'])} classes both sides share "
              f"({', '.join(m['evaluated_classes'])}): {m['samples_evaluated']} of {m['samples_total']} test samples."]
    if overlap and not overlap.startswith(">"):
        lines.append(overlap)
    cov = r["coverage"]
    if m["samples_unpredictable"]:
        lines.append(f"{m['samples_unpredictable']} test samples belong to classes the model cannot predict "
                     f"({', '.join(f'{k}: {v}' for k, v in cov['unpredictable_test_samples'].items())}); "
                     "they are left out above and count as errors in the last row.")
    if cov["model_classes_not_in_test"]:
        lines.append(f"Model classes the test set lacks: {', '.join(cov['model_classes_not_in_test'])}.")
    if cov["build_classes_without_training_samples"]:
        lines.append("Classes of the label map with no training sample (not predicted): "
                     f"{', '.join(cov['build_classes_without_training_samples'])}.")
    lines += ["", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {c['support']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |"
              for name, c in m["per_class"].items()]
    lines += ["", f"![Confusion matrix of {r['name']}](eval/{r['files']['confusion']})"]
    return lines


def results(out: Path) -> list[dict]:
    """Every evaluation result in ``OUT/eval``, by name."""
    folder = Path(out) / "eval"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == KIND:
            found.append(data)
    return found


def headline_lines(headline: dict) -> list[str]:
    """Bullet lines of a report's headline figures (``report.json``'s ``headline``; ``cards.report`` writes it)."""
    lines = [f"- Best test accuracy on `{b['test_set']}`: {_pct(b['accuracy'])} (macro {_pct(b['macro_accuracy'])}; "
             f"`{b['name']}`, {b['trained_on']})" for b in headline.get("best_test_accuracy") or ()]
    if headline.get("results_guard_overridden"):
        lines.append(f"- {headline['results_guard_overridden']} result(s) run with `--force` (guard overridden) are "
                     "left out of the headline")
    for sw in headline.get("sweeps") or ():
        acc = sw["accuracy"]
        if sw["sweep"] == "scaling":
            first = sw["first"]["accuracy"]
            lines.append(f"- Scaling (`{sw['name']}`) on `{sw['test']}`: {_pct(first['mean'])} at "
                         f"{sw['first']['point']} to {_pct(acc['mean'])} ± {100 * acc['std']:.1f} at {sw['point']}")
        else:
            gain = sw["gain"] or {"mean": 0.0, "std": 0.0}
            lines.append(f"- Real + synthetic (`{sw['name']}`) on `{sw['test']}`: best at {sw['point']}, "
                         f"{_pct(acc['mean'])}, {100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} points over "
                         "real only")
    f = headline.get("fidelity")
    if f:
        kid = "n/a" if f.get("kid") is None else f"{f['kid']:.4g} ± {f['kid_std']:.2g}"
        fd = "n/a" if f.get("fd") is None else f"{f['fd']:.4g}"
        lines.append(f"- Fidelity against `{f['reference']}` in `{f['encoder']}` space: FD {fd}, KID {kid} "
                     f"({f['release_images']} vs {f['reference_images']} images)")
    for a in headline.get("audit") or ():
        if a.get("agreement") is None:
            lines.append(f"- Audit of {a['attribute']} (`{a['classifier']}`): predicted distribution only (no prompted "
                         "value matches its labels)")
        else:
            lines.append(f"- Audit of {a['attribute']} (`{a['classifier']}`): agreement with the prompts "
                         f"{_pct(a['agreement'])}, total variation distance asked vs predicted {a['tvd']:.3f}")
    return lines


def report_headline(out) -> list[str]:
    """The card's "Report headline" block from ``OUT/report/report.json``; [] without a (readable) report."""
    path = Path(out) / "report" / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return []
    if not isinstance(report, dict) or report.get("kind") != "fer-synth-report":
        return []
    lines = headline_lines(report.get("headline") or {})
    if not lines:
        return []
    return ["### Report headline", "", "From the latest report ([report/report.md](report/report.md), "
            "`build-dataset report`):", "", *lines]


def evaluation_section(out) -> list[str]:
    """Markdown lines for the data card: the latest report's headline (when ``OUT/report/report.json`` exists),
    a table of every result in ``OUT/eval/*.json``, then each fragment.

    Starts with an HTML comment marker and "## Evaluation"; [] when the build has neither evaluation nor report.
    """
    found = results(Path(out))
    head = report_headline(out)
    if not found and not head:
        return []
    if not found:
        return [BEGIN, "## Evaluation", "", *head, END]
    lines = [BEGIN, "## Evaluation", "", *(head + [""] if head else []),
             "Classifiers trained on this dataset (`build-dataset evaluate`) and tested on real labelled images; "
             "metrics over the classes both sides share. Results, predictions and figures are in `eval/`.", "",
             "| result | backbone | mode | trained on | test set | accuracy | macro accuracy | macro F1 | guard |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in found:
        m = r["metrics"]
        guard = "**overridden**" if r.get("guard_overridden") else "passed"
        lines.append(f"| {r['name']} | `{backbone_label(r['backbone'])}` | {r['config']['mode']} | {_train_text(r)} | "
                     f"`{Path(r['test']['source']).name}` | {_pct(m['accuracy'])} | {_pct(m['macro_accuracy'])} | "
                     f"{_pct(m['macro_f1'])} | {guard} |")
    for r in found:
        lines += ["", *fragment(r)]
    return [*lines, END]


def update_card(out: Path) -> bool:
    """Put ``evaluation_section`` into ``OUT/README.md`` (replacing the previous one); False without a card."""
    card = Path(out) / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    section = "\n".join(evaluation_section(out))
    if BEGIN in text and END in text:  # in place, wherever the card put it
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    elif section:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_durably(card, text)
    return True
