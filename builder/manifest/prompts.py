"""The 'prompts' section: templates, axes, AU cue wording, enrichment."""
from __future__ import annotations

import string
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from builder.core.config import Strict, fail
from builder.manifest.common import IDENT, RESERVED_COLUMNS
from builder.manifest.templates import PLACEHOLDERS, TEMPLATE_SETS


class Axis(Strict):
    """One prompt axis: a list of values, optionally weighted."""

    values: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Values this axis takes, e.g. ['young', 'middle-aged', 'old']."
    )
    weights: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="Relative sampling weight of each value (same length as values; positive). "
        "Omit for uniform sampling.",
    )

    @model_validator(mode="after")
    def _weights_match(self) -> Axis:
        if self.weights is not None and len(self.weights) != len(self.values):
            raise fail(
                "weights_length",
                "has {n_w} weights for {n_v} values",
                "give exactly one positive weight per value, or remove 'weights' for uniform sampling",
                at="weights",
                n_w=len(self.weights),
                n_v=len(self.values),
            )
        return self


class AUCues(Strict):
    """How '{au_cues}' and '{au_names}' describe a sample's AU vector."""

    min_intensity: float = Field(default=1.0, ge=0, le=5, description="AUs below this intensity are not mentioned.")
    max_cues: int = Field(default=4, gt=0, le=41, description="Mention at most this many AUs, the strongest first.")


class Enrich(Strict):
    """Enrich each prompt with a local causal language model (transformers), seeded per sample."""

    model: str = Field(min_length=1, description="Local transformers causal-LM folder (save_pretrained output).")
    instruction: str = Field(default="Describe this portrait photo in detail: ",
                             description="Text put before the prompt; the model's continuation is appended.")
    max_new_tokens: int = Field(default=32, gt=0, le=256, description="Longest continuation, in model tokens.")
    temperature: float = Field(default=0.8, gt=0, le=5, description="Sampling temperature.")


class Prompts(Strict):
    """Prompt templates and the demographic / free axes that fill them."""

    templates: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Prompt templates in Python format syntax. '{expression}' is the class's expression text, "
        "'{au_cues}' the sample's strongest AUs in words ('lip corners strongly pulled up'), '{au_names}' their "
        "FACS codes; every other '{name}' must be an axis. One template is picked per sample, uniformly. "
        "'a {name}' becomes 'an ...' when the value starts with a vowel. Give templates or template_set.",
    )
    template_set: Literal["syntfer"] | None = Field(
        default=None,
        description="A built-in template set instead of templates: 'syntfer' is the SyntFER grid (3 cue styles: "
        "AU names, descriptive, combined; gender, age, ethnicity, pose and trait axes, which axes below "
        "may override or extend).",
    )
    au_cues: AUCues = Field(default_factory=AUCues, description="Settings of the '{au_cues}' and '{au_names}' text.")
    enrich: Enrich | None = Field(default=None, description="Append a language model's seeded continuation to each "
                                  "prompt (runs as the 'enrich' stage before generation); omit to keep prompts as "
                                  "templated. --dry-run shows the prompts before enrichment.")
    negative_prompt: str = Field(default="", description="Negative prompt used for every sample.")
    expression_text: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Per-class override of the text that fills '{expression}' (class name -> text). "
        "Classes not listed use the built-in adjective (e.g. anger -> 'angry').",
    )
    axes: dict[str, Axis] = Field(
        default_factory=dict,
        description="Prompt axes sampled independently per sample: demographic (age, gender, "
        "ethnicity, pose) and free traits. Each name becomes a dataset column and a template "
        "placeholder.",
    )

    @field_validator("axes")
    @classmethod
    def _axis_names(cls, axes: dict[str, Axis]) -> dict[str, Axis]:
        for name in axes:
            if not IDENT.match(name) or name in RESERVED_COLUMNS:
                raise fail(
                    "axis_name",
                    "axis name '{name}' is not allowed",
                    "use a lower-case identifier (letters, digits, '_') that is not one of: "
                    + ", ".join(sorted(RESERVED_COLUMNS)),
                    at=name,
                    name=name,
                )
        return axes

    @cached_property
    def all_templates(self) -> list[str]:
        return list(self.templates) if self.templates else list(TEMPLATE_SETS[self.template_set]["templates"])

    @cached_property
    def all_axes(self) -> dict[str, Axis]:
        """The template set's axes (overridden by same-named axes here), then the other axes here."""
        built_in = TEMPLATE_SETS[self.template_set]["axes"] if self.template_set else {}
        axes = {name: self.axes.get(name) or Axis(values=values) for name, values in built_in.items()}
        axes.update({name: axis for name, axis in self.axes.items() if name not in axes})
        return axes

    @model_validator(mode="after")
    def _placeholders_known(self) -> Prompts:
        if (self.templates is None) == (self.template_set is None):
            raise fail("template_source", "needs exactly one of 'templates' and 'template_set'",
                        "give your own templates, or template_set: syntfer")
        if self.template_set is not None:
            return self
        known = {*PLACEHOLDERS, *self.axes}
        for i, template in enumerate(self.templates):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as exc:
                raise fail(
                    "template_syntax",
                    "template {i} is not valid format syntax ({err})",
                    "balance the braces; write '{{{{' and '}}}}' for literal braces",
                    at=f"templates.{i}",
                    i=i,
                    err=str(exc),
                ) from None
            for f in fields:
                if f not in known:
                    raise fail(
                        "template_placeholder",
                            "template {i} uses '{{{field}}}', which is neither expression, au_cues, au_names nor an axis",
                        "add an axis named '{field}' under prompts.axes, or remove the placeholder",
                        at=f"templates.{i}",
                        i=i,
                        field=f,
                    )
        return self
