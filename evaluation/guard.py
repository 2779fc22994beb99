"""The guard: the model that guided generation or labelled the data must not be the one that evaluates it.

A public SynFER reproduction scored its images with the classifier that had
guided them and reported an inflated accuracy (method.md). The build records
who guided (``stats.json`` ``guidance``: ``classifier``, ``sha256``) and who
labelled (``labelling.experts[]``: ``name``, ``model``, ``sha256``; FERAnno
among them), and ``build.json`` keeps the manifest's model names. The
evaluator conflicts with one of them when

- a hash matches: the backbone's weights digest or any of its weight files'
  sha256 against the recorded sha256, or against the weights file a
  classifier config (``.yaml``) names, when that config is still on disk;
- a name matches: the backbone as given, its resolved folder or file, against
  the recorded model (as written, and resolved when it is a path here).

``check`` raises ``UserError`` (exit 2) unless forced; forced, the result is
marked ``guard_overridden`` and the conflicts are recorded.
"""
from __future__ import annotations

from pathlib import Path

from builder.core.errors import UserError


def _models(stats: dict, manifest: dict) -> list[dict]:
    """(role, where, model, sha256) of every model that guided or labelled the build."""
    out = []
    guidance = stats.get("guidance") or (stats.get("edit") or {}).get("guidance") or {}  # generated or edited
    if guidance:
        out.append({"role": "guided the generation", "where": "stats.json guidance",
                    "model": guidance.get("classifier"), "sha256": guidance.get("sha256")})
    for i, expert in enumerate((stats.get("labelling") or {}).get("experts") or []):
        out.append({"role": "labelled the data", "where": f"stats.json labelling.experts[{i}] ({expert.get('name')})",
                    "model": expert.get("model"), "sha256": expert.get("sha256")})
        base = (expert.get("feranno") or {}).get("base_model")
        if base:
            out.append({"role": "labelled the data (FERAnno's diffusion backbone)",
                        "where": f"stats.json labelling.experts[{i}].feranno.base_model", "model": base,
                        "sha256": None})
    generator = manifest.get("generator") or {}
    if (generator.get("guidance") or {}).get("classifier"):
        out.append({"role": "guided the generation", "where": "build.json generator.guidance.classifier",
                    "model": generator["guidance"]["classifier"], "sha256": None})
    labelling = manifest.get("labelling") or {}
    for i, expert in enumerate(labelling.get("experts") or []):
        out.append({"role": "labelled the data", "where": f"build.json labelling.experts[{i}]",
                    "model": expert.get("model"), "sha256": None})
    if (labelling.get("feranno") or {}).get("model"):
        out.append({"role": "labelled the data", "where": "build.json labelling.feranno.model",
                    "model": labelling["feranno"]["model"], "sha256": None})
    return [m for m in out if m["model"] or m["sha256"]]


def _names(model: str) -> set[str]:
    """A recorded model as written, and as an absolute path when it is one on this machine."""
    names = {model}
    path = Path(model).expanduser()
    if path.exists():
        names.add(str(path.resolve()))
    return names


def _extra_hashes(model: str) -> tuple[set[str], set[str]]:
    """(sha256s, paths) of the files behind a recorded model: a classifier config's weights, a registry entry."""
    from builder.models.diffusion import file_sha256

    hashes, paths = set(), set()
    path = Path(model).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        try:
            from builder.manifest.loader import load_manifest
            from builder.models.fer.classifier_config import ClassifierConfig

            weights = load_manifest(path, model=ClassifierConfig).model_file(path)
            if weights.is_file():
                hashes.add(file_sha256(weights))
                paths.add(str(weights.resolve()))
        except UserError:
            pass  # a config that no longer loads: its recorded sha256 still counts
    else:
        from builder.models.registry import REGISTRY

        entry = REGISTRY.get(model)
        if entry is not None:
            if entry.sha256:
                hashes.add(entry.sha256)
            repo = getattr(entry.source, "repo_id", None)
            if repo:
                paths.add(repo)
    return hashes, paths


def conflicts(backbone, stats: dict, manifest: dict) -> list[dict]:
    """Every recorded guide or labeller the backbone is (see the module docstring), with how it matched."""
    ids, hashes = backbone.ids, backbone.hashes
    resolved_ids = set(ids) | {str(Path(i).expanduser().resolve()) for i in ids if Path(i).expanduser().exists()}
    found = []
    for m in _models(stats, manifest):
        how = []
        if m["sha256"] and m["sha256"] in hashes:
            how.append("sha256")
        if m["model"]:
            if _names(m["model"]) & resolved_ids:
                how.append("model id")
            extra_hashes, extra_paths = _extra_hashes(m["model"])
            if extra_hashes & hashes or extra_paths & resolved_ids:
                how.append("weights file")
        if how:
            found.append({**m, "matched_by": how})
    return found


def check(backbone, stats: dict, manifest: dict, force: bool) -> dict:
    """The guard's record for the result; raises ``UserError`` on a conflict unless ``force``."""
    found = conflicts(backbone, stats, manifest)
    if found and not force:
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(
            f"the evaluator '{backbone.info.get('id')}' is the model that {first['role']} of this dataset "
            f"({first['where']}: {first['model'] or first['sha256']}, matched by {', '.join(first['matched_by'])})"
            f"{more}; its accuracy here would not measure the dataset",
            fix="evaluate with another backbone or other weights; or pass --force to run anyway (the result and the "
            "card are then marked guard_overridden)")
    return {"conflicts": found, "overridden": bool(found and force), "checked": [
        {k: m[k] for k in ("where", "model", "sha256")} for m in _models(stats, manifest)]}
