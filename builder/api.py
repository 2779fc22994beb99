"""The Python API: every command of ``build-dataset`` as a typed function (the CLI is a thin layer over these).

::

    from builder import api

    manifest = api.load("manifests/demo.yaml")           # parsed, validated, its images source listed
    result = api.build(manifest, "out/demo")             # resumes when run again
    stats = api.release("out/demo", decisions="review.json")
    api.evaluate("out/demo", api.LabelledSet("real/test"), epochs=6)
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
from evaluation.run import DEFAULT_BACKBONE, Evaluation, LabelledSet

if TYPE_CHECKING:
    from cards.push import PushResult

__all__ = ["BuildResult", "Evaluation", "LabelledSet", "build", "evaluate", "fetch_model", "index_reference",
           "load", "models", "plan", "push", "release", "review", "status", "train_au_adapter", "train_feranno",
           "train_generator", "validate"]

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
    other fields of ``evaluation.run.Evaluation`` (mode, epochs, batch_size, lr, ..., force, name)."""
    from builder.core.build_folder import lock_build_folder
    from builder.core.extras import require_extra
    from cards.evaluation_section import update_card, write_fragment
    from evaluation.run import evaluate as run_evaluation

    require_extra("eval", "sklearn")
    out = Path(out)
    as_set = (lambda s: s if isinstance(s, LabelledSet) or s is None else LabelledSet(Path(s)))
    result = run_evaluation(Evaluation(out=out, test=as_set(test), train_real=as_set(train_real), mix=mix,
                                       backbone=backbone, **settings))
    with lock_build_folder(out):
        write_fragment(out, result)
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
