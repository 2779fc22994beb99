"""``build-dataset``: the command line.

Main form::

    build-dataset MANIFEST [--out DIR] [--dry-run [--json]] [--no-progress]

Subcommands: ``validate MANIFEST``, ``schema [--check|--write]``, ``train-au-adapter CONFIG``,
``train-feranno CONFIG``, ``index-reference CONFIG``, ``models list``, ``models fetch NAME``.
Bad input exits with code 2 and one message that names the file, the field
and the fix; an interrupted build exits 130 and resumes on the next run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import UserError

SUBCOMMANDS = ("validate", "schema", "train-au-adapter", "train-feranno", "index-reference", "models")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-dataset",
        description="Build a synthetic facial-expression dataset from a synthesis manifest. "
        "Other commands: 'build-dataset validate MANIFEST', 'build-dataset schema', "
        "'build-dataset train-au-adapter CONFIG', 'build-dataset train-feranno CONFIG', "
        "'build-dataset index-reference CONFIG', "
        "'build-dataset models list|fetch NAME'.",
    )
    p.add_argument("manifest", type=Path, help="synthesis manifest (YAML)")
    p.add_argument("--out", type=Path, help="build folder (default: out/<manifest name>); rerun to resume")
    p.add_argument("--dry-run", action="store_true", help="print the plan (counts, shards, work) and load no model")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"build-dataset {__version__}")
    return p


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-dataset validate", description="Check a manifest and exit.")
    p.add_argument("manifest", type=Path)
    return p


def _schema_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-dataset schema",
                                description="Print the manifest JSON schema, or write/check the schemas in manifests/.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="write manifests/schema.json")
    g.add_argument("--check", action="store_true", help="exit 1 if manifests/schema.json is stale")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in CONFIG_COMMANDS:
            return _config_command(argv[1:], argv[0], *CONFIG_COMMANDS[argv[0]])
        if argv and argv[0] in SUBCOMMANDS:
            commands = {"validate": _cmd_validate, "schema": _cmd_schema, "models": _cmd_models}
            return commands[argv[0]](argv[1:])
        return _cmd_build(_build_parser().parse_args(argv))
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_build(args: argparse.Namespace) -> int:
    from .manifest_loader import load_manifest

    manifest = load_manifest(args.manifest)
    out = args.out or Path("out") / manifest.name
    if args.dry_run:
        from .plan import format_plan, make_plan, plan_json

        plan = make_plan(manifest, out)
        print(plan_json(plan) if args.json else format_plan(plan, manifest))
        return 0
    if args.json:
        raise UserError("--json only applies to --dry-run", fix="add --dry-run, or drop --json")

    _quiet_libraries(progress=not args.no_progress)
    from .run import build

    result = build(manifest, out, progress=not args.no_progress, log=_log)
    stats = result.stats or {}
    released = stats.get("released", {})
    splits = ", ".join(f"{k} {v}" for k, v in released.get("splits", {}).items())
    dropped = sum(sum(s.get("dropped", {}).values()) for s in stats.get("stages", {}).values())
    if result.released:
        _log(f"done: {released.get('total', 0)} images ({splits}); {dropped} dropped "
             f"(see {out / 'rejected'}); dataset {out / 'hf'}, card {out / 'README.md'}")
    return 0


def _cmd_validate(argv: list[str]) -> int:
    from .manifest_loader import load_manifest

    args = _validate_parser().parse_args(argv)
    manifest = load_manifest(args.manifest)
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
    print(fetch(args.name))
    return 0


def _cmd_schema(argv: list[str]) -> int:
    from .schema import SCHEMAS, schema_text

    args = _schema_parser().parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(schema_text())
        return 0
    stale = 0
    for path, (model, title) in SCHEMAS.items():
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
