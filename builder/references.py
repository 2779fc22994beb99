"""Every model a manifest refers to, checked cheaply before anything loads, and the readers of model files.

``check_references(manifest)`` lists each missing or invalid model reference of a manifest as
``"<field>: <problem> (fix: ...)"``; ``require_references`` raises one ``ModelLoadError`` naming the manifest
that lists all of them, so a user fixes every reference in one round instead of one per failed build.
``build-dataset validate``, ``--dry-run`` and ``build()`` call it before anything is created, locked or loaded.

The checks are cheap and load no weights: a path exists and is what the field needs (a file, a folder with
its expected files), configs parse and validate, safetensors headers describe exactly the bytes the file
holds, registry names exist and are of the right kind, a classifier config's architecture is one it may name
without ``--trust-remote-code`` (then its module is imported, as the build would, and the class must be an
``nn.Module`` subclass; it is never called; without the flag a class from outside torch and this tool is
refused and nothing is imported), and a Hub id is in the local Hugging Face cache when
the machine is offline (``HF_HUB_OFFLINE``; online the network is not touched: the load checks it). Relative
paths are read from the folder build-dataset runs in, as the build reads them.

The file readers are the loaders' own (``builder.models.files``), and the config schemas live beside each
model in modules without torch, so the checks import no torch; only a classifier config (``.yaml``) imports
torch, through ``builder.models.fer``.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from builder.core.errors import ModelLoadError, UserError
from builder.manifest import BUILTIN_TINY_MODEL
from builder.manifest.label_maps import CANONICAL
from builder.models.files import first_line, read_json_config, safetensors_problem
from builder.synthesis import au_adapter_config
from builder.synthesis.au_adapter_config import AUAdapterConfig
from curation.identity.folder import ReferenceIndexInfo
from curation.labelling.feranno import config_file as feranno_files
from curation.labelling.feranno.config_file import FERAnnoConfigFile

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
LAYOUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Images ``generator.layout.images`` reads (``builder.synthesis.layout``)."""
AU_ADAPTER_FILES = (au_adapter_config.CONFIG_NAME, au_adapter_config.WEIGHTS_NAME)
FERANNO_FILES = (feranno_files.CONFIG_NAME, feranno_files.WEIGHTS_NAME)
SCRFD_FIX = ("download the buffalo_l pack from the insightface releases, unpack it, and set "
             "curation.faces.detector_model to the path of its detector, det_10g.onnx (an SCRFD .onnx file with "
             "landmarks)")
"""As ``curation.faces.scrfd.FIX`` says it (that module imports torch)."""
# -- a manifest's references ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One bad reference: the manifest field, what is wrong, and how to fix it."""

    field: str
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


ALL_FIX = ("fix each field listed (relative paths are read from the folder build-dataset runs in); `build-dataset "
           "validate MANIFEST` checks them again without loading any model")


def check_references(manifest, trust_remote_code: bool = False) -> list[str]:
    """Every missing or invalid model reference of ``manifest``, as ``"<field>: <problem> (fix: ...)"``; [] when
    all are fine. Loads no model (see the module docstring)."""
    return [str(p) for p in problems(manifest, trust_remote_code)]


def require_references(manifest, trust_remote_code: bool = False, file: str | Path | None = None) -> None:
    """Raise one ``ModelLoadError`` (naming ``file``, the manifest) that lists every bad model reference (one
    alone is said on the first line, with its own fix)."""
    found = problems(manifest, trust_remote_code)
    file = None if file is None else str(file)
    if len(found) == 1:  # on the first line, with its own fix
        raise ModelLoadError(f"{found[0].field}: {found[0].message}", file=file, fix=found[0].fix or ALL_FIX)
    if found:
        raise ModelLoadError(f"{len(found)} model references are missing or invalid:\n"
                             + "\n".join(f"    - {p}" for p in found), file=file, fix=ALL_FIX)


def problems(manifest, trust_remote_code: bool = False) -> list[Problem]:
    """``check_references`` as ``Problem`` objects, in manifest order."""
    return list(_manifest(manifest, trust_remote_code))


def _manifest(m, trust: bool) -> Iterator[Problem]:
    """(field, checks) of every reference the manifest makes, in manifest order; a file the checks cannot read
    (permissions, I/O) is a problem of its field too."""
    for field, checks in _references(m, trust):
        try:
            yield from checks
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            yield Problem(field, f"cannot be read{where}: {exc.strerror or type(exc).__name__}",
                          "check the path and its permissions")


def _references(m, trust: bool) -> Iterator[tuple[str, Iterator[Problem]]]:
    g = m.generator
    if g is not None:
        yield "generator.model", _pipeline("generator.model", g.model, g.revision)
        for i, lora in enumerate(g.lora):
            yield from _lora(i, lora.path)
        if g.au_adapter is not None:
            yield "generator.au_adapter.path", _au_adapter("generator.au_adapter.path", g.au_adapter.path,
                                                           m.aus.names)
        if g.guidance is not None:
            field = "generator.guidance.classifier"
            yield field, _classifier(field, g.guidance.classifier, trust)
            if g.guidance.decoder is not None:
                yield "generator.guidance.decoder", _decoder("generator.guidance.decoder", g.guidance.decoder)
        if g.layout is not None:
            yield "generator.layout.images", _layout("generator.layout.images", g.layout.images)
    if m.prompts is not None and m.prompts.enrich is not None:
        yield "prompts.enrich.model", _folder_with("prompts.enrich.model", m.prompts.enrich.model, ("config.json",),
                                                   "a transformers causal language model folder (save_pretrained "
                                                   "output)")
    if m.labelling is not None:
        for i, expert in enumerate(m.labelling.experts):
            field = f"labelling.experts.{i}.model"
            yield field, _classifier(field, expert.model, trust)
        if m.labelling.feranno is not None:
            yield "labelling.feranno.model", _feranno("labelling.feranno.model", m.labelling.feranno.model)
    c = m.curation
    if c.faces.enabled and c.faces.detector == "scrfd" and c.faces.detector_model is not None:
        field = "curation.faces.detector_model"
        yield field, _file(field, c.faces.detector_model, SCRFD_FIX)
    if c.identity_leak is not None:
        field = "curation.identity_leak.index"
        yield field, _index(field, c.identity_leak.index, searchable=True)
        if c.identity_leak.pairs is not None:
            yield "curation.identity_leak.pairs", _pairs("curation.identity_leak.pairs", c.identity_leak.pairs)
    if c.dedupe.enabled and c.dedupe.reference is not None:
        yield "curation.dedupe.reference", _index("curation.dedupe.reference", c.dedupe.reference, searchable=False)
    embeds = (c.dedupe.enabled and c.dedupe.embedding_similarity is not None) or c.identities is not None
    if embeds and c.embedder.backend == "insightface" and c.embedder.model is not None:
        yield "curation.embedder.model", _insightface("curation.embedder.model", c.embedder.model)
    for field, modules in _identity_uses(m):
        yield field, _extra(field, "identity", modules)
    if m.annotate is not None:
        yield from _annotate_references(m.annotate, trust)
    if m.edit is not None and m.edit.identity.embedder == "insightface":
        yield "edit.identity.model", _insightface("edit.identity.model", m.edit.identity.model)


def _annotate_references(a, trust: bool) -> Iterator[tuple[str, Iterator[Problem]]]:
    """The training-pair models: upscaler, AU detector, caption model, and the text encoder whose tokenizer
    counts caption tokens; each checked by its loader's own cheap check."""
    if a.upscale.model != "none":
        from builder.models.upscalers import reference_problems

        yield "annotate.upscale.model", _problems("annotate.upscale.model", reference_problems(a.upscale.model))
    if a.aus.model != "none":
        from builder.models.au_detector import reference_problems

        yield "annotate.aus.model", _problems("annotate.aus.model", reference_problems(a.aus.model, trust))
    if a.captions.model != "template":
        from builder.models.captioners import reference_problems

        yield "annotate.captions.model", _problems("annotate.captions.model", reference_problems(a.captions.model))
    yield "annotate.checks.text_encoder", _pipeline("annotate.checks.text_encoder", a.checks.text_encoder, None)


def _lora(index: int, ref: str) -> Iterator[tuple[str, Iterator[Problem]]]:
    """(field, checks) of LoRA ``index``."""
    from builder.models.lora import field_name

    field = field_name(index)
    yield field, _lora_checks(field, ref)


def _lora_checks(field: str, ref: str) -> Iterator[Problem]:
    """A folder with a complete safetensors file in the diffusers layout (never a pickle) and, when present, a
    valid training summary; whether its keys fit the generator is checked once the generator loads."""
    from builder.models.lora import reference_problems

    yield from _problems(field, reference_problems(ref))


def _problems(field: str, found: list[tuple[str, str]]) -> Iterator[Problem]:
    """A loader's (message, fix) pairs as problems of ``field``."""
    for message, fix in found:
        yield Problem(field, message, fix)


def _identity_uses(m) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(field, modules it needs) of every manifest setting that uses the ``identity`` extra."""
    c = m.curation
    backend = ("dlib", "face_recognition_models") if c.embedder.backend == "dlib" else ("insightface", "onnxruntime")
    if c.faces.enabled and c.faces.detector == "scrfd":
        yield "curation.faces.detector", ("insightface", "onnxruntime")
    if c.identity_leak is not None:
        yield "curation.identity_leak", ("faiss",)  # and the index's embedder, checked when it loads
    if c.dedupe.enabled and c.dedupe.embedding_similarity is not None:
        yield "curation.dedupe.embedding_similarity", ("faiss", *backend)
    if c.identities is not None:
        yield "curation.identities", ("faiss", *backend)
    if m.edit is not None:
        yield "edit.identity", (("dlib", "face_recognition_models") if m.edit.identity.embedder == "dlib"
                                else ("insightface", "onnxruntime"))


def _extra(field: str, extra: str, modules: tuple[str, ...]) -> Iterator[Problem]:
    from builder.core.extras import EXTRAS, missing_modules

    missing = missing_modules(*modules)
    if missing:
        yield Problem(field, f"{EXTRAS[extra]} needs {', '.join(missing)}, which is not installed",
                      f"pip install 'fer-synth[{extra}]' (or 'fer-synth[all]')")


def _missing(field: str, ref: str, path: Path, fix: str) -> Problem:
    what = "does not exist" if not path.exists() else ("is not a folder" if path.is_file() else "is not a file")
    return Problem(field, f"'{ref}' {what}", fix)


def _is_local(ref: str) -> bool:
    """A local path rather than a Hub id (the rule of ``builder.models.diffusion.resolve_checkpoint``)."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def _hub(field: str, repo: str, revision: str | None, filename: str, what: str,
         missing: str = "is not in") -> Iterator[Problem]:
    """A Hub id: valid, and in the local cache when the machine is offline (online: not checked here);
    ``missing`` words its absence as the loader of the field does."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        yield Problem(field, f"'{repo}' is neither an existing local folder nor a Hub id",
                      f"give {what} or a Hub id like 'org/name'")
        return
    if not constants.HF_HUB_OFFLINE:
        return
    at = f" (revision '{revision}')" if revision else ""
    try:
        cached = try_to_load_from_cache(repo, filename, revision=revision)
    except (HFValidationError, ValueError, OSError):
        cached = None
    if not isinstance(cached, str):
        yield Problem(field, f"'{repo}'{at} {missing} the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                      "the machine is offline (HF_HUB_OFFLINE=1)",
                      f"run `hf download {repo}` on a connected machine and copy the cache over, give {what}, or "
                      "unset HF_HUB_OFFLINE")


def _pipeline(field: str, model: str, revision: str | None) -> Iterator[Problem]:
    if model == BUILTIN_TINY_MODEL:
        return
    if model.startswith("builtin:"):
        yield Problem(field, f"'{model}' is not a built-in model", f"use '{BUILTIN_TINY_MODEL}', a Hub id or a "
                      "local diffusers folder")
        return
    what = "a local diffusers pipeline folder (with model_index.json)"
    if _is_local(model):
        yield from _folder_with(field, model, ("model_index.json",), what)
        return
    yield from _hub(field, model, revision, "model_index.json", what)


def _folder_with(field: str, ref: str, files: tuple[str, ...], what: str) -> Iterator[Problem]:
    """A folder that holds ``files``; ``what`` says what the field needs (for the fix)."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        yield _missing(field, ref, folder, f"give {what}")
        return
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        yield Problem(field, f"'{ref}' has no {' and no '.join(absent)}", f"give {what}")


def _file(field: str, ref: str, fix: str) -> Iterator[Problem]:
    path = Path(ref).expanduser()
    if not path.is_file():
        yield _missing(field, ref, path, fix)
    elif path.stat().st_size == 0:
        yield Problem(field, f"'{ref}' is an empty file", fix)


def _weights(field: str, path: Path, fix: str) -> Iterator[Problem]:
    problem = safetensors_problem(path)
    if problem:
        yield Problem(field, f"{path} {problem}", fix)


def _config(field: str, path: Path, schema: type[BaseModel], what: str, fix: str) -> tuple[Any, list[Problem]]:
    try:
        return read_json_config(path, schema, what, fix), []
    except ModelLoadError as exc:
        return None, [Problem(field, f"{path}: {exc.message}", exc.fix)]


def _au_adapter(field: str, ref: str, au_names: tuple[str, ...]) -> Iterator[Problem]:
    config_name, weights_name = AU_ADAPTER_FILES
    what = "the output folder of `build-dataset train-au-adapter`"
    found = list(_folder_with(field, ref, (config_name, weights_name), what))
    if found:
        yield from found
        return
    folder = Path(ref).expanduser()
    fix = "re-save the adapter with `build-dataset train-au-adapter` (this version of the tool)"
    config, bad = _config(field, folder / config_name, AUAdapterConfig, "AU adapter config", fix)
    yield from bad
    yield from _weights(field, folder / weights_name, fix)
    if config is not None and tuple(config.au_names) != tuple(au_names):
        yield Problem(field, f"the adapter reads AUs {', '.join(config.au_names)}, the manifest's AU set is "
                      f"{', '.join(au_names)}", "set aus.au_set to the adapter's AU set, or train an adapter for it")


def _feranno(field: str, ref: str) -> Iterator[Problem]:
    config_name, weights_name = FERANNO_FILES
    what = "the output_dir of `build-dataset train-feranno`"
    found = list(_folder_with(field, ref, (config_name, weights_name), what))
    if found:
        yield from found
        return
    folder = Path(ref).expanduser()
    fix = "re-train the model with `build-dataset train-feranno` (this version of the tool)"
    config, bad = _config(field, folder / config_name, FERAnnoConfigFile, "FERAnno config", fix)
    yield from bad
    yield from _weights(field, folder / weights_name, fix)
    if config is not None:
        base = f"{field} ({folder / config_name} meta.base_model)"
        yield from _pipeline(base, config.meta.base_model, config.meta.revision)


def _classifier(field: str, ref: str, trust: bool) -> Iterator[Problem]:
    """A registry classifier, a Keras .hdf5/.h5 file, or a classifier config (the choices of
    ``builder.models.store.load_fer_classifier``)."""
    from builder.models.registry import REGISTRY, names

    classifiers = names("fer-classifier")
    choices = (f"use one of: {', '.join(classifiers)} (`build-dataset models list`), the path of a Keras .hdf5 "
               "file, or a classifier config (.yaml) for a torch or ONNX model")
    entry = REGISTRY.get(ref)
    if entry is not None:
        if entry.kind != "fer-classifier":
            yield Problem(field, f"'{ref}' is a {entry.kind} in the model registry, not an expression classifier",
                          f"use one of: {', '.join(classifiers)}")
        return
    path = Path(ref).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(ref, classifiers, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        yield Problem(field, f"'{ref}' is neither a registered classifier nor an existing file", hint + choices)
        return
    if not path.is_file():
        yield Problem(field, f"'{ref}' is not a file", choices)
        return
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        yield from _classifier_config(field, path, trust)
    elif suffix in (".h5", ".hdf5"):
        if not _is_hdf5(path):
            yield Problem(field, f"'{ref}' is not an HDF5 file", "give a Keras mini-Xception .hdf5 file (or a "
                          "classifier config for another model)")
    elif suffix == ".onnx":
        yield Problem(field, f"'{ref}' is an ONNX model without a classifier config (labels, input)",
                      f"write a .yaml beside it with 'onnx: {{file: {path.name}}}', 'labels' and 'input' (see "
                      "builder/fer/classifier_config.py) and give that instead")
    else:
        yield Problem(field, f"'{ref}' is not a supported classifier file (.hdf5/.h5 or a .yaml config)", choices)


def _is_hdf5(path: Path) -> bool:
    """The HDF5 signature at offset 0, 512, 1024, 2048, ... (a user block shifts it by a power of two)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _classifier_config(field: str, path: Path, trust: bool) -> Iterator[Problem]:
    """A classifier config: validates, names an architecture it may name (imported only once allowed: torch,
    this tool, or anything with ``trust``; it must be an ``nn.Module`` subclass and is never called), its weights
    or ONNX file exists inside its folder, its labels are known classes."""
    from builder.manifest.loader import load_manifest
    from builder.models.fer.classifier_config import (
        TRUSTED_PACKAGES,
        ClassifierConfig,
        architecture_class,
        check_architecture,
    )

    try:
        config = load_manifest(path, model=ClassifierConfig)
        check_architecture(config, path, trust)
        if config.architecture is not None and (trust or config.architecture.split(":")[0].split(".")[0]
                                                 in TRUSTED_PACKAGES):
            architecture_class(config, path, trust)  # imported (allowed by now), checked, never called
        model_file = config.model_file(path)
    except UserError as exc:
        yield Problem(field, f"{path}: {' '.join(exc.message.split())}", exc.fix)
        return
    key = "onnx.file" if config.onnx is not None else "weights"
    if not model_file.is_file():
        yield Problem(field, f"{path}: field '{key}' names '{model_file.name}', which does not exist",
                      f"put the file beside the config (paths in '{key}' are relative to it)")
    elif config.onnx is None:
        if model_file.suffix != ".safetensors":
            yield Problem(field, f"{path}: field 'weights' names '{model_file.name}', not a .safetensors file",
                          "save the state dict with safetensors.torch.save_file (pickled checkpoints are refused)")
        else:
            yield from _weights(field, model_file, "save the state dict again with safetensors.torch.save_file")
    unknown = [n for n in config.labels if n not in CANONICAL]
    if unknown:
        yield Problem(field, f"{path}: field 'labels' has {unknown}, not classes of any label map",
                      f"use names from: {', '.join(sorted(set(CANONICAL)))}")


def _decoder(field: str, ref: str) -> Iterator[Problem]:
    what = "a diffusers AutoencoderTiny folder (with config.json)"
    if _is_local(ref):
        yield from _folder_with(field, ref, ("config.json",), what)
    else:
        yield from _hub(field, ref, None, "config.json", what, missing="could not be found in")


def _layout(field: str, ref: str) -> Iterator[Problem]:
    folder = Path(ref).expanduser()
    fix = "point it at a folder of reference face images (png, jpg, webp)"
    if not folder.is_dir():
        yield _missing(field, ref, folder, fix)
    elif not any(p.suffix.lower() in LAYOUT_SUFFIXES for p in folder.iterdir()):
        yield Problem(field, f"'{ref}' holds no png, jpg or webp image", fix)


def _index(field: str, ref: str, searchable: bool) -> Iterator[Problem]:
    """An ``index-reference`` output folder; ``searchable``: its FAISS index must be finished."""
    from curation.identity.folder import FAISS, INFO, METADATA, VECTORS

    fix = "build one with `build-dataset index-reference CONFIG` and give its output_dir"
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        yield _missing(field, ref, folder, fix)
        return
    if not (folder / INFO).is_file():
        yield Problem(field, f"'{ref}' is not a reference index (no {INFO})", fix)
        return
    again = "run `build-dataset index-reference` on its config again"
    info, bad = _config(field, folder / INFO, ReferenceIndexInfo, "reference index", again)
    yield from bad
    if info is None:
        return
    if info.count and not (folder / METADATA).is_file():
        yield Problem(field, f"'{ref}' has no {METADATA} for its {info.count} faces", again)
    vectors = folder / VECTORS
    if info.count and (not vectors.is_file() or vectors.stat().st_size < info.count * info.dim * 4):
        yield Problem(field, f"'{ref}': {VECTORS} is missing or shorter than {info.count} x {info.dim} vectors",
                      again)
    if searchable and (info.index is None or info.index.ntotal != info.count or not (folder / FAISS).is_file()):
        yield Problem(field, f"'{ref}': the reference index was not finished (its {FAISS} is missing or older "
                      "than its vectors)", again)
    if info.backend == "insightface" and not Path(info.model.path).is_file():
        yield from _insightface(f"{field} ({folder / INFO} model)", info.model.model or info.model.path)


def _pairs(field: str, ref: str) -> Iterator[Problem]:
    from curation.identity.calibrate import read_pairs

    fix = "give a CSV/JSONL of image_a, image_b, same, or a folder with one sub-folder per person"
    try:
        read_pairs(ref)
    except UserError as exc:
        yield Problem(field, f"'{ref}': {exc.message}", exc.fix)
    except (ValueError, TypeError, AttributeError) as exc:  # JSON syntax, text encoding, a row that is no mapping
        yield Problem(field, f"'{ref}' cannot be read as verification pairs ({first_line(exc)})", fix)


def _insightface(field: str, ref: str) -> Iterator[Problem]:
    """An ArcFace .onnx file, or a folder / insightface pack name holding .onnx files."""
    from curation.identity.embedders import insightface_root

    fix = ("give the path of an ArcFace .onnx file (buffalo_l: w600k_r50.onnx), or a model pack name under "
           f"{insightface_root()}")
    given = Path(ref).expanduser()
    if given.suffix.lower() == ".onnx":
        yield from _file(field, ref, fix)
        return
    folder = given if given.is_dir() else insightface_root() / ref
    if not folder.is_dir():
        yield Problem(field, f"'{ref}' is neither an .onnx file, a folder nor a pack in {insightface_root()}", fix)
    elif not any(folder.glob("*.onnx")):
        yield Problem(field, f"'{ref}': {folder} holds no .onnx file", fix)
