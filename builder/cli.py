"""``build-dataset``: the command line, a thin click layer over ``builder.api``.

Main form::

    build-dataset MANIFEST [--out DIR] [--dry-run [--json]] [--no-progress] [--executor local|ray] ...

and the subcommands ``build-dataset --help`` lists. Bad input exits with code 2 and one message that names the
file, the field and the fix; an interrupted build exits 130 and resumes on the next run. ``--quiet``,
``--verbose`` and ``--log-file FILE`` (before or after the subcommand) set what is printed and kept.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from builder.core.errors import (
    UserError,
    is_storage_fault,
    storage_error,
    storage_fault,
)
from builder.core.log import configure, info
from builder.core.version import __version__

PATH = click.Path(path_type=Path)


def _set_logging(ctx: click.Context, param: click.Parameter, value) -> None:
    """Any of --quiet, --verbose, --log-file, wherever given: (re)configure the tool's logger."""
    state = ctx.find_root().meta.setdefault("logging", {"level": logging.INFO, "file": None})
    if param.name == "quiet" and value:
        state["level"] = logging.WARNING
    elif param.name == "verbose" and value:
        state["level"] = logging.DEBUG
    elif param.name == "log_file" and value is not None:
        state["file"] = str(value)
    configure(state["level"], state["file"])


def logging_options(fn):
    for option in (
        click.option("--log-file", type=PATH, expose_value=False, callback=_set_logging,
                     help="also write every message, with times, to this file"),
        click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_set_logging,
                     help="more detail (model loading, per-stage set-up)"),
        click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_set_logging,
                     help="only warnings and errors"),
    ):
        fn = option(fn)
    return fn


class DefaultGroup(click.Group):
    """``build-dataset MANIFEST ...`` is ``build-dataset build MANIFEST ...``: an argument that names no
    subcommand starts a build."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["build", *args]
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage("build-dataset", "MANIFEST [OPTIONS]  |  build-dataset COMMAND [ARGS]...")


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="build-dataset")
@logging_options
def cli() -> None:
    """Build a synthetic facial-expression dataset from a synthesis manifest (``build-dataset MANIFEST``), and
    review, release, publish and evaluate it."""


@cli.command("build")
@click.argument("manifest", type=PATH)
@click.option("--out", type=PATH, help="build folder (default: out/<manifest name>); rerun to resume")
@click.option("--dry-run", is_flag=True, help="print the plan (counts, shards, work) and load no model")
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where shards run: this process, or actors on a Ray cluster; a build may resume under either")
@click.option("--address", metavar="ADDR", help="with --executor ray: the cluster to join ('auto' or HOST:6379; "
              "the build folder must be on storage every node sees); default: a local Ray")
@click.option("--ray-actors", type=int, metavar="N", help="with --executor ray: number of actors (default: one "
              "per GPU, or one per CPU without GPUs)")
@click.option("--allow-empty", is_flag=True, help="release even when every sample was dropped (otherwise exit 2 "
              "with what each stage dropped)")
@click.option("--trust-remote-code", is_flag=True, help="let classifier configs (guide, experts) name "
              "nn.Module classes outside torch and this tool; off by default, because importing a class runs its "
              "package's code: use it only for configs whose code you trust")
@click.option("--threads", type=int, metavar="N", help="torch CPU threads in every worker (default: the count "
              "the build started with, recorded in build.json; a new build records this machine's default). CPU "
              "pixels depend on it")
@logging_options
def build_command(manifest: Path, out: Path | None, dry_run: bool, as_json: bool, no_progress: bool,
                  executor: str, address: str | None, ray_actors: int | None, allow_empty: bool,
                  trust_remote_code: bool, threads: int | None) -> int:
    """Build (or resume) the dataset MANIFEST describes."""
    from builder import api

    if out is not None and not dry_run:
        _remember_out(out)
    loaded = api.validate(manifest, trust_remote_code)
    out = out or Path("out") / loaded.name
    if dry_run:
        from builder.plan import format_plan, plan_json

        runner = api._executor(executor, address, ray_actors, info)
        plan = api.plan(loaded, out)
        plan["executor"] = runner.describe() if runner else "local: shards one after another in this process"
        click.echo(plan_json(plan) if as_json else f"{format_plan(plan, loaded)}\nexecutor: {plan['executor']}")
        return 0
    if as_json:
        raise UserError("--json only applies to --dry-run", fix="add --dry-run, or drop --json")
    _remember_out(out)
    _quiet_libraries(progress=not no_progress)
    result = api.build(loaded, out, executor=executor, address=address, ray_actors=ray_actors, threads=threads,
                       trust_remote_code=trust_remote_code, allow_empty=allow_empty, progress=not no_progress)
    stats = result.stats or {}
    released = stats.get("released", {})
    splits = ", ".join(f"{k} {v}" for k, v in released.get("splits", {}).items())
    dropped = sum(sum(s.get("dropped", {}).values()) for s in stats.get("stages", {}).values())
    if result.released:
        info(f"done: {released.get('total', 0)} images ({splits}); {dropped} dropped (see {out / 'rejected'}); "
             f"dataset {out / 'hf'}, card {out / 'README.md'}")
    return 0


@cli.command()
@click.argument("manifest", type=PATH)
@click.option("--trust-remote-code", is_flag=True, help="accept classifier configs (guide, experts) that name "
              "nn.Module classes outside torch and this tool, as the build does with this flag (their module is "
              "then imported to check the class; without the flag such a config is refused, nothing imported)")
@logging_options
def validate(manifest: Path, trust_remote_code: bool) -> int:
    """Check a manifest and every model it refers to (files, folders, configs, registry names, the Hub cache
    when offline) without loading any model; all bad references are listed at once."""
    from builder import api

    loaded = api.validate(manifest, trust_remote_code)
    click.echo(f"{manifest}: ok ({loaded.total} samples, {loaded.num_shards()} shards)")
    return 0


def _config_names() -> list[str]:
    from builder.schema import CONFIGS

    return sorted(CONFIGS)


@cli.command()
@click.option("--config", type=click.Choice(_config_names()), default="manifest", show_default=True,
              help="which file's schema to print: the synthesis manifest, a command's config, or a classifier "
              "config")
@click.option("--write", is_flag=True, help="checkout only: write every schema into manifests/")
@click.option("--check", is_flag=True, help="checkout only: exit 1 if a schema in manifests/ is stale")
@logging_options
def schema(config: str, write: bool, check: bool) -> int:
    """Print a JSON schema (from the models: works wherever the tool is installed), or write/check every schema
    file in a source checkout's manifests/."""
    from builder.schema import CONFIGS, checkout_manifests, schema_text

    if write and check:
        raise click.UsageError("--write and --check exclude each other")
    if not (write or check):
        model, title, _ = CONFIGS[config]
        sys.stdout.write(schema_text(model, title))
        return 0
    manifests = checkout_manifests()
    stale = 0
    for model, title, file in CONFIGS.values():
        path = manifests / file
        text = schema_text(model, title)
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            click.echo(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            click.echo(f"{path} is stale: run `build-dataset schema --write`", err=True)
            stale = 1
        else:
            click.echo(f"{path} is current")
    return stale


def _config_command(name: str, example: str, run):
    @cli.command(name, help=f"{run.__doc__.split(';')[0].split('(')[0].strip()}. Example config: {example}.")
    @click.argument("config", type=PATH)
    @click.option("--no-progress", is_flag=True, help="no progress bars")
    @logging_options
    def command(config: Path, no_progress: bool) -> int:
        _quiet_libraries(progress=not no_progress)
        run(config, progress=not no_progress)
        return 0

    return command


def _train_au_adapter(config, progress):
    """Train an AU adapter on a frozen generator; rerun to resume"""
    from builder import api

    return api.train_au_adapter(config, progress=progress)


def _train_feranno(config, progress):
    """Train a FERAnno expression labeller on a frozen diffusion model's features; rerun to resume"""
    from builder import api

    return api.train_feranno(config, progress=progress)


def _index_reference(config, progress):
    """Index the faces of real reference photos for the identity-leak gate; a rerun embeds only new images"""
    from builder import api

    return api.index_reference(config, progress=progress)


@cli.command("train-generator", help="Fine-tune the generator on expression image-text pairs, LoRA or full; rerun "
             "to resume. Example config: manifests/train/generator-demo.yaml.")
@click.argument("config", type=PATH)
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--trust-remote-code", is_flag=True, help="let validation.expert's classifier config name a class "
              "outside torch and this tool")
@logging_options
def train_generator(config: Path, no_progress: bool, trust_remote_code: bool) -> int:
    from builder import api

    _quiet_libraries(progress=not no_progress)
    api.train_generator(config, progress=not no_progress, trust_remote_code=trust_remote_code)
    return 0


_config_command("train-au-adapter", "manifests/train/au-adapter-demo.yaml", _train_au_adapter)
_config_command("train-feranno", "manifests/train/feranno-demo.yaml", _train_feranno)
_config_command("index-reference", "manifests/reference/demo.yaml", _index_reference)


@cli.group()
def models() -> None:
    """The models the tool uses (a registry of pinned files)."""


@models.command("list")
@logging_options
def models_list() -> int:
    """Every registered model: source, sha256, licence, whether it is cached."""
    from builder import api

    for row in api.models():
        click.echo(f"{row['name']}  [{row['kind']}]  {row['license']}  {row['status']}\n"
                   f"    source: {row['source']}\n    sha256: {row['sha256']}\n    {row['description']}")
    return 0


@models.command("fetch")
@click.argument("name")
@logging_options
def models_fetch(name: str) -> int:
    """Download (or build) a model, check its sha256, cache it; print its path."""
    from builder import api

    click.echo(api.fetch_model(name))
    return 0


@cli.command()
@click.argument("out", type=PATH)
@click.option("--name", help="FiftyOne dataset name (default: fer-synth/<manifest name>-<fingerprint[:8]>)")
@click.option("--port", type=int, default=5151, show_default=True, help="App port (0: any free port)")
@click.option("--address", default="127.0.0.1", show_default=True, help="address the App listens on (0.0.0.0 "
              "serves other machines)")
@click.option("--no-launch", is_flag=True, help="create or update the dataset and exit")
@logging_options
def review(out: Path, name: str | None, port: int, address: str, no_launch: bool) -> int:
    """Put a finished release (released and rejected samples, predictions, scores, saved views) into a
    persistent FiftyOne dataset and serve the App on it until Ctrl-C. Tag samples 'reject' or 'relabel:<class>'
    there; `build-dataset release OUT` applies them."""
    from builder import api

    return api.review(out, name=name, address=address, port=port, launch=not no_launch)


@cli.command()
@click.argument("out", type=PATH)
@click.option("--decisions", type=PATH, help='JSON {"decisions": {sample_id: "reject" | "relabel:<class>"}} '
              "instead of the FiftyOne tags; merged with earlier decisions files (a contradiction is refused)")
@click.option("--no-review", is_flag=True, help="drop earlier review decisions and release without")
@click.option("--name", help="FiftyOne dataset name (default: the one `build-dataset review` made)")
@click.option("--allow-empty", is_flag=True, help="release even when no sample is left")
@logging_options
def release(out: Path, decisions: Path | None, no_review: bool, name: str | None, allow_empty: bool) -> int:
    """Apply review decisions (the 'reject' and 'relabel:<class>' tags set in the FiftyOne App by
    `build-dataset review`, or a JSON file) and write the dataset, card and stats again. Shards are not
    touched."""
    from builder import api

    if decisions is not None and no_review:
        raise click.UsageError("--decisions and --no-review exclude each other")
    _remember_out(out)
    _quiet_libraries(progress=False)
    stats = api.release(out, decisions=decisions, no_review=no_review, fiftyone_name=name,
                        from_fiftyone=decisions is None and not no_review, allow_empty=allow_empty)
    meta = stats["stages"].get("review", {}).get("meta")
    info(f"released {stats['released']['total']} images"
         + (f"; review: {meta['rejected']} rejected, {meta['relabelled']} relabelled" if meta else
            "; no review decisions"))
    return 0


@cli.command()
@click.argument("out", type=PATH)
@click.option("--repo-id", required=True, metavar="ID", help="dataset repo OWNER/NAME; created if missing")
@click.option("--private", is_flag=True, help="create the repo private (an existing repo keeps its visibility)")
@click.option("--dry-run", is_flag=True, help="print what would be added, updated, unchanged or deleted; change "
              "nothing")
@click.option("--revision", metavar="BRANCH", help="branch to push to (default main; created from main if "
              "missing)")
@click.option("--message", metavar="TEXT", help="commit message (default: 'Upload <dataset> <version> release')")
@logging_options
def push(out: Path, repo_id: str, private: bool, dry_run: bool, revision: str | None, message: str | None) -> int:
    """Upload a released build folder (README.md, stats.json, data/, figures/, eval/) to a Hugging Face Hub
    dataset repo in one commit; unchanged files are skipped. Token: HF_TOKEN or `hf auth login`."""
    from builder import api
    from cards.push import format_result

    result = api.push(out, repo_id, private=private, dry_run=dry_run, revision=revision, message=message)
    click.echo(format_result(result, out))
    return 0


def _set_options(flag: str, role: str, split: str, repeatable: bool = False):
    """``FLAG PATH`` and its ``FLAG-split``, ``-image-column``, ``-label-column``, ``-label-map``, ``-label-base``.
    ``repeatable``: every option may repeat (tuples; ``_per_set`` pairs them with the sets)."""
    many = {"multiple": True} if repeatable else {}
    each = " (repeatable: once for every set, or once per set in their order)" if repeatable else ""

    def default(value):
        return {"default": (), "help_default": f" (default: {value})"} if repeatable else \
            {"default": value, "show_default": True, "help_default": ""}

    def add(fn):
        name = flag.lstrip("-").replace("-", "_")
        image, label = default("image"), default("label")
        for option in reversed((
            click.option(flag, name, type=PATH, required=flag in ("--test", "--reference"), metavar="PATH", **many,
                         help=f"{role}: a dataset saved with save_to_disk, or an image folder class_name/*.jpg"
                         + ("; repeatable: several test sets give a matrix (training configuration x test set), "
                            "each set's options below pair with it by order" if repeatable else "")),
            click.option(f"{flag}-split", f"{name}_split", **many,
                         help=f"split of a saved DatasetDict (default: {split}){each}"),
            click.option(f"{flag}-image-column", f"{name}_image_column", **many,
                         help=f"image column{image.pop('help_default')}{each}", **image),
            click.option(f"{flag}-label-column", f"{name}_label_column", **many,
                         help=f"label column{label.pop('help_default')}{each}", **label),
            click.option(f"{flag}-label-map", f"{name}_label_map", metavar="MAP", **many,
                         help="class order of integer labels or numbered class folders: affectnet7, affectnet8, "
                         f"rafdb, fer2013, or names separated by commas (default: the ClassLabel / folder names){each}"),
            click.option(f"{flag}-label-base", f"{name}_label_base", type=click.IntRange(0, 1), **many,
                         **({"default": ()} if repeatable else {"default": 0}),
                         help=f"1 when those integers count from 1 (RAF-DB's files){each}"),
        )):
            fn = option(fn)
        return fn

    return add


def _per_set(values: tuple, n: int, flag: str, default):
    """A repeatable per-set option for ``n`` --test sets: absent (``default`` for all), once (for all) or n times
    (in order)."""
    if not values:
        return [default] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) == n:
        return list(values)
    raise UserError(f"{flag} is given {len(values)} times for {n} --test sets",
                    fix=f"give {flag} once (it then applies to every --test) or once per --test, in the same order")


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("out", type=PATH)
@click.option("--train-split", default="train", show_default=True, help="the build's split to train on")
@_set_options("--test", "the real labelled test set", "test", repeatable=True)
@_set_options("--train-real", "a real labelled training set to mix in (needs --mix)", "train")
@click.option("--mix", type=float, metavar="RATIO", help="fraction of real samples in every epoch, 0-1 (0: "
              "synthetic only, 1: real only)")
@click.option("--sizes", metavar="N,N,...", help="scaling sweep: train on nested class-balanced subsets of the "
              "build's split of these sizes, synthetic only: sample counts (1000,5000,20000) or, all <= 1, fractions "
              "of the split (0.25,0.5,1); a size above the split is refused")
@click.option("--synthetic-ratios", metavar="R,R,...", help="mix sweep, with --train-real: the whole real set plus "
              "R x |real| synthetic images per run, every image once per epoch (0: real only, the baseline, always "
              "run); reports the gain over real only. Unlike --mix (the real fraction of every epoch of one run)")
@click.option("--seeds", metavar="S,S,...", help="repeat every run with each seed (subset choice and training); "
              "sweeps report mean and std; replaces --seed")
@click.option("--backbone", default="microsoft/resnet-18", show_default=True, help="a Hub id "
              "(microsoft/resnet-18, microsoft/resnet-50, google/vit-base-patch16-224), a save_pretrained folder, "
              "or ir50:CHECKPOINT (ir50 alone: random init)")
@click.option("--revision", help="Hub revision of the backbone (default: main)")
@click.option("--mode", type=click.Choice(["finetune", "linear"]), default="finetune", show_default=True,
              help="fine-tune the whole network, or train a linear probe on frozen features")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="backbone learning rate when "
              "fine-tuning (AdamW)")
@click.option("--head-lr", type=float, help="head learning rate (default: 1e-3 fine-tuning, 1e-2 linear)")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--image-size", type=int, help="backbone input side (default: the backbone's own)")
@click.option("--no-align", is_flag=True, help="do not detect and align faces (pre-aligned sets): centre crops")
@click.option("--no-flip", is_flag=True, help="no horizontal-flip augmentation")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when present), cpu, cuda, cuda:N")
@click.option("--name", help="result name: OUT/eval/NAME.json (default: backbone-mode-testset[-mixR])")
@click.option("--force", is_flag=True, help="evaluate even with the model that guided or labelled the build "
              "(result marked guard_overridden)")
@click.option("--allow-overlap", is_flag=True, help="evaluate even when test images are exact or near (perceptual "
              "hash within 4 bits) duplicates of training images; refused by default, reported either way")
@logging_options
def evaluate(out: Path, test, test_split, test_image_column, test_label_column, test_label_map, test_label_base,
             train_real, train_real_split, train_real_image_column, train_real_label_column, train_real_label_map,
             train_real_label_base, no_align: bool, no_flip: bool, **settings) -> int:
    """Train an expression classifier on a released build (synthetic only, or mixed with real images) and test
    it on a real labelled set; results go to OUT/eval/ and the data card. Sweeps: --sizes (scaling),
    --synthetic-ratios (real + synthetic), --seeds (error bars) and several --test sets (a matrix) train once per
    configuration and seed, test on every set, and write one OUT/eval/NAME.json (and a figure)."""
    from builder import api

    n = len(test)
    columns = zip(test, _per_set(test_split, n, "--test-split", None),
                  _per_set(test_image_column, n, "--test-image-column", "image"),
                  _per_set(test_label_column, n, "--test-label-column", "label"),
                  _per_set(test_label_map, n, "--test-label-map", None),
                  _per_set(test_label_base, n, "--test-label-base", 0))
    test_sets = [api.LabelledSet(*c) for c in columns]
    real_set = None if train_real is None else api.LabelledSet(
        train_real, train_real_split, train_real_image_column, train_real_label_column, train_real_label_map,
        train_real_label_base)
    result = api.evaluate(out, test_sets if n > 1 else test_sets[0], train_real=real_set, align=not no_align,
                          flip=not no_flip,
                          command=("build-dataset", "evaluate", *click.get_current_context().meta["argv"]),
                          **settings)
    if result.get("kind") == "fer-synth-evaluation-sweep":
        for row in result["summary"]:
            gain = f", gain over real only {row['gain']['mean']:+.4f}" if row.get("gain") else ""
            click.echo(f"{row['point']} | {row['test']}: accuracy {row['accuracy']['mean']:.4f} "
                       f"(std {row['accuracy']['std']:.4f}), macro accuracy {row['macro_accuracy']['mean']:.4f}"
                       f"{gain}")
        click.echo(f"-> {Path(out) / 'eval' / (result['name'] + '.json')}")
        return 0
    m = result["metrics"]
    click.echo(f"{result['name']}: accuracy {m['accuracy']:.4f}, macro accuracy {m['macro_accuracy']:.4f}, macro "
               f"F1 {m['macro_f1']:.4f} over {len(m['evaluated_classes'])} classes ({m['samples_evaluated']} of "
               f"{m['samples_total']} test samples) -> {Path(out) / 'eval' / (result['name'] + '.json')}")
    return 0


@cli.command()
@click.argument("out", type=PATH)
@_set_options("--reference", "the real labelled set to compare with", "train")
@click.option("--split", "splits", multiple=True, metavar="SPLIT", help="a split of the release to measure "
              "(repeatable; default: every split)")
@click.option("--encoder", default="openai/clip-vit-base-patch32", show_default=True, help="image encoder: a Hub id "
              "(openai/clip-vit-base-patch32, facebook/dinov2-base, facebook/dinov2-large) or a save_pretrained "
              "folder with its image processor; safetensors only")
@click.option("--revision", help="Hub revision of the encoder (default: main)")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when present), cpu, cuda, cuda:N")
@click.option("--kid-subsets", type=int, default=100, show_default=True, help="KID: number of random subsets")
@click.option("--kid-subset-size", type=int, default=1000, show_default=True, help="KID: samples per subset (at "
              "most the smaller set or class)")
@click.option("--min-class-samples", type=int, default=5, show_default=True, help="classes with fewer images on "
              "either side get no per-class FD/KID (listed as too small)")
@click.option("--diversity", type=click.Choice(["cosine", "l2"]), default="cosine", show_default=True,
              help="within-class diversity: mean pairwise cosine distance or L2 distance of features")
@click.option("--faces", type=click.Choice(["whole", "crop"]), default="whole", show_default=True,
              help="encode whole images, or face crops aligned as `evaluate` aligns them (both sides)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the KID subsets")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@logging_options
def fidelity(out: Path, reference, reference_split, reference_image_column, reference_label_column,
             reference_label_map, reference_label_base, splits, no_progress: bool, **settings) -> int:
    """Frechet distance and KID between a release's images and a real labelled set in an image encoder's feature
    space (CLIP, DINOv2), overall and per class, plus within-class diversity; writes OUT/fidelity/."""
    from builder import api
    from evaluation.fidelity import summary

    reference_set = api.LabelledSet(reference, reference_split, reference_image_column, reference_label_column,
                                    reference_label_map, reference_label_base)
    result = api.fidelity(out, reference_set, splits=tuple(splits), progress=not no_progress,
                          command=("build-dataset", *click.get_current_context().meta.get("argv", ())),
                          **settings)
    click.echo(summary(result))
    return 0


@cli.command()
@click.argument("out", type=PATH)
@click.option("--classifier", "classifiers", multiple=True, required=True, metavar="[ATTRIBUTE=]MODEL",
              help="an attribute classifier: a transformers image-classification model (Hub id or save_pretrained "
              "folder, safetensors only) whose id2label defines the groups; ATTRIBUTE is the prompt axis it audits "
              "(e.g. age=nateraw/vit-age-classifier; guessed from the labels when left out); repeatable")
@click.option("--map", "maps", multiple=True, metavar="ATTRIBUTE:VALUE=LABEL[,LABEL...]",
              help="which classifier labels count as a prompted value (e.g. age:young=10-19,20-29); repeatable; "
              "values not given are matched by name (case, spaces and punctuation ignored; man/male, woman/female)")
@click.option("--split", "splits", multiple=True, metavar="SPLIT", help="a split of the release to audit "
              "(repeatable; default: every split)")
@click.option("--whole-image", is_flag=True, help="classify whole images instead of aligned face crops")
@click.option("--revision", help="Hub revision of the classifiers (default: main)")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when present), cpu, cuda, cuda:N")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@logging_options
def audit(out: Path, classifiers, maps, splits, whole_image: bool, no_progress: bool, **settings) -> int:
    """Demographic audit: attribute classifiers predict each released image's group (age, gender presentation,
    skin tone..., as each model defines them), compared with the prompted attribute values: agreement and total
    variation distance per attribute, overall, per split and per class; writes OUT/eval/audit.json and audit.png,
    and refreshes OUT/report/ and the card."""
    from builder import api
    from evaluation.audit import summary

    result = api.audit(out, list(classifiers), maps=list(maps), splits=tuple(splits), whole_image=whole_image,
                       progress=not no_progress,
                       command=("build-dataset", *click.get_current_context().meta.get("argv", ())), **settings)
    click.echo(summary(result))
    return 0


@cli.command()
@click.argument("out", type=PATH)
@logging_options
def report(out: Path) -> int:
    """Gather the results in a build folder (OUT/eval/*.json, OUT/fidelity/fidelity.json, OUT/eval/audit.json)
    into OUT/report/report.json and report.md, with headline figures, and show the headline in the card."""
    from builder import api
    from cards.evaluation_section import headline_lines

    result = api.report(out)
    lines = headline_lines(result["headline"]) or ["no results yet (run evaluate, fidelity or audit)"]
    click.echo("\n".join(lines))
    click.echo(f"report: {Path(out) / 'report' / 'report.md'}")
    return 0


@cli.command()
@click.argument("out", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@logging_options
def status(out: Path, as_json: bool) -> int:
    """Where a build folder stands: its manifest, shards done, what the stages kept and dropped so far, the last
    error, and whether a release exists and is current."""
    import json

    from builder import api
    from builder.status import format_status

    summary = api.status(out)
    click.echo(json.dumps(summary, indent=1) if as_json else format_status(summary))
    return 0


def _remember_out(out: Path) -> None:
    """The build folder this command writes, for the resume line of a failure message."""
    click.get_current_context().find_root().meta["out"] = Path(out)


def _failed(ctx: click.Context | None, argv: list[str], message: str) -> None:
    """After an error message: where the partial results are and how to go on (one line), and the message kept
    for ``build-dataset status``."""
    out = ctx.meta.get("out") if ctx is not None else None
    if out is None:
        return
    from builder.status import record_failure, resume_hint

    print(f"  {resume_hint(out)}", file=sys.stderr)
    record_failure(out, ["build-dataset", *argv], message)


SUBCOMMANDS = tuple(name for name in cli.commands if name != "build")


def main(argv: list[str] | None = None) -> int:
    """Run ``build-dataset`` with ``argv`` (default: the process's arguments); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure()
    ctx = None
    try:
        ctx = cli.make_context("build-dataset", list(argv))
        with ctx:
            ctx.meta["argv"] = argv[1:] if argv and argv[0] == "evaluate" else argv
            result = cli.invoke(ctx)
        if ctx.meta.get("out") is not None:
            from builder.status import clear_failure

            clear_failure(ctx.meta["out"])
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        print("\ninterrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        _failed(ctx, argv, exc.render())
        return exc.exit_code
    except Exception as exc:  # a full disk or read-only folder anywhere, maybe wrapped by a library
        if not is_storage_fault(exc):
            raise
        error = storage_error(exc, storage_fault(exc).filename or ".")
        print(f"error: {error.render()}", file=sys.stderr)
        _failed(ctx, argv, error.render())
        return error.exit_code


def _quiet_libraries(progress: bool) -> None:
    """Keep library chatter (not errors) off the console; the build prints its own progress (``progress``:
    the tool's bars). ``datasets``' own bars are off either way: the tool's bars say what is happening."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
