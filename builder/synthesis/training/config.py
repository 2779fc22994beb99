"""The ``train-au-adapter`` config: what to train on and how (pydantic, unknown keys rejected)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail
from builder.manifest.generation import LoRASpec


class TrainData(Strict):
    """Image / caption / AU examples: a saved ``datasets`` dataset or an image folder with a JSONL."""

    dataset: str | None = Field(default=None, description="Folder of a dataset saved with save_to_disk "
                                "(a Dataset or a DatasetDict; see split).")
    split: str = Field(default="train", description="Split to use when dataset is a DatasetDict.")
    image_column: str = Field(default="image", description="Column with the images.")
    caption_column: str = Field(default="prompt", description="Column with the captions.")
    au_column: str = Field(default="au", description="Column with AU intensities (0-5): a struct of named floats "
                           "(a fer-synth release's 'au': {AU1: ..., AU12: ...}; AUs it leaves out are 0) or a list "
                           "in the AU set's order.")
    missing_au: Literal["zero", "skip"] = Field(default="zero", description="An AU a row leaves empty (null: its "
                                                "detector does not measure that AU): read as 0 ('zero', counted "
                                                "per AU in the log) or skip the row ('skip').")
    image_folder: str | None = Field(default=None, description="Folder of images, instead of dataset.")
    metadata: str = Field(default="metadata.jsonl", description="JSONL inside image_folder, one line per image: "
                          '{"file_name": ..., "caption": ..., "au": [..] or {"AU12": 3.0, ...}}.')

    @model_validator(mode="after")
    def _one_source(self) -> TrainData:
        if (self.dataset is None) == (self.image_folder is None):
            raise fail("data_source", "needs exactly one of 'dataset' and 'image_folder'",
                        "give 'dataset: PATH' (save_to_disk folder) or 'image_folder: PATH' with a metadata.jsonl")
        return self


class TrainSettings(Strict):
    """Optimisation settings."""

    steps: int = Field(default=1000, gt=0, description="Optimizer steps.")
    batch_size: int = Field(default=4, gt=0, description="Examples per step.")
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="accelerate mixed precision "
                                                            "(fp16/bf16 need a GPU).")
    caption_dropout: float = Field(default=0.05, ge=0, le=1, description="Probability of training with an empty "
                                   "caption (keeps classifier-free guidance working).")
    seed: int = Field(default=0, ge=0, description="Seeds adapter init, batches, noise and timesteps per step.")
    checkpoint_every: int = Field(default=200, gt=0, description="Save a resumable checkpoint every N steps.")
    log_every: int = Field(default=10, gt=0, description="Write the training loss to loss.jsonl every N steps.")
    eval_examples: int = Field(default=8, gt=0, description="Examples in the fixed evaluation batch (eval loss "
                               "at start, at checkpoints and at the end).")


class TrainConfig(Strict):
    """Train an AU adapter on a frozen Stable Diffusion generator."""

    base_model: str = Field(min_length=1, description="Generator to adapt: Hub id, local diffusers folder or "
                            "'builtin:tiny-sd'.")
    revision: str | None = Field(default=None, description="Hub revision of base_model.")
    base_lora: list[LoRASpec] = Field(default_factory=list, description="LoRAs (e.g. from `build-dataset "
                                      "train-generator`) merged into base_model before the adapter trains, each "
                                      "with its scale: builds then use the adapter with the same generator.lora.")
    au_set: Literal["disfa12", "disfa8", "bp4d12", "opengraphau41"] = Field(default="disfa12",
                                                                           description="AU set of the AU vectors.")
    num_tokens: int = Field(default=4, gt=0, le=64, description="AU tokens per sample.")
    hidden_dim: int = Field(default=256, gt=0, description="Hidden width of the AU encoder MLP.")
    resolution: int = Field(default=512, ge=64, multiple_of=8, description="Training images are resized and "
                            "centre-cropped to this size.")
    output_dir: str = Field(min_length=1, description="Where the adapter, checkpoints and loss.jsonl go.")
    data: TrainData = Field(description="Training examples.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Steps, batch size, learning rate, "
                                 "mixed precision, checkpoints and logging.")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
