"""The AU adapter's config file (``au_adapter_config.json``), checked field by field; no torch at import."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from builder.models.files import ConfigFile, Positive

CONFIG_NAME = "au_adapter_config.json"
WEIGHTS_NAME = "au_adapter.safetensors"


class AUAdapterConfig(ConfigFile):
    """Shape of an AU adapter, saved as ``au_adapter_config.json``: the AU order it reads, the text encoder's
    width, each cross-attention layer's inner size, the AU token count and MLP width, the prompt tokens."""

    au_names: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    cross_attention_dim: Positive
    layers: dict[str, Positive] = Field(min_length=1)  # attention module name -> its inner (hidden) size
    num_tokens: Positive = 4
    hidden_dim: Positive = 256
    text_tokens: Positive = 77
    format_version: Literal[1] = 1
    extra: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_aus(self) -> AUAdapterConfig:
        repeated = sorted({n for n in self.au_names if self.au_names.count(n) > 1})
        if repeated:
            raise ValueError(f"au_names lists {', '.join(repeated)} more than once")
        return self
