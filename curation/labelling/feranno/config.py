"""The ``train-feranno`` config (pydantic, unknown keys rejected)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.label_maps import DEFAULT_LABEL_MAP

LabelMapName = Literal["affectnet7", "affectnet8", "rafdb", "fer2013"]


class DataSource(Strict):
    """Labelled images: a saved ``datasets`` dataset, or an image folder (class subfolders or a metadata.jsonl)."""

    dataset: str | None = Field(default=None, description="Folder of a dataset saved with save_to_disk "
                                "(a Dataset or a DatasetDict; see split).")
    split: str = Field(default="train", description="Split to use when dataset is a DatasetDict.")
    image_column: str = Field(default="image", description="Column with the images.")
    label_column: str = Field(default="label", description="Column with the labels: class names (any spelling of "
                              "the built-in label maps, e.g. 'angry' or 'anger'), integer indices in label_map "
                              "order, or a ClassLabel (mapped by its names).")
    image_folder: str | None = Field(default=None, description="Folder of images instead of dataset: either one "
                                     "subfolder per class ('<folder>/<class name>/*.png') or a metadata file.")
    metadata: str = Field(default="metadata.jsonl", description="JSONL inside image_folder, one line per image: "
                          '{"file_name": ..., "label": class name or index}. When it does not exist, the class '
                          "subfolders are used.")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.dataset is None) == (self.image_folder is None):
            raise fail("data_source", "needs exactly one of 'dataset' and 'image_folder'",
                        "give 'dataset: PATH' (save_to_disk folder) or 'image_folder: PATH'")
        return self


class FERAnnoData(DataSource):
    """Training examples, and where the validation examples come from."""

    validation: DataSource | None = Field(default=None, description="A separate validation source (same keys as "
                                          "data). Omit to hold out validation_fraction of the training source.")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of each class held out for "
                                       "validation (seeded by train.seed) when no validation source is given.")

    @model_validator(mode="after")
    def _one_validation(self) -> FERAnnoData:
        if self.validation is not None and "validation_fraction" in self.model_fields_set:
            raise fail("validation_source", "has both 'validation' and 'validation_fraction'",
                        "keep one: a separate validation source, or a held-out fraction of the training data")
        return self


class Inversion(Strict):
    """How far images are DDIM-inverted before the feature pass."""

    steps: int = Field(default=50, gt=0, le=1000, description="Steps of the DDIM schedule whose part at or below "
                       "timestep is run.")
    timestep: int = Field(default=200, ge=1, le=999, description="Noise level (of 1000 training timesteps) the "
                          "images are inverted to; the last schedule step at or below it is used.")


class ModelSettings(Strict):
    """Size of the FERAnno network."""

    hidden_dim: int = Field(default=128, gt=0, le=4096, description="Width of the conv and attention states.")
    heads: int = Field(default=4, gt=0, le=64, description="Attention heads (must divide hidden_dim).")
    mlp_ratio: int = Field(default=2, gt=0, le=8, description="MLP width as a multiple of hidden_dim.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSettings:
        if self.hidden_dim % self.heads:
            raise fail("heads", "heads ({heads}) does not divide hidden_dim ({dim})",
                        "pick heads that divide hidden_dim, e.g. 4 for 128", at="heads",
                        heads=self.heads, dim=self.hidden_dim)
        return self


class FERAnnoTrainSettings(Strict):
    """Optimisation settings."""

    epochs: int = Field(default=30, gt=0, description="Passes over the training examples.")
    batch_size: int = Field(default=32, gt=0, description="Examples per optimizer step.")
    learning_rate: float = Field(default=5e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    seed: int = Field(default=0, ge=0, description="Seeds the initial weights, the batch order of each epoch and "
                      "the validation split.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="'auto' (first GPU if any, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    checkpoint_every: int = Field(default=5, gt=0, description="Save a resumable checkpoint every N epochs.")
    extract_batch_size: int = Field(default=8, gt=0, le=1024, description="Images per batch when extracting "
                                    "diffusion features (once per image; they are cached).")


class FERAnnoTrainConfig(Strict):
    """Train a FERAnno expression labeller on a frozen Stable Diffusion model's features."""

    base_model: str = Field(min_length=1, description="Diffusion backbone: Hub id, local diffusers folder or "
                            "'builtin:tiny-sd'. Its weights' sha256 is recorded; the labeller refuses others.")
    revision: str | None = Field(default=None, description="Hub revision of base_model.")
    label_map: LabelMapName = Field(default=DEFAULT_LABEL_MAP, description="Class order of the labeller's outputs.")
    resolution: int = Field(default=512, ge=64, le=2048, multiple_of=8, description="Images are resized (shorter "
                            "side) and centre-cropped to this size.")
    prompt: str | None = Field(default=None, description="Prompt for inversion and the feature pass. Default: "
                               "'a close-up photo of a face with a <every class's adjective> expression'.")
    inversion: Inversion = Field(default_factory=Inversion, description="DDIM inversion steps and timestep.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Network size.")
    output_dir: str = Field(min_length=1, description="Where the model, metrics, feature cache and checkpoints go.")
    data: FERAnnoData = Field(description="Training (and validation) examples.")
    train: FERAnnoTrainSettings = Field(default_factory=FERAnnoTrainSettings, description="Epochs, batch size, "
                                        "learning rate, seed, device and checkpoints.")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
