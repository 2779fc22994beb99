"""``build-dataset``: the command line.

Main form::

    build-dataset MANIFEST [--out DIR] [--dry-run [--json]] [--no-progress]
                  [--executor {local,ray}] [--address ADDR] [--ray-actors N]

Subcommands: ``validate MANIFEST``, ``schema [--check|--write]``, ``train-au-adapter CONFIG``,
``train-feranno CONFIG``, ``index-reference CONFIG``, ``models list``, ``models fetch NAME``,
``review OUT`` (the release in the FiftyOne App), ``release OUT`` (apply the review, release again),
``push OUT --repo-id ID`` (upload the release to the Hub), ``evaluate OUT --test REAL_SET``.
Bad input exits with code 2 and one message that names the file, the field
and the fix; an interrupted build exits 130 and resumes on the next run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError, is_storage_fault, storage_error, storage_fault

SUBCOMMANDS = ("validate", "schema", "train-au-adapter", "train-feranno", "index-reference", "models", "release",
               "review", "push", "evaluate")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-dataset",
        description="Build a synthetic facial-expression dataset from a synthesis manifest. "
        "Other commands: 'build-dataset validate MANIFEST', 'build-dataset schema', "
        "'build-dataset train-au-adapter CONFIG', 'build-dataset train-feranno CONFIG', "
        "'build-dataset index-reference CONFIG', "
        "'build-dataset models list|fetch NAME', 'build-dataset review OUT', 'build-dataset release OUT', "
        "'build-dataset push OUT --repo-id ID', 'build-dataset evaluate OUT --test REAL_SET'.",
    )
    p.add_argument("manifest", type=Path, help="synthesis manifest (YAML)")
    p.add_argument("--out", type=Path, help="build folder (default: out/<manifest name>); rerun to resume")
    p.add_argument("--dry-run", action="store_true", help="print the plan (counts, shards, work) and load no model")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where shards run: 'local' (this process, default) or 'ray' (actors on a Ray cluster); "
                   "a build may resume under either")
    p.add_argument("--address", metavar="ADDR", help="with --executor ray: the cluster to join (e.g. 'auto' or "
                   "HOST:6379; the build folder must be on storage every node sees); default: a local Ray")
    p.add_argument("--ray-actors", type=int, metavar="N", help="with --executor ray: number of actors (default: "
                   "one per GPU, or one per CPU without GPUs)")
    p.add_argument("--allow-empty", action="store_true", help="release even when every sample was dropped "
                   "(otherwise exit 2 with what each stage dropped)")
    p.add_argument("--trust-remote-code", action="store_true", help="let classifier configs (guide, experts) "
                   "name nn.Module classes outside torch and this tool; off by default, because importing a class "
                   "runs its package's code: use it only for configs whose code you trust")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads in every worker (default: the "
                   "count the build started with, recorded in build.json; a new build records this machine's "
                   "default). CPU pixels depend on it")
    p.add_argument("--version", action="version", version=f"build-dataset {__version__}")
    return p


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-dataset validate", description="Check a manifest and every model it "
                                "refers to (files, folders, configs, registry names, the Hub cache when offline) "
                                "without loading any model, and exit; all bad references are listed at once.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--trust-remote-code", action="store_true", help="accept classifier configs (guide, experts) "
                   "that name nn.Module classes outside torch and this tool, as the build does with this flag (their "
                   "module is then imported to check the class; without the flag such a config is refused and "
                   "nothing is imported)")
    return p


def _schema_parser() -> argparse.ArgumentParser:
    from .schema import CONFIGS

    p = argparse.ArgumentParser(prog="build-dataset schema",
                                description="Print a JSON schema (from the models: works wherever the tool is "
                                "installed), or write/check every schema file in a source checkout's manifests/.")
    p.add_argument("--config", choices=sorted(CONFIGS), default="manifest",
                   help="which file's schema to print: the synthesis manifest (default), a command's config, "
                   "or a guide/expert classifier config")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="checkout only: write every schema into manifests/")
    g.add_argument("--check", action="store_true", help="checkout only: exit 1 if a schema in manifests/ is stale")
    return p


def _cmd_push(argv: list[str]) -> int:
    """``build-dataset push OUT --repo-id ID``: upload a finished release to a Hub dataset repo (cards/push.py)."""
    p = argparse.ArgumentParser(prog="build-dataset push", description="Upload a released build folder (README.md, "
                                "stats.json, data/, figures/) to a Hugging Face Hub dataset repo in one commit; "
                                "unchanged files are skipped. Token: HF_TOKEN or `hf auth login`.")
    p.add_argument("out", type=Path, metavar="OUT", help="released build folder (the --out of build-dataset MANIFEST)")
    p.add_argument("--repo-id", required=True, metavar="ID", help="dataset repo OWNER/NAME; created if missing")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                   "visibility)")
    p.add_argument("--dry-run", action="store_true", help="print what would be added, updated, unchanged or "
                   "deleted; change nothing")
    p.add_argument("--revision", metavar="BRANCH", help="branch to push to (default main; created from main "
                   "if missing)")
    p.add_argument("--message", metavar="TEXT", help="commit message (default: 'Upload <dataset> <version> release')")
    args = p.parse_args(argv)
    from cards.push import format_result, push

    result = push(args.out, args.repo_id, private=args.private, dry_run=args.dry_run, revision=args.revision,
                  message=args.message, log=_log)
    print(format_result(result, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in CONFIG_COMMANDS:
            return _config_command(argv[1:], argv[0], *CONFIG_COMMANDS[argv[0]])
        if argv and argv[0] in SUBCOMMANDS:
            commands = {"validate": _cmd_validate, "schema": _cmd_schema, "models": _cmd_models,
                        "release": _cmd_release, "review": _cmd_review, "push": _cmd_push,
                        "evaluate": _cmd_evaluate}
            return commands[argv[0]](argv[1:])
        return _cmd_build(_build_parser().parse_args(argv))
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a full disk or read-only folder anywhere, maybe wrapped by a library
        if not is_storage_fault(exc):
            raise
        error = storage_error(exc, storage_fault(exc).filename or ".")
        print(f"error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_build(args: argparse.Namespace) -> int:
    from .manifest_loader import load_manifest

    manifest = load_manifest(args.manifest)
    out = args.out or Path("out") / manifest.name
    executor = _executor(args)
    from .references import require_references

    require_references(manifest, args.trust_remote_code, file=args.manifest)  # build() checks again, naming no file
    if args.dry_run:
        from .plan import format_plan, make_plan, plan_json

        plan = make_plan(manifest, out)
        plan["executor"] = executor.describe() if executor else "local: shards one after another in this process"
        print(plan_json(plan) if args.json else f"{format_plan(plan, manifest)}\nexecutor: {plan['executor']}")
        return 0
    if args.json:
        raise UserError("--json only applies to --dry-run", fix="add --dry-run, or drop --json")

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})", fix="give a positive number")
    _quiet_libraries(progress=not args.no_progress)
    from .options import RunOptions
    from .run import build

    options = RunOptions(trust_remote_code=args.trust_remote_code, threads=args.threads)
    result = build(manifest, out, executor=executor, progress=not args.no_progress, log=_log, options=options,
                   allow_empty=args.allow_empty)
    stats = result.stats or {}
    released = stats.get("released", {})
    splits = ", ".join(f"{k} {v}" for k, v in released.get("splits", {}).items())
    dropped = sum(sum(s.get("dropped", {}).values()) for s in stats.get("stages", {}).values())
    if result.released:
        _log(f"done: {released.get('total', 0)} images ({splits}); {dropped} dropped "
             f"(see {out / 'rejected'}); dataset {out / 'hf'}, card {out / 'README.md'}")
    return 0


def _executor(args: argparse.Namespace):
    """The RayExecutor the flags ask for, or None for the local one."""
    if args.executor != "ray":
        for flag, value in (("--address", args.address), ("--ray-actors", args.ray_actors)):
            if value is not None:
                raise UserError(f"{flag} only applies to --executor ray", fix=f"add --executor ray, or drop {flag}")
        return None
    if args.ray_actors is not None and args.ray_actors < 1:
        raise UserError(f"--ray-actors must be at least 1 (got {args.ray_actors})", fix="give a positive number")
    from .ray_executor import RayExecutor

    return RayExecutor(address=args.address, actors=args.ray_actors, log=_log)


def _cmd_evaluate(argv: list[str]) -> int:
    """``build-dataset evaluate OUT --test REAL_SET``: train a classifier on the release, test it on real faces."""
    from evaluation.cli import main as evaluate_main

    return evaluate_main(argv)


def _cmd_release(argv: list[str]) -> int:
    """Release a finished build again with the reviewer's decisions: FiftyOne tags, or a decisions file."""
    p = argparse.ArgumentParser(prog="build-dataset release", description="Apply review decisions (the 'reject' "
                                "and 'relabel:<class>' tags set in the FiftyOne App by `build-dataset review`, or "
                                "a JSON file) and write the dataset, card and stats again. Shards are not touched.")
    p.add_argument("out", type=Path, help="a finished build folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--decisions", type=Path, help='JSON {"decisions": {sample_id: "reject" | "relabel:<class>"}} '
                   "instead of the FiftyOne tags; merged with earlier decisions files (a contradiction is refused)")
    g.add_argument("--no-review", action="store_true", help="drop earlier review decisions and release without")
    p.add_argument("--name", help="FiftyOne dataset name (default: the one `build-dataset review` made)")
    p.add_argument("--allow-empty", action="store_true", help="release even when no sample is left")
    args = p.parse_args(argv)
    _quiet_libraries(progress=False)
    from curation.review import REVIEW_FILE, add_decisions_file

    from .run import release_again

    def apply_review(manifest) -> None:  # under the build's lock, after its checks: a refusal writes nothing
        if args.no_review:
            (args.out / REVIEW_FILE).unlink(missing_ok=True)
        elif args.decisions is not None:
            add_decisions_file(args.out, manifest, args.decisions)
        else:
            from cards.review import collect_review

            collect_review(args.out, name=args.name)

    stats = release_again(args.out, log=_log, review=apply_review, allow_empty=args.allow_empty)
    review = stats["stages"].get("review", {}).get("meta")
    _log(f"released {stats['released']['total']} images"
         + (f"; review: {review['rejected']} rejected, {review['relabelled']} relabelled" if review else
            "; no review decisions"))
    return 0


def _cmd_review(argv: list[str]) -> int:
    """``build-dataset review OUT``: the release as a FiftyOne dataset, and the App on it until Ctrl-C."""
    p = argparse.ArgumentParser(prog="build-dataset review", description="Put a finished release (released and "
                                "rejected samples, labeller predictions, scores, saved views) into a persistent "
                                "FiftyOne dataset and serve the FiftyOne App on it until Ctrl-C. Tag samples "
                                "'reject' or 'relabel:<class>' there; `build-dataset release OUT` applies them.")
    p.add_argument("out", type=Path, metavar="OUT", help="released build folder")
    p.add_argument("--name", help="FiftyOne dataset name (default: fer-synth/<manifest name>-<fingerprint[:8]>)")
    p.add_argument("--port", type=int, default=5151, help="App port (default 5151; 0: any free port)")
    p.add_argument("--address", default="127.0.0.1", help="address the App listens on (default 127.0.0.1; "
                   "0.0.0.0 serves other machines)")
    p.add_argument("--no-launch", action="store_true", help="create or update the dataset and exit")
    args = p.parse_args(argv)
    from cards.review_app import run_review

    return run_review(args.out, name=args.name, address=args.address, port=args.port, launch=not args.no_launch,
                      log=_log)


def _cmd_validate(argv: list[str]) -> int:
    from .manifest_loader import load_manifest
    from .references import require_references

    args = _validate_parser().parse_args(argv)
    manifest = load_manifest(args.manifest)
    require_references(manifest, args.trust_remote_code, file=args.manifest)
    print(f"{args.manifest}: ok ({manifest.total} samples, {manifest.num_shards()} shards)")
    return 0


def _config_command(argv: list[str], name: str, description: str, example: str, model: str, run: str) -> int:
    """A subcommand that takes one YAML config: validate it as ``model``, then call ``run`` on it.

    ``model`` and ``run`` are "module:attribute" paths, imported only when the command runs.
    """
    from importlib import import_module

    from .manifest_loader import load_manifest

    def resolve(path: str):
        module, attribute = path.split(":")
        return getattr(import_module(module), attribute)

    p = argparse.ArgumentParser(prog=f"build-dataset {name}", description=description)
    p.add_argument("config", type=Path, help=f"config (YAML); see {example}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    config = load_manifest(args.config, model=resolve(model))
    _quiet_libraries(progress=not args.no_progress)
    resolve(run)(config, source=str(args.config), progress=not args.no_progress, log=_log)
    return 0


CONFIG_COMMANDS = {
    "train-au-adapter": ("Train an AU adapter on a frozen generator; rerun to resume.",
                         "manifests/train/au-adapter-demo.yaml", "builder.train_config:TrainConfig",
                         "builder.train_adapter:train_au_adapter"),
    "train-feranno": ("Train a FERAnno expression labeller on a frozen diffusion model's features; rerun to resume.",
                      "manifests/train/feranno-demo.yaml", "builder.feranno.config:FERAnnoTrainConfig",
                      "builder.feranno.train:train_feranno"),
    "index-reference": ("Index the faces of real reference photos for the identity_leak stage; a rerun embeds "
                        "only new images.", "manifests/reference/demo.yaml", "builder.reference_config:ReferenceConfig",
                        "curation.identity.reference:index_reference"),
}


def _cmd_models(argv: list[str]) -> int:
    from .store import describe, fetch

    p = argparse.ArgumentParser(prog="build-dataset models", description="The models the tool uses.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every registered model: source, sha256, licence, whether it is cached")
    get = sub.add_parser("fetch", help="download (or build) a model, check its sha256, cache it")
    get.add_argument("name")
    args = p.parse_args(argv)
    if args.action == "list":
        for row in describe():
            print(f"{row['name']}  [{row['kind']}]  {row['license']}  {row['status']}\n"
                  f"    source: {row['source']}\n    sha256: {row['sha256']}\n    {row['description']}")
        return 0
    from .registry import lookup

    print(fetch(lookup(args.name, field="models fetch")))
    return 0


def _cmd_schema(argv: list[str]) -> int:
    from .schema import CONFIGS, checkout_manifests, schema_text

    args = _schema_parser().parse_args(argv)
    if not (args.write or args.check):
        model, title, _ = CONFIGS[args.config]
        sys.stdout.write(schema_text(model, title))
        return 0
    manifests = checkout_manifests()
    stale = 0
    for model, title, file in CONFIGS.values():
        path = manifests / file
        text = schema_text(model, title)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run `build-dataset schema --write`", file=sys.stderr)
            stale = 1
        else:
            print(f"{path} is current")
    return stale


def _quiet_libraries(progress: bool) -> None:
    """Keep library chatter (not errors) off the console; the build prints its own progress."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if not progress:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


if __name__ == "__main__":
    sys.exit(main())
