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

The loaders share the file readers here: ``load_safetensors`` (refuses a pickled or truncated file with one
clear message instead of the safetensors library's error) and ``read_json_config`` (a model folder's JSON
config validated by a pydantic schema that names the field). The schemas of the AU adapter's and FERAnno's
configs live here, away from their torch modules, so the checks import no torch; tests keep their fields the
dataclasses' fields. Only a classifier config (``.yaml``) imports torch, through ``builder.fer``.
"""
from __future__ import annotations

import difflib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ModelLoadError, UserError
from .labels import CANONICAL
from .manifest import BUILTIN_TINY_MODEL

SAFETENSORS_MAX_HEADER = 100_000_000
"""The safetensors library refuses larger headers."""
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
LAYOUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Images ``generator.layout.images`` reads (``builder.layout``)."""
AU_ADAPTER_FILES = ("au_adapter_config.json", "au_adapter.safetensors")
"""``builder.au_adapter.CONFIG_NAME`` and ``WEIGHTS_NAME`` (that module imports torch)."""
FERANNO_FILES = ("feranno_config.json", "feranno.safetensors")
"""``builder.feranno.model.CONFIG_NAME`` and ``WEIGHTS_NAME``."""
SCRFD_FIX = ("download the buffalo_l pack from the insightface releases, unpack it, and set "
             "curation.faces.detector_model to the path of its detector, det_10g.onnx (an SCRFD .onnx file with "
             "landmarks)")
"""As ``curation.scrfd.FIX`` says it (that module imports torch)."""
PICKLE_PROBLEM = ("is a pickled torch checkpoint (torch.save), not a safetensors file: pickles are refused because "
                  "loading one can run code")


# -- model files ---------------------------------------------------------------------------------------------------
def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (pickled, truncated, not one at all), or None.

    Reads the 8-byte header length and the JSON header only: the tensors' data must end exactly at the end of
    the file, as the safetensors library requires.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
                return PICKLE_PROBLEM
            if len(head) < 8:
                return f"is empty or truncated ({size} bytes): not a safetensors file"
            length = struct.unpack("<Q", head)[0]
            if length > min(size - 8, SAFETENSORS_MAX_HEADER):
                return (f"is truncated or not a safetensors file (its header would be {length} bytes, the file has "
                        f"{size})")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            _, stop = entry["data_offsets"]
            end = max(end, int(stop))
        except (TypeError, KeyError, ValueError):
            return f"is not a valid safetensors file (tensor {name!r} has no data_offsets)"
    data = size - 8 - length
    if end > data:
        return f"is truncated: its header describes {end} bytes of tensor data, the file holds {data}"
    if end < data:
        return f"is not a valid safetensors file ({data - end} bytes follow its tensor data)"
    return None


def load_safetensors(path: str | Path, fix: str) -> dict:
    """The tensors of a safetensors file; ``ModelLoadError`` naming the file for a pickled, truncated or
    unreadable one (never the safetensors library's own error)."""
    path = Path(path)
    problem = safetensors_problem(path)
    if problem:
        raise ModelLoadError(problem, file=str(path), fix=fix)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the weights ({first_line(exc)})", file=str(path), fix=fix) from None


def read_json_config(path: str | Path, schema: type[BaseModel], what: str, fix: str) -> BaseModel:
    """``path`` (a JSON object) validated as ``schema``; ``ModelLoadError`` naming the file and every bad field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"not a valid {what}: not UTF-8 text (byte {exc.start})", file=str(path),
                             fix=fix) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"not a valid {what}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                             file=str(path), fix=fix) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the {what} ({exc.strerror or type(exc).__name__})", file=str(path),
                             fix=fix) from None
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(data), "null")
        raise ModelLoadError(f"not a valid {what}: it must be a JSON object {{...}}, found a {kind}",
                             file=str(path), fix=fix)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_field_error(err, schema) for err in exc.errors())
        raise ModelLoadError(f"not a valid {what}: {problems}", file=str(path), fix=fix) from None


def _field_error(err: dict, schema: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "missing":
        return f"field '{loc}': required field is missing"
    if err["type"] == "extra_forbidden":
        allowed = sorted(schema.model_fields) if len(err["loc"]) == 1 else []
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f", did you mean '{close[0]}'?" if close else ""
        return f"field '{loc}': unknown key{hint}" + (f" (keys allowed: {', '.join(allowed)})" if allowed else "")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    message = err["msg"].removeprefix("Value error, ")
    return f"field '{loc}': {message}{shown}" if err["loc"] else message


class _ConfigFile(BaseModel):
    """A model folder's JSON config: JSON types exactly (no "4" for 4), no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Positive = Annotated[int, Field(gt=0)]


class AUAdapterConfigFile(_ConfigFile):
    """``au_adapter_config.json`` (``builder.au_adapter.AUAdapterConfig``)."""

    au_names: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    cross_attention_dim: Positive
    layers: dict[str, Positive] = Field(min_length=1)
    num_tokens: Positive = 4
    hidden_dim: Positive = 256
    text_tokens: Positive = 77
    format_version: Literal[1] = 1
    extra: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_aus(self) -> AUAdapterConfigFile:
        repeated = sorted({n for n in self.au_names if self.au_names.count(n) > 1})
        if repeated:
            raise ValueError(f"au_names lists {', '.join(repeated)} more than once")
        return self


class _Meta(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class FERAnnoInversion(_Meta):
    steps: Positive
    timestep: Annotated[int, Field(ge=0)]
    t: Annotated[int, Field(ge=0)]


class FERAnnoMeta(_Meta):
    """What ``FERAnnoLabeller`` reads from ``meta`` (train-feranno writes more)."""

    label_names: list[str] = Field(min_length=2)
    base_model: str = Field(min_length=1)
    revision: str | None = None
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    resolution: Positive
    prompt: str
    inversion: FERAnnoInversion

    @model_validator(mode="after")
    def _known_labels(self) -> FERAnnoMeta:
        unknown = [n for n in self.label_names if n not in CANONICAL]
        if unknown:
            raise ValueError(f"label_names {unknown} are not classes of any label map")
        return self


class FERAnnoConfigFile(_ConfigFile):
    """``feranno_config.json`` (``builder.feranno.model.FERAnnoConfig``)."""

    feature_channels: list[Positive] = Field(min_length=1)
    tokens: Positive
    text_dim: Positive
    num_classes: Annotated[int, Field(ge=2)]
    hidden_dim: Positive = 128
    heads: Positive = 4
    mlp_ratio: Positive = 2
    meta: FERAnnoMeta
    format_version: Literal[1] = 1

    @model_validator(mode="after")
    def _consistent(self) -> FERAnnoConfigFile:
        if self.hidden_dim % self.heads:
            raise ValueError(f"heads ({self.heads}) does not divide hidden_dim ({self.hidden_dim})")
        if len(self.meta.label_names) != self.num_classes:
            raise ValueError(f"meta.label_names has {len(self.meta.label_names)} names for {self.num_classes} classes")
        return self


class _IndexModel(_Meta):
    sha256: str
    path: str
    model: str | None = None


class _IndexFaces(_Meta):
    min_score: float
    min_size: float


class _IndexBuilt(_Meta):
    params: dict
    ntotal: Annotated[int, Field(ge=0)]
    sha256: str


class ReferenceIndexInfo(_Meta):
    """What the stages read from a reference index's ``index.json`` (``curation.identity.folder``)."""

    format: Literal[1]
    backend: Literal["dlib", "insightface"]
    model: _IndexModel
    dim: Positive
    count: Annotated[int, Field(ge=0)]
    skipped: Annotated[int, Field(ge=0)]
    faces: _IndexFaces
    index: _IndexBuilt | None = None
    sources: dict = Field(default_factory=dict)


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


def _missing(field: str, ref: str, path: Path, fix: str) -> Problem:
    what = "does not exist" if not path.exists() else ("is not a folder" if path.is_file() else "is not a file")
    return Problem(field, f"'{ref}' {what}", fix)


def _is_local(ref: str) -> bool:
    """A local path rather than a Hub id (the rule of ``builder.models.resolve_checkpoint``)."""
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
    config, bad = _config(field, folder / config_name, AUAdapterConfigFile, "AU adapter config", fix)
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
    ``builder.store.load_fer_classifier``)."""
    from .registry import REGISTRY, names

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
    from .fer.classifier_config import (
        TRUSTED_PACKAGES,
        ClassifierConfig,
        architecture_class,
        check_architecture,
    )
    from .manifest_loader import load_manifest

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
