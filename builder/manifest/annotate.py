"""The 'annotate' section: turn an images source into generator training pairs (SynFER's FEText): each face
aligned and cropped at the generator's resolution, small faces super-resolved, AU intensities measured, and a
caption that describes the expression and the facial movements that make it."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from builder.core.config import Strict, fail

DEFAULT_INSTRUCTION = (
    "Describe this person's facial expression for a text-to-image training caption, in one or two sentences: "
    "the emotion and how strong it is, what the eyebrows, eyes and mouth are doing, then the apparent age range, "
    "the head pose and the lighting. Do not name or guess who the person is."
)


class Crop(Strict):
    """How each face is aligned and cropped."""

    size: int = Field(default=512, ge=64, le=2048, multiple_of=8, description="Side of the square crop in "
                      "pixels: the generator's training resolution.")
    align: Literal["five-point"] = Field(default="five-point", description="Alignment: a similarity transform of "
                                         "the face's five landmarks onto a fixed template.")
    margin: float = Field(default=0.3, ge=0, le=1.5, description="Context around the aligned face (0.3 shows 30 % "
                          "more on each side, an FFHQ-like framing with hair and chin).")


class Upscale(Strict):
    """Super-resolution of faces smaller than the crop."""

    model: str = Field(default="none", min_length=1, description="A transformers image super-resolution model "
                       "(e.g. a Swin2SR checkpoint), as a Hub id or a local save_pretrained folder; 'none' resizes "
                       "with a bicubic filter instead. Recorded per image in 'upscaled_by'.")
    when_smaller_than: int = Field(default=256, ge=8, le=4096, description="A face whose aligned region is smaller "
                                   "than this many source pixels goes through the upscaler.")


class AUDetection(Strict):
    """AU intensities measured on each crop."""

    model: str = Field(default="none", min_length=1, description="An AU detector config (YAML: a torch class or an "
                       "ONNX file, its input and the AU name of each output), or 'none' (the 'au' column is then "
                       "empty).")
    au_set: Literal["disfa12", "disfa8", "bp4d12", "opengraphau41"] = Field(
        default="disfa12", description="The named AU set the detector's outputs are mapped onto (AUs the detector "
        "lacks are left out of the mapping and reported).")


class Captions(Strict):
    """The caption of each pair."""

    model: str = Field(default="template", min_length=1, description="A transformers image-text-to-text model "
                       "(a vision-language model), as a Hub id or a local save_pretrained folder; 'template' "
                       "writes a caption from the label, the active AUs and the face attributes the tool measures.")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, min_length=1, description="What the vision-language "
                             "model is asked to write.")
    max_new_tokens: int = Field(default=77, gt=0, le=512, description="Longest caption the model may write, in its "
                                "tokens.")
    batch_size: int = Field(default=4, gt=0, le=256, description="Images per model call. Not part of the build's "
                            "identity.")
    sampling: Literal["greedy", "seeded"] = Field(default="greedy", description="Greedy decoding, or sampling with "
                                                  "a seed per image (both give the same caption on a rerun).")


class CaptionChecks(Strict):
    """Checks of every caption; a failing one drops the pair with its reason."""

    min_words: int = Field(default=5, ge=1, le=200, description="Shorter captions are dropped as 'caption_too_short'.")
    max_tokens: int = Field(default=77, ge=8, le=1024, description="Longer captions (in the text encoder's tokens) "
                            "are dropped as 'caption_too_long': the generator would truncate them.")
    text_encoder: str = Field(default="builtin:tiny-sd", min_length=1, description="The generator whose tokenizer "
                              "counts caption tokens (the one these pairs will train): a Hub id, a local diffusers "
                              "folder or 'builtin:tiny-sd'.")
    label_agreement: Literal["drop", "flag", "off"] = Field(
        default="drop", description="A caption that names an expression other than the pair's label (or none): "
        "dropped as 'caption_label_mismatch', flagged in the 'caption_agrees' column, or not checked.")


class Annotate(Strict):
    """Make generator training pairs from an images source."""

    crop: Crop = Field(default_factory=Crop, description="Face alignment and crop.")
    upscale: Upscale = Field(default_factory=Upscale, description="Super-resolution of small faces.")
    aus: AUDetection = Field(default_factory=AUDetection, description="AU intensities of each crop.")
    captions: Captions = Field(default_factory=Captions, description="How each pair's caption is written.")
    checks: CaptionChecks = Field(default_factory=CaptionChecks, description="Caption checks.")

    @model_validator(mode="after")
    def _tokens_fit(self) -> Annotate:
        if self.captions.model != "template" and self.captions.max_new_tokens > 4 * self.checks.max_tokens:
            raise fail("caption_length", "captions.max_new_tokens ({n}) is far above checks.max_tokens ({m})",
                       "lower captions.max_new_tokens so most captions fit the text encoder",
                       n=self.captions.max_new_tokens, m=self.checks.max_tokens)
        return self
