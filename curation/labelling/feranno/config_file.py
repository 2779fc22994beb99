"""FERAnno's config file (``feranno_config.json``) and what the labeller reads of its ``meta``; no torch."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from builder.manifest.label_maps import CANONICAL
from builder.models.files import ConfigFile, ConfigPart, Positive

CONFIG_NAME = "feranno_config.json"
WEIGHTS_NAME = "feranno.safetensors"


class FERAnnoInversion(ConfigPart):
    steps: Positive
    timestep: Annotated[int, Field(ge=0)]
    t: Annotated[int, Field(ge=0)]


class FERAnnoMeta(ConfigPart):
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


class FERAnnoConfigFile(ConfigFile):
    """``feranno_config.json`` (``curation.labelling.feranno.model.FERAnnoConfig``)."""

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
