"""``build-dataset report``: one page over every result a build folder holds.

Reads (never computes, never imports ``evaluation``; no torch, no numpy) the evaluation results
``OUT/eval/*.json`` (kind ``fer-synth-evaluation``), the demographic audit ``OUT/eval/audit.json``
(``fer-synth-audit``), the fidelity result ``OUT/fidelity/fidelity.json`` (``fer-synth-fidelity``), and lists
any other JSON in ``OUT/eval/`` (a sweep, a newer kind) by file and kind, and any figure not shown otherwise. It
writes ``OUT/report/report.json`` (headline figures, one summary per result, the files read) and
``OUT/report/report.md`` (the page, figures linked relatively). Headline: the best test accuracy per test set
(results run with ``--force`` left out), Frechet distance and KID overall, the audit's agreement and gap per
attribute. The data card's "Report headline" block (``cards.evaluation_section``) reads ``report.json``.
``evaluate``, ``fidelity`` and ``audit`` rewrite the report when they finish (it only reads JSON files).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from builder.core.shards import write_durably
from cards.evaluation_section import KIND as EVALUATION_KIND
from cards.evaluation_section import _pct, _train_text, backbone_label, headline_lines

KIND = "fer-synth-report"
AUDIT_KIND = "fer-synth-audit"
FIDELITY_KIND = "fer-synth-fidelity"
SWEEP_KIND = "fer-synth-evaluation-sweep"
OTHER = "(other)"


def model_label(info: dict) -> str:
    """A Hub id, or a local folder by its name (no local paths in reports)."""
    given = str(info.get("given") or info.get("id"))
    return given if info.get("source") == "hub" else f"{Path(given.rstrip('/')).name} (local)"


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def gather(out: Path) -> dict:
    """What ``OUT`` holds: evaluation results, audit, fidelity, other JSON files, figures."""
    out = Path(out)
    found = {"evaluations": [], "sweeps": [], "audit": None, "fidelity": None, "other": [], "figures": []}
    folder = out / "eval"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == EVALUATION_KIND:
            found["evaluations"].append((path.name, data))
        elif kind == AUDIT_KIND:
            found["audit"] = (path.name, data)
        elif kind == SWEEP_KIND and isinstance(data.get("summary"), list):
            found["sweeps"].append((path.name, data))
        else:
            entry = {"file": f"eval/{path.name}", "kind": kind,
                     "note": "not valid JSON" if data is None else ("no 'kind'" if kind is None else "kind not known "
                                                                    "to this version of the report")}
            if isinstance(data, dict):
                entry["keys"] = sorted(data)[:12]
                for key in ("name", "summary", "description"):
                    if isinstance(data.get(key), str):
                        entry[key] = data[key]
            found["other"].append(entry)
    fidelity = out / "fidelity" / "fidelity.json"
    data = _read(fidelity) if fidelity.is_file() else None
    if isinstance(data, dict) and data.get("kind") == FIDELITY_KIND:
        found["fidelity"] = ("fidelity.json", data)
    shown = ({r["files"].get("confusion") for _, r in found["evaluations"]} | {"audit.png"}
             | {r.get("files", {}).get("figure") for _, r in found["sweeps"]})
    found["figures"] = [f"eval/{p.name}" for p in sorted(folder.glob("*.png")) if p.name not in shown] \
        if folder.is_dir() else []
    return found


def _test_set(r: dict) -> str:
    t = r["test"]
    return Path(str(t["source"]).rstrip("/")).name + (f" ({t['split']})" if t.get("split") else "")


def _evaluation(file: str, r: dict) -> dict:
    m = r["metrics"]
    return {"file": f"eval/{file}", "name": r["name"], "backbone": backbone_label(r["backbone"]),
            "mode": r["config"]["mode"], "trained_on": _train_text(r), "test_set": _test_set(r),
            "accuracy": m["accuracy"], "macro_accuracy": m["macro_accuracy"], "macro_f1": m["macro_f1"],
            "guard_overridden": bool(r.get("guard_overridden")),
            "confusion": f"eval/{r['files']['confusion']}", "seconds": (r.get("seconds") or {}).get("total")}


def _sweep(file: str, r: dict) -> dict:
    """A sweep's summary rows: per (point, test set) accuracy and macro accuracy over seeds (and the gain over real
    only for mixes)."""
    def stats(x):
        return None if x is None else {"mean": x["mean"], "std": x["std"]}

    figure = (r.get("files") or {}).get("figure")
    return {"file": f"eval/{file}", "name": r["name"], "sweep": r["sweep"], "backbone": backbone_label(r["backbone"]),
            "seeds": r.get("seeds"), "figure": f"eval/{figure}" if figure else None,
            "guard_overridden": bool(r.get("guard_overridden")),
            "rows": [{"point": row["point"], "test": row["test"], "accuracy": stats(row["accuracy"]),
                      "macro_accuracy": stats(row["macro_accuracy"]), "gain": stats(row.get("gain"))}
                     for row in r["summary"]],
            "seconds": (r.get("seconds") or {}).get("total")}


def _sweep_headline(sweeps: list[dict]) -> list[dict]:
    """Per sweep and test set: scaling, the accuracy at the largest point; mixes, the ratio with the best gain."""
    out = []
    for sw in sweeps:
        if sw["guard_overridden"] or sw["sweep"] not in ("scaling", "mixes"):
            continue
        for test in dict.fromkeys(r["test"] for r in sw["rows"]):
            rows = [r for r in sw["rows"] if r["test"] == test]
            if sw["sweep"] == "scaling":
                row = rows[-1]
                out.append({"name": sw["name"], "sweep": "scaling", "test": test, "point": row["point"],
                            "accuracy": row["accuracy"], "first": {"point": rows[0]["point"],
                                                                   "accuracy": rows[0]["accuracy"]}})
            else:
                gains = [r for r in rows if r["gain"] is not None and r["point"] != rows[0]["point"]] or rows
                row = max(gains, key=lambda r: (r["gain"] or {"mean": 0})["mean"])
                out.append({"name": sw["name"], "sweep": "mixes", "test": test, "point": row["point"],
                            "accuracy": row["accuracy"], "gain": row["gain"]})
    return out


def _fidelity(r: dict) -> dict:
    o = r["overall"]
    return {"file": "fidelity/fidelity.json", "encoder": model_label(r["encoder"]),
            "reference": Path(str(r["reference"].get("source", "?")).rstrip("/")).name,
            "fd": o["fd"], "kid": o["kid"]["mean"] if o.get("kid") else None,
            "kid_std": o["kid"]["std"] if o.get("kid") else None, "release_images": o["release_images"],
            "reference_images": o["reference_images"],
            "per_class": [{k: c.get(k) for k in ("class", "reference_class", "fd", "status")} | {
                "kid": (c.get("kid") or {}).get("mean")} for c in r.get("per_class", [])],
            "diversity": {"release": r["diversity"]["release"]["class_mean"],
                          "reference": r["diversity"]["reference"]["class_mean"], "metric": r["diversity"]["metric"]},
            "seconds": (r.get("seconds") or {}).get("total")}


def _audit(r: dict) -> dict:
    return {"file": "eval/audit.json", "figure": "eval/audit.png", "images": r["images"], "faces": r["faces"]["mode"],
            "attributes": [{"attribute": a["attribute"], "classifier": model_label(a["classifier"]),
                            "labels": a["labels"], "mapping": a["mapping"], "unmapped_values": a["unmapped_values"],
                            "labels_counted_as_other": a["labels_counted_as_other"],
                            **{k: a["overall"].get(k) for k in ("images", "compared_images", "groups", "manifest",
                                                                   "asked", "predicted", "predicted_labels",
                                                                   "agreement", "tvd", "tvd_manifest")}}
                           for a in r["attributes"]],
            "seconds": (r.get("seconds") or {}).get("total")}


def headline(evaluations: list[dict], fidelity: dict | None, audit: dict | None,
             sweeps: list[dict] | None = None) -> dict:
    best: dict[str, dict] = {}
    for e in evaluations:
        if e["guard_overridden"]:
            continue
        if e["test_set"] not in best or e["accuracy"] > best[e["test_set"]]["accuracy"]:
            best[e["test_set"]] = e
    return {
        "best_test_accuracy": [{k: e[k] for k in ("test_set", "accuracy", "macro_accuracy", "name", "backbone",
                                                  "trained_on")} for _, e in sorted(best.items())],
        "results_guard_overridden": sum(e["guard_overridden"] for e in evaluations),
        "sweeps": _sweep_headline(sweeps or []),
        "fidelity": None if fidelity is None else {k: fidelity[k] for k in ("encoder", "reference", "fd", "kid",
                                                                          "kid_std", "release_images",
                                                                          "reference_images")},
        "audit": [] if audit is None else [{k: a[k] for k in ("attribute", "classifier", "agreement", "tvd",
                                                              "tvd_manifest", "compared_images")}
                                           for a in audit["attributes"]],
    }


def build_report(out: Path) -> dict:
    """The report of ``OUT`` (what ``report.json`` holds)."""
    out = Path(out)
    found = gather(out)
    evaluations = [_evaluation(f, r) for f, r in found["evaluations"]]
    sweeps = [_sweep(f, r) for f, r in found["sweeps"]]
    fidelity = _fidelity(found["fidelity"][1]) if found["fidelity"] else None
    audit = _audit(found["audit"][1]) if found["audit"] else None
    dataset = {}
    build = _read(out / "build.json") if (out / "build.json").is_file() else None
    if isinstance(build, dict):
        dataset = {"name": build.get("manifest", {}).get("name", out.name),
                   "version": build.get("manifest", {}).get("version"), "fingerprint": build.get("fingerprint")}
    return {"kind": KIND, "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset": dataset,
            "headline": headline(evaluations, fidelity, audit, sweeps), "evaluations": evaluations,
            "sweeps": sweeps, "fidelity": fidelity,
            "audit": audit, "other_results": found["other"], "other_figures": found["figures"],
            "seconds": {"evaluations": [e["seconds"] for e in evaluations],
                        "sweeps": [sw["seconds"] for sw in sweeps],
                        "fidelity": fidelity["seconds"] if fidelity else None,
                        "audit": audit["seconds"] if audit else None},
            "files": {"json": "report/report.json", "markdown": "report/report.md"}}


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _mean_std(x: dict | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    sign = "+" if signed and x["mean"] >= 0 else ""
    return f"{sign}{100 * x['mean']:.1f} ± {100 * x['std']:.1f} pp" if signed else \
        f"{100 * x['mean']:.1f}% ± {100 * x['std']:.1f}"


def _share(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(report: dict) -> str:
    """``report.md``: headline, evaluation table, fidelity, audit tables, other results; links relative to
    ``OUT/report/``."""
    d = report["dataset"]
    lines = [f"# Report: {d.get('name', '')} {d.get('version') or ''}".rstrip(), "",
             f"Written {report['created']} by `build-dataset report` from the results in this build folder.", "",
             "## Headline", ""]
    head = headline_lines(report["headline"])
    lines += head or ["No results yet: run `build-dataset evaluate`, `fidelity` or `audit` first."]
    if report["evaluations"]:
        lines += ["", "## Evaluation", "",
                  "| result | backbone | mode | trained on | test set | accuracy | macro accuracy | macro F1 | guard |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in report["evaluations"]:
            lines.append(f"| [{e['name']}](../{e['file']}) | `{e['backbone']}` | {e['mode']} | {e['trained_on']} | "
                         f"`{e['test_set']}` | {_pct(e['accuracy'])} | {_pct(e['macro_accuracy'])} | "
                         f"{_pct(e['macro_f1'])} | {'**overridden**' if e['guard_overridden'] else 'passed'} |")
        lines.append("")
        lines += [f"![Confusion matrix of {e['name']}](../{e['confusion']})" for e in report["evaluations"]]
    for sw in report.get("sweeps") or ():
        gain = sw["sweep"] == "mixes"
        lines += ["", f"## Sweep: {sw['name']} ({sw['sweep']})", "",
                  f"`{sw['backbone']}`, seeds {', '.join(map(str, sw['seeds'] or []))}; mean ± std over seeds "
                  f"([{sw['file']}](../{sw['file']}))" + (" **guard overridden**" if sw["guard_overridden"] else "")
                  + ".", "",
                  "| point | test set | accuracy | macro accuracy |" + (" gain over real only |" if gain else ""),
                  "|---|---|---|---|" + ("---|" if gain else "")]
        for r in sw["rows"]:
            lines.append(f"| {r['point']} | `{r['test']}` | {_mean_std(r['accuracy'])} | "
                         f"{_mean_std(r['macro_accuracy'])} |" + (f" {_mean_std(r['gain'], signed=True)} |" if gain
                                                                  else ""))
        if sw["figure"]:
            lines += ["", f"![{sw['name']}](../{sw['figure']})"]
    f = report["fidelity"]
    if f:
        lines += ["", "## Fidelity", "", f"Encoder `{f['encoder']}`, reference `{f['reference']}`: "
                  f"{f['release_images']} release vs {f['reference_images']} reference images "
                  "([fidelity.md](../fidelity/fidelity.md)).", "",
                  f"- Frechet distance: **{_num(f['fd'])}**",
                  f"- KID: **{_num(f['kid'])} ± {_num(f['kid_std'], 2)}**",
                  f"- Within-class diversity ({f['diversity']['metric']}): release {_num(f['diversity']['release'])}, "
                  f"reference {_num(f['diversity']['reference'])}", "",
                  "| class | reference class | FD | KID | status |", "|---|---|---|---|---|"]
        lines += [f"| {c['class'] or '-'} | {c['reference_class'] or '-'} | {_num(c['fd'])} | {_num(c['kid'])} | "
                  f"{c['status']} |" for c in f["per_class"]]
    a = report["audit"]
    if a:
        lines += ["", "## Demographic audit", "",
                  f"{a['images']} images ({'aligned face crops' if a['faces'] == 'crop' else 'whole images'}); "
                  "asked: the share of images prompted with each value, predicted: the share the attribute "
                  "classifier assigns to it, agreement: images whose prediction matches their prompt, TVD: total "
                  "variation distance between asked and predicted ([audit.json](../eval/audit.json)).", "",
                  f"![Asked vs predicted per attribute](../{a['figure']})"]
        for x in a["attributes"]:
            lines += ["", f"### {x['attribute']}", "", f"Classifier `{x['classifier']}` (groups: "
                      f"{', '.join(x['labels'])}); {x['compared_images']} of {x['images']} images compared.", ""]
            if not x["groups"]:
                lines += ["| label | predicted |", "|---|---|"]
                lines += [f"| {g} | {_share(c / max(1, x['images']))} |" for g, c in x["predicted_labels"].items()]
                continue
            lines += ["| group | classifier labels | manifest | asked | predicted |", "|---|---|---|---|---|"]
            for g in x["groups"]:
                labels = x["labels_counted_as_other"] if g == OTHER else x["mapping"].get(g, [])
                lines.append(f"| {g} | {', '.join(labels) or '-'} | {_share(x['manifest'].get(g))} | "
                             f"{_share(x['asked'].get(g))} | {_share(x['predicted'].get(g))} |")
            lines += ["", f"Agreement {_share(x['agreement'])}; TVD asked vs predicted {_num(x['tvd'], 3)}"
                      + (f", manifest vs predicted {_num(x['tvd_manifest'], 3)}" if x["tvd_manifest"] is not None
                         else "") + "."
                      + (f" Prompted values no classifier label matches (not compared): "
                         f"{', '.join(x['unmapped_values'])}." if x["unmapped_values"] else "")]
    if report["other_results"] or report["other_figures"]:
        lines += ["", "## Other results", "", "Files this version of the report does not summarise:", ""]
        lines += [f"- [{o['file']}](../{o['file']}): kind `{o['kind']}`"
                  + (f", {o['name']}" if o.get("name") else "") + f" ({o['note']})" for o in report["other_results"]]
        lines += [f"- ![{Path(p).name}](../{p})" for p in report["other_figures"]]
    s = report["seconds"]
    parts = [f"evaluate {_num(t, 3)} s" for t in s["evaluations"] if t is not None]
    parts += [f"sweep {_num(t, 3)} s" for t in s.get("sweeps") or () if t is not None]
    parts += [f"fidelity {_num(s['fidelity'], 3)} s"] if s["fidelity"] is not None else []
    parts += [f"audit {_num(s['audit'], 3)} s"] if s["audit"] is not None else []
    if parts:
        lines += ["", "Run times (as recorded by each result): " + ", ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> dict:
    """Write ``OUT/report/report.json`` and ``report.md`` (the caller holds the build folder's lock)."""
    report = build_report(Path(out))
    folder = Path(out) / "report"
    folder.mkdir(exist_ok=True)
    write_durably(folder / "report.md", markdown(report))
    write_durably(folder / "report.json", json.dumps(report, indent=1) + "\n")  # last: the card reads it
    return report
