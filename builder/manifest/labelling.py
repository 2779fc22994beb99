"""The 'labelling' section: expert models, FERAnno, the calibration rule, the face crop."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import ADDED_LATER


class ExpertSpec(Strict):
    """One expert FER model that labels the images."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40,
                      description="Short id for this expert: names its probability column ('probs_<name>').")
    model: str = Field(min_length=1, description="A name from the model registry (`build-dataset models list`), a "
                       "local mini-Xception .hdf5 file, or a YAML config of any torch or ONNX classifier.")
    weight: float = Field(default=1.0, gt=0, le=100, description="Weight of this expert in the pool.")


class FERAnnoSpec(Strict):
    """A trained FERAnno labeller (``build-dataset train-feranno`` output) that votes with the experts."""

    model: str = Field(min_length=1, description="Folder with feranno_config.json and feranno.safetensors; the "
                       "diffusion backbone it names is loaded too (local files only) and must match its hash.")
    weight: float = Field(default=1.0, gt=0, le=100, description="Weight of FERAnno in the pool.")
    dtype: Annotated[Literal["float32", "auto", "bfloat16", "float16"], ADDED_LATER] = Field(
        default="float32", description="dtype of the diffusion backbone (VAE encode, inversion, feature pass). "
        "float32 is what train-feranno trains in; 'auto' (bfloat16 on GPUs that support it, float32 on CPU) or "
        "bfloat16 runs several times faster on GPUs and moves probabilities by rounding. Half precision is "
        "refused on CPU.")
    batch_size: int = Field(default=8, gt=0, le=1024, description="Images per backbone batch. Not part of the "
                            "build's identity.")


FERANNO_NAME = "feranno"  # FERAnno's labeller id: its probability column is 'probs_feranno'


class FaceCrop(Strict):
    """How faces are found and cropped before labellers see them (MTCNN, 5-point alignment)."""

    min_score: float = Field(default=0.9, ge=0, le=1, description="Minimum MTCNN face score.")
    min_size: float = Field(default=32, ge=8, description="Minimum face box side in pixels.")
    size: int = Field(default=112, ge=32, le=512, description="Side of the aligned face crop in pixels.")
    margin: float = Field(default=0.2, ge=0, le=1, description="Extra context around the ArcFace-aligned face "
                          "(0.2 shows 20 % more); 0 is the tight recognition crop.")


class Labelling(Strict):
    """Expert models confirm, correct or reject each sample's label (SynFER's label calibration)."""

    experts: list[ExpertSpec] = Field(default_factory=list, description="Expert FER models; their label orders "
                                      "are mapped to the manifest's by emotion name.")
    feranno: FERAnnoSpec | None = Field(default=None, description="A FERAnno labeller on diffusion features, "
                                        "pooled with the experts (SynFER); sees the same aligned face crop.")
    combine: Literal["product", "weighted_vote"] = Field(
        default="product", description="Pool the labellers by product of experts (weighted geometric mean) or "
        "weighted vote (weighted mean).")
    min_confidence: float = Field(default=0.5, ge=0, le=1,
                                  description="Reject samples whose pooled final-class probability is lower.")
    min_agreement: float = Field(default=0.5, ge=0, le=1, description="Reject samples where a smaller weighted "
                                 "share of labellers has the final class as its top class.")
    relabel: bool = Field(default=False, description="Give a sample the labellers' class when they confidently "
                          "agree on another class than its target; otherwise such samples are rejected.")
    faces: FaceCrop = Field(default_factory=FaceCrop, description="Face detection and crop for the labellers.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="Where the face detector and the labellers run: 'auto' (first GPU if any, else CPU), 'cpu', "
        "'cuda', 'cuda:N' or 'mps'. Not part of the build's identity.",
    )

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, experts: list[ExpertSpec]) -> list[ExpertSpec]:
        names = [e.name for e in experts]
        for name in names:
            if names.count(name) > 1:
                raise fail("duplicate_expert", "expert name '{name}' is used twice",
                            "give every expert its own name", name=name)
            if name == FERANNO_NAME:
                raise fail("reserved_expert", "expert name '{name}' is reserved for the FERAnno labeller",
                            "give this expert another name, or configure FERAnno under labelling.feranno",
                            name=name)
        return experts

    @model_validator(mode="after")
    def _some_labeller(self) -> Labelling:
        if not self.experts and self.feranno is None:
            raise fail("no_labeller", "has no labeller", "list at least one expert under 'experts' (e.g. "
                        "{{name: fer2013, model: mini-xception-fer2013}}) or give a trained 'feranno'")
        return self

    @property
    def labeller_names(self) -> list[str]:
        """Ids of every labeller, in pooling order: the experts, then FERAnno."""
        return [e.name for e in self.experts] + ([FERANNO_NAME] if self.feranno is not None else [])
