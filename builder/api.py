"""The Python API: every command of ``build-dataset`` as a typed function (the CLI is a thin layer over these).

::

    from builder import api

    manifest = api.load("manifests/demo.yaml")           # parsed, validated, its images source listed
    result = api.build(manifest, "out/demo")             # resumes when run again
    stats = api.release("out/demo", decisions="review.json")
    api.evaluate("out/demo", api.LabelledSet("real/test"), epochs=6)
    api.fidelity("out/demo", api.LabelledSet("real/test"), encoder="facebook/dinov2-base")
    api.audit("out/demo", {"age": "nateraw/vit-age-classifier"}, maps=["age:young=10-19,20-29"])
    api.report("out/demo")                               # OUT/report/report.json and report.md
    api.push("out/demo", "me/fer-demo", dry_run=True)

Bad input raises ``builder.core.errors.UserError`` (``exc.render()`` is the message the CLI prints: the file,
the field and the fix); a full disk or read-only folder raises ``StorageError``, a ``UserError`` too. ``log``
parameters take a callable of one string (default: ``builder.core.log.info``, the ``fer_synth`` logger).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from builder.core.log import info
from builder.core.options import RunOptions
from builder.manifest import Manifest
from builder.run import BuildResult
from evaluation.encoders import DEFAULT_ENCODER
from evaluation.run import DEFAULT_BACKBONE, Evaluation, LabelledSet

if TYPE_CHECKING:
    from cards.push import PushResult

__all__ = ["BuildResult", "Evaluation", "LabelledSet", "audit", "build", "evaluate", "fetch_model", "fidelity",
           "index_reference", "load", "models", "plan", "push", "release", "report", "review", "status",
           "train_au_adapter", "train_feranno", "train_generator", "validate"]

Log = Callable[[str], None]


def load(path: str | Path) -> Manifest:
    """The manifest at ``path``: parsed, validated and, for an images source, listed (``ManifestError`` naming
    the file, the field and the fix)."""
    from builder.expand.images import listed
    from builder.manifest.loader import load_manifest

    return listed(load_manifest(path), file=str(path))


def validate(path: str | Path, trust_remote_code: bool = False) -> Manifest:
    """``load`` plus every model reference checked (all problems in one ``ModelLoadError``); loads no model."""
    from builder.references import require_references

    manifest = load(path)
    require_references(manifest, trust_remote_code, file=str(path))
    return manifest


def plan(manifest: Manifest | str | Path, out: str | Path | None = None) -> dict:
    """The dry-run plan: counts per class, axis and demographic cell, shards, estimated work (no model loaded)."""
    from builder.plan import make_plan

    manifest = _manifest(manifest)
    return make_plan(manifest, Path(out) if out is not None else Path("out") / manifest.name)


def build(manifest: Manifest | str | Path, out: str | Path | None = None, *, executor: str = "local",
          address: str | None = None, ray_actors: int | None = None, threads: int | None = None,
          trust_remote_code: bool = False, allow_empty: bool = False, progress: bool = True,
          log: Log = info) -> BuildResult:
    """Build (or resume) ``manifest`` into ``out`` (default ``out/<name>``).

    ``executor``: 'local' (this process) or 'ray' (``address``: the cluster, default a local Ray; ``ray_actors``:
    default one per GPU, or per CPU). ``threads``: torch CPU threads (default: the count the build recorded).
    ``trust_remote_code``: let classifier configs name classes outside torch and this tool. ``allow_empty``:
    release even when every sample was dropped.
    """
    from builder.core.errors import UserError
    from builder.run import build as run_build

    manifest = _manifest(manifest)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1 (got {threads})", fix="give a positive number")
    out = Path(out) if out is not None else Path("out") / manifest.name
    runner = _executor(executor, address, ray_actors, log)
    options = RunOptions(trust_remote_code=trust_remote_code, threads=threads)
    return run_build(manifest, out, executor=runner, progress=progress, log=log, options=options,
                     allow_empty=allow_empty)


def release(out: str | Path, *, decisions: str | Path | None = None, no_review: bool = False,
            fiftyone_name: str | None = None, from_fiftyone: bool = False, allow_empty: bool = False,
            log: Log = info) -> dict:
    """Release a finished build again and return its stats. With ``decisions`` (a JSON file), merge the
    reviewer's decisions into the build's ``review.json``; with ``from_fiftyone``, read them from the FiftyOne
    tags (``fiftyone_name``: the dataset, default the one ``review`` made); ``no_review`` drops them. The
    decisions are checked under the build's lock before anything is written."""
    from builder.core.errors import UserError
    from builder.run import release_again
    from curation.whole_set.review import REVIEW_FILE, add_decisions_file

    out = Path(out)
    if sum((decisions is not None, no_review, from_fiftyone)) > 1:
        raise UserError("give one of decisions, no_review and from_fiftyone", fix="choose one source of review")

    def apply_review(manifest: Manifest) -> None:
        if no_review:
            (out / REVIEW_FILE).unlink(missing_ok=True)
        elif decisions is not None:
            add_decisions_file(out, manifest, Path(decisions))
        elif from_fiftyone:
            from cards.review import collect_review

            collect_review(out, name=fiftyone_name, log=log)

    return release_again(out, log=log, review=apply_review, allow_empty=allow_empty)


def review(out: str | Path, *, name: str | None = None, address: str = "127.0.0.1", port: int = 5151,
           launch: bool = True, log: Log = info) -> int:
    """Put a finished release into a persistent FiftyOne dataset and, with ``launch``, serve the App on it until
    Ctrl-C (needs the ``review`` extra)."""
    from builder.core.extras import require_extra

    require_extra("review", "fiftyone")
    from cards.review import review_dataset
    from cards.review_app import run_review

    return run_review(lambda: review_dataset(Path(out), name, log), address=address, port=port, launch=launch,
                      log=log)


def push(out: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
         revision: str | None = None, message: str | None = None, log: Log = info) -> PushResult:
    """Upload a released build folder to a Hub dataset repo (only new or changed files, one commit); returns
    ``cards.push.PushResult``."""
    from cards.push import push as push_release

    return push_release(Path(out), repo_id, private=private, dry_run=dry_run, revision=revision, message=message,
                        log=log)


def evaluate(out: str | Path, test: LabelledSet | str | Path, *, train_real: LabelledSet | str | Path | None = None,
             mix: float | None = None, backbone: str = DEFAULT_BACKBONE, log: Log = info, **settings) -> dict:
    """Train a classifier on the release in ``out`` and test it on the real labelled set ``test``; returns the
    result written to ``OUT/eval/<name>.json`` and updates the card's Evaluation section. ``settings``: the
    other fields of ``evaluation.run.Evaluation`` (mode, epochs, batch_size, lr, ..., force, name).

    Sweeps (``evaluation.sweep``): ``test`` a list of sets (a matrix over test sets), ``sizes`` ('1000,5000' or
    numbers: scaling on nested class-balanced subsets), ``synthetic_ratios`` (with ``train_real``: real plus
    ratio x |real| synthetic images), ``seeds`` (each point repeated); the combined result goes to
    ``OUT/eval/<name>.json`` (kind ``fer-synth-evaluation-sweep``); the report and the card's headline show its
    summary."""
    from builder.core.build_folder import lock_build_folder
    from builder.core.extras import require_extra
    from cards.evaluation_section import update_card, write_fragment
    from evaluation.run import evaluate as run_evaluation
    from evaluation.run import numbers
    from evaluation.sweep import evaluate_sweep

    require_extra("eval", "sklearn")
    out = Path(out)
    as_set = (lambda s: s if isinstance(s, LabelledSet) or s is None else LabelledSet(Path(s)))
    tests = [as_set(t) for t in test] if isinstance(test, (list, tuple)) else [as_set(test)]
    if not tests:
        from builder.core.errors import UserError

        raise UserError("no test set given", fix="give at least one --test PATH")
    for key, flag, kind in (("sizes", "--sizes", float), ("seeds", "--seeds", int),
                            ("synthetic_ratios", "--synthetic-ratios", float)):
        if key in settings:
            settings[key] = numbers(settings[key], flag, kind)
    args = Evaluation(out=out, test=tests[0], more_tests=tuple(tests[1:]), train_real=as_set(train_real), mix=mix,
                      backbone=backbone, **settings)
    if args.is_sweep:
        result = evaluate_sweep(args)
        _report_and_card(out)  # the report (and the card's headline) shows the sweep's summary
        return result
    result = run_evaluation(args)
    with lock_build_folder(out):
        write_fragment(out, result)
        _refresh_report(out)
        update_card(out)
    return result


def fidelity(out: str | Path, reference: LabelledSet | str | Path, *, encoder: str = DEFAULT_ENCODER,
             log: Log = info, **settings) -> dict:
    """Frechet distance, KID and within-class diversity between the release in ``out`` and the real labelled set
    ``reference`` in the feature space of ``encoder`` (a Hub id or save_pretrained folder), overall and per class;
    returns the result written to ``OUT/fidelity/fidelity.json``. ``settings``: the other fields of
    ``evaluation.fidelity.Fidelity`` (splits, batch_size, device, kid_subsets, kid_subset_size, min_class_samples,
    diversity, seed, progress)."""
    from builder.core.extras import require_extra
    from evaluation.fidelity import Fidelity
    from evaluation.fidelity import fidelity as run_fidelity

    require_extra("eval", "torchmetrics")
    reference = reference if isinstance(reference, LabelledSet) else LabelledSet(Path(reference))
    if "splits" in settings:
        settings["splits"] = tuple(settings["splits"] or ())
    result = run_fidelity(Fidelity(out=Path(out), reference=reference, encoder=encoder, **settings), log=log)
    _report_and_card(Path(out))
    return result


def audit(out: str | Path, classifiers: str | list[str] | tuple[str, ...] | dict[str, str], *,
          maps: list[str] | tuple[str, ...] | dict[str, dict[str, list[str]]] = (), whole_image: bool = False,
          log: Log = info, **settings) -> dict:
    """Demographic audit: attribute classifiers (transformers image-classification models, a Hub id or
    save_pretrained folder each; ``{'age': PATH}`` or ``['age=PATH', ...]``) predict each released image's group,
    compared with the prompted attribute values (``maps``: ``['age:young=0-2,3-9']`` or ``{'age': {'young':
    ['0-2', '3-9']}}``; default: same or canonical names). Returns the result written to ``OUT/eval/audit.json``
    (agreement, total variation distance, distributions overall, per split and per class) and refreshes the
    report and the card. ``settings``: the other fields of ``evaluation.audit.Audit`` (splits, revision,
    batch_size, device, progress, command)."""
    from evaluation.audit import Audit
    from evaluation.audit import audit as run_audit

    if isinstance(classifiers, dict):
        classifiers = [f"{attribute}={model}" for attribute, model in classifiers.items()]
    elif isinstance(classifiers, (str, Path)):
        classifiers = [str(classifiers)]
    if isinstance(maps, dict):
        maps = [f"{attribute}:{value}={','.join(labels)}" for attribute, values in maps.items()
                for value, labels in values.items()]
    if "splits" in settings:
        settings["splits"] = tuple(settings["splits"] or ())
    result = run_audit(Audit(out=Path(out), classifiers=tuple(str(c) for c in classifiers), maps=tuple(maps),
                             faces="whole" if whole_image else "crop", **settings), log=log)
    _report_and_card(Path(out))
    return result


def report(out: str | Path) -> dict:
    """Gather what ``out`` holds (evaluation results and other JSONs in ``OUT/eval/``, ``OUT/fidelity/fidelity.json``,
    ``OUT/eval/audit.json``) into ``OUT/report/report.json`` and ``report.md`` and put its headline in the card;
    returns the report (``cards.report``)."""
    from builder.core.errors import UserError

    out = Path(out)
    if not (out / "build.json").is_file():
        raise UserError(f"'{out}' holds no build (no build.json)", file=str(out),
                        fix="give the --out folder of a build made with `build-dataset MANIFEST --out OUT`")
    return _report_and_card(out)


def _refresh_report(out: Path) -> dict:
    """Rewrite ``OUT/report/`` (reads JSON files only; the caller holds the build folder's lock)."""
    from cards.report import write_report

    return write_report(Path(out))


def _report_and_card(out: Path) -> dict:
    """The report rewritten and the card's Evaluation section (with the report's headline) updated, under the lock."""
    from builder.core.build_folder import lock_build_folder
    from cards.evaluation_section import update_card

    with lock_build_folder(out):
        result = _refresh_report(out)
        update_card(out)
    return result


def train_au_adapter(config: str | Path, progress: bool = True, log: Log = info) -> dict:
    """Train an AU adapter on a frozen generator (``manifests/train/au-adapter-demo.yaml``); rerun to resume."""
    from builder.manifest.loader import load_manifest
    from builder.synthesis.training.adapter import train_au_adapter as train
    from builder.synthesis.training.config import TrainConfig

    return train(load_manifest(config, model=TrainConfig), source=str(config), progress=progress, log=log)


def train_generator(config: str | Path, progress: bool = True, log: Log = info,
                    trust_remote_code: bool = False) -> dict:
    """Fine-tune the generator on expression image-text pairs, LoRA or full (``manifests/train/generator-demo.yaml``);
    rerun to resume. Returns the training summary."""
    from builder.manifest.loader import load_manifest
    from builder.synthesis.training.generator import train_generator as train
    from builder.synthesis.training.generator_config import GeneratorTrainConfig

    return train(load_manifest(config, model=GeneratorTrainConfig), source=str(config), progress=progress, log=log,
                 trust_remote_code=trust_remote_code)


def train_feranno(config: str | Path, progress: bool = True, log: Log = info) -> dict:
    """Train a FERAnno labeller on a frozen diffusion model's features (``manifests/train/feranno-demo.yaml``);
    rerun to resume."""
    from builder.manifest.loader import load_manifest
    from curation.labelling.feranno.config import FERAnnoTrainConfig
    from curation.labelling.feranno.train import train_feranno as train

    return train(load_manifest(config, model=FERAnnoTrainConfig), source=str(config), progress=progress, log=log)


def index_reference(config: str | Path, progress: bool = True, log: Log = info) -> dict:
    """Index the faces of real reference photos for the identity-leak gate (``manifests/reference/demo.yaml``);
    a rerun embeds only new images (needs the ``identity`` extra)."""
    from builder.core.extras import require_extra
    from builder.manifest.loader import load_manifest
    from curation.identity.config import ReferenceConfig

    require_extra("identity", "faiss")
    from curation.identity.reference import index_reference as index

    return index(load_manifest(config, model=ReferenceConfig), source=str(config), progress=progress, log=log)


def status(out: str | Path) -> dict:
    """Where the build folder ``out`` stands (manifest, shards done, stage counts so far, last error, release);
    see ``builder.status``."""
    from builder.status import status as folder_status

    return folder_status(Path(out))


def models() -> list[dict[str, str]]:
    """Every registered model: name, kind, source, sha256, licence, cache status, description."""
    from builder.models.store import describe

    return describe()


def fetch_model(name: str) -> Path:
    """Download (or build) the registered model ``name``, check its sha256, cache it; its local path."""
    from builder.models.registry import lookup
    from builder.models.store import fetch

    return fetch(lookup(name, field="models fetch"))


def _manifest(manifest: Manifest | str | Path) -> Manifest:
    if isinstance(manifest, Manifest):
        from builder.expand.images import listed

        return listed(manifest)
    return load(manifest)


def _executor(kind: str, address: str | None, actors: int | None, log: Log):
    """The RayExecutor the settings ask for, or None for the local one."""
    from builder.core.errors import UserError

    if kind not in ("local", "ray"):
        raise UserError(f"executor '{kind}' is neither local nor ray", fix="use local or ray")
    if kind != "ray":
        for flag, value in (("--address", address), ("--ray-actors", actors)):
            if value is not None:
                raise UserError(f"{flag} only applies to --executor ray", fix=f"add --executor ray, or drop {flag}")
        return None
    if actors is not None and actors < 1:
        raise UserError(f"--ray-actors must be at least 1 (got {actors})", fix="give a positive number")
    from builder.core.extras import require_extra

    require_extra("ray", "ray")
    from builder.core.ray_executor import RayExecutor

    return RayExecutor(address=address, actors=actors, log=log)
