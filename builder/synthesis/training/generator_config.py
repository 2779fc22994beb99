"""The ``train-generator`` config: fine-tune Stable Diffusion on expression image-text pairs, LoRA or full.

Follows diffusers' text-to-image training scripts (``train_text_to_image.py``, ``train_text_to_image_lora.py``):
the same options under the same names where they exist (rank, snr_gamma, noise_offset, lr_scheduler, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class PairData(Strict):
    """Image-text pairs: a saved ``datasets`` dataset (a training-pairs release's ``hf`` folder, or any dataset with
    an image and a caption column) or an image folder with a metadata.jsonl (the Hugging Face imagefolder layout)."""

    dataset: str | None = Field(default=None, description="Folder of a dataset saved with save_to_disk (a Dataset or "
                                "a DatasetDict; see split).")
    split: str = Field(default="train", description="Split to use when dataset is a DatasetDict.")
    image_column: str = Field(default="image", description="Column with the images.")
    caption_column: str = Field(default="text", description="Column with the captions ('text' in a training-pairs "
                                "release).")
    image_folder: str | None = Field(default=None, description="Folder of images, instead of dataset.")
    metadata: str = Field(default="metadata.jsonl", description="JSONL inside image_folder, one line per image: "
                          '{"file_name": ..., "text": ...} (the caption under caption_column).')
    resize: Literal["shorter-side", "none"] = Field(
        default="shorter-side", description="'shorter-side': scale each image so its shorter side is the "
        "resolution, then crop (images of any size); 'none': every image must already be resolution x resolution "
        "(checked before training; a mismatch is an error naming the image).")

    @model_validator(mode="after")
    def _one_source(self) -> PairData:
        if (self.dataset is None) == (self.image_folder is None):
            raise fail("data_source", "needs exactly one of 'dataset' and 'image_folder'",
                       "give 'dataset: PATH' (save_to_disk folder) or 'image_folder: PATH' with a metadata.jsonl")
        return self


class LoraSettings(Strict):
    """LoRA through peft, as diffusers' LoRA script sets it up."""

    rank: int = Field(default=4, gt=0, le=512, description="LoRA rank of each adapted layer.")
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha (the update is scaled by alpha / rank); "
                                "default: the rank (scale 1), as diffusers' script does.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA branch while training.")
    target_modules: list[str] = Field(default=["to_k", "to_q", "to_v", "to_out.0"], min_length=1,
                                      description="UNet module names to adapt (attention projections by default).")
    text_encoder: bool = Field(default=False, description="Also train a LoRA on the text encoder.")
    text_encoder_target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "out_proj"], min_length=1,
                                                   description="Text-encoder module names to adapt (with text_encoder).")


class EmaSettings(Strict):
    """Exponential moving average of the UNet weights (full fine-tuning); the saved pipeline holds the EMA."""

    enabled: bool = Field(default=True, description="Keep an EMA of the UNet and save it as the result.")
    decay: float = Field(default=0.9999, gt=0, lt=1, description="EMA decay (diffusers' EMAModel, with warm-up).")


class GeneratorTrainSettings(Strict):
    """Optimisation settings."""

    steps: int = Field(default=1000, gt=0, description="Optimizer steps.")
    batch_size: int = Field(default=4, gt=0, description="Examples per micro-batch.")
    gradient_accumulation: int = Field(default=1, gt=0, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="AdamW learning rate (1e-4 for LoRA, about "
                                 "1e-5 for full fine-tuning).")
    lr_scheduler: Literal[LR_SCHEDULERS] = Field(default="constant", description="Learning-rate schedule "
                                                 "(diffusers.optimization.get_scheduler).")
    lr_warmup_steps: int = Field(default=0, ge=0, description="Warm-up steps of the schedule.")
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="accelerate mixed precision "
                                                            "(fp16/bf16 need a GPU); trained weights stay float32.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute UNet activations in the backward "
                                         "pass: less memory, about 20 % slower.")
    snr_gamma: float | None = Field(default=None, gt=0, description="Min-SNR-gamma loss weighting (5.0 is the "
                                    "paper's value); omit for the plain MSE.")
    noise_offset: float = Field(default=0.0, ge=0, le=1, description="Offset noise (0.05-0.1 helps very dark and "
                                "bright images).")
    caption_dropout: float = Field(default=0.05, ge=0, le=1, description="Probability of an empty caption "
                                   "(keeps classifier-free guidance working).")
    seed: int = Field(default=0, ge=0, description="Seeds LoRA init, batches, crops, flips, noise and timesteps "
                      "per step: a resumed run equals an uninterrupted one.")
    checkpoint_every: int = Field(default=500, gt=0, description="Save a resumable checkpoint every N steps.")
    checkpoints_kept: int = Field(default=2, ge=1, le=100, description="Newest checkpoints kept.")
    log_every: int = Field(default=10, gt=0, description="Write the training loss to loss.jsonl every N steps.")
    eval_examples: int = Field(default=8, gt=0, description="Examples in the fixed evaluation batch (loss with "
                               "fixed noise and timesteps at the start, at checkpoints and at the end).")


class Validation(Strict):
    """Images from fixed prompts and seeds during training, and how well a FER expert recognises them."""

    every: int = Field(default=500, ge=0, description="Validate every N steps (and at the end); 0: only at the end.")
    expressions: list[str] | None = Field(default=None, description="Expressions to prompt for; default: every "
                                          "class of label_map.")
    label_map: str = Field(default="affectnet7", description="Label map of the expressions and of the accuracy "
                           "table.")
    prompt: str = Field(default="a close-up photo of a person with {article} {expression} facial expression",
                        description="Prompt template: {expression} is the class's adjective (happy, sad, "
                        "surprised, ...), {article} 'a' or 'an'.")
    seeds: list[int] = Field(default=[0, 1, 2, 3], min_length=1, description="One image per expression and seed.")
    num_inference_steps: int = Field(default=25, gt=0, le=1000, description="Denoising steps.")
    guidance_scale: float = Field(default=7.5, ge=0, description="Classifier-free guidance scale.")
    expert: str | None = Field(default=None, description="A FER model (registry name or classifier config) that "
                               "classifies the validation images: accuracy per class in the summary and the model "
                               "card. Use one that will neither guide nor label your builds, or the builds' label "
                               "agreement stops being an independent check.")

    @model_validator(mode="after")
    def _known(self) -> Validation:
        from builder.manifest.label_maps import LABEL_MAPS, canonical_name

        if self.label_map not in LABEL_MAPS:
            raise fail("label_map", "'{name}' is not a label map", "use one of: {maps}", at="label_map",
                       name=self.label_map, maps=", ".join(sorted(LABEL_MAPS)))
        for name in self.expressions or ():
            if canonical_name(name) is None:
                raise fail("expression", "'{name}' is not an emotion any label map knows",
                           "use class names such as happy, sad, surprise, fear, disgust, anger, neutral",
                           at="expressions", name=name)
        try:
            self.prompt.format(expression="happy", article="a")
        except (KeyError, IndexError, ValueError) as exc:
            raise fail("prompt", "the template does not format ({error})", "use only {{expression}} and "
                       "{{article}} in braces; write '{{{{' and '}}}}' for literal braces", at="prompt",
                       error=f"{type(exc).__name__}: {exc}") from None
        return self


class GeneratorTrainConfig(Strict):
    """Fine-tune a Stable Diffusion generator on expression image-text pairs."""

    base_model: str = Field(min_length=1, description="Generator to fine-tune: Hub id, local diffusers folder or "
                            "'builtin:tiny-sd'.")
    revision: str | None = Field(default=None, description="Hub revision of base_model.")
    method: Literal["lora", "full"] = Field(default="lora", description="'lora': train LoRA weights through peft "
                                            "(small, loadable with pipe.load_lora_weights); 'full': train the whole "
                                            "UNet (with EMA) and save a full pipeline folder.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings (method: lora).")
    ema: EmaSettings = Field(default_factory=EmaSettings, description="EMA settings (method: full).")
    resolution: int = Field(default=512, ge=64, le=2048, multiple_of=8, description="Training image side.")
    crop: Literal["center", "random"] = Field(default="center", description="Centre or (seeded) random crop to "
                                              "the resolution.")
    random_flip: bool = Field(default=False, description="Mirror half of the images (seeded). Expressions are "
                              "mostly symmetric, but captions naming left and right become wrong for them.")
    output_dir: str = Field(min_length=1, description="Where the weights, checkpoints, loss.jsonl, validation "
                            "grids and the model card go.")
    data: PairData = Field(description="Training pairs.")
    train: GeneratorTrainSettings = Field(default_factory=GeneratorTrainSettings,
                                          description="Steps, batches, optimiser, schedule, loss options, seed.")
    validation: Validation = Field(default_factory=Validation, description="Validation images and accuracy.")

    @model_validator(mode="after")
    def _method_settings(self) -> GeneratorTrainConfig:
        given = self.model_fields_set
        if self.method == "full" and "lora" in given:
            raise fail("method_settings", "'lora' settings are given but method is 'full'",
                       "remove 'lora', or set method: lora", at="lora")
        if self.method == "lora" and "ema" in given:
            raise fail("method_settings", "'ema' settings are given but method is 'lora'",
                       "remove 'ema' (EMA applies to full fine-tuning), or set method: full", at="ema")
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)
