"""The 'labels' and 'aus' sections: the label map, per-class counts, AU targets."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from builder.core.config import Strict, fail
from builder.manifest.au_sets import AU_MAX, AU_MIN, AU_SETS, DEFAULT_AU_SET
from builder.manifest.label_maps import DEFAULT_LABEL_MAP, LABEL_MAPS


class Labels(Strict):
    """The label set and how many samples each class gets."""

    label_map: Literal["affectnet7", "affectnet8", "rafdb", "fer2013"] = Field(
        default=DEFAULT_LABEL_MAP,
        description="Named class order of the dataset's 'label' column: affectnet7 (default), "
        "affectnet8 (adds contempt), rafdb or fer2013.",
    )
    counts: Annotated[
        Annotated[Annotated[int, Field(ge=0)], Tag("count")]
        | Annotated[dict[str, Annotated[int, Field(ge=0)]], Tag("per_class")],
        Discriminator(lambda v: "per_class" if isinstance(v, dict) else "count"),
    ] | None = Field(
        default=None,
        description="Samples to generate: one integer for every class, or a mapping class name -> "
        "count (classes not listed get 0). Required when generating; not allowed with an 'images' source "
        "(the labellers decide the classes).",
    )

    @model_validator(mode="after")
    def _counts_known(self) -> Labels:
        names = LABEL_MAPS[self.label_map]
        if isinstance(self.counts, dict):
            for name in self.counts:
                if name not in names:
                    raise fail(
                        "unknown_label",
                        "'{name}' is not a class of label map {label_map}",
                        "use one of: " + ", ".join(names),
                        at=f"counts.{name}",
                        name=name,
                        label_map=self.label_map,
                    )
        if self.counts is not None and sum(self.per_class().values()) == 0:
            raise fail("no_samples", "asks for 0 samples in total", "give at least one class a positive count")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return LABEL_MAPS[self.label_map]

    def per_class(self) -> dict[str, int]:
        """Count for every class of the label map, in label order (all 0 without counts)."""
        if self.counts is None:
            return {n: 0 for n in self.names}
        if isinstance(self.counts, int):
            return {n: self.counts for n in self.names}
        return {n: self.counts.get(n, 0) for n in self.names}


class ActionUnits(Strict):
    """Per-class AU intensity targets (FACS 0-5) with jitter."""

    au_set: Literal["disfa12", "disfa8", "bp4d12", "opengraphau41"] = Field(
        default=DEFAULT_AU_SET,
        description="Which AUs make up the 'au' vector, in this order: disfa12 (default: "
        "1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26), disfa8, bp4d12 or opengraphau41.",
    )
    intensity: dict[str, dict[str, Annotated[float, Field(ge=AU_MIN, le=AU_MAX)]]] = Field(
        default_factory=dict,
        description="Class name -> {AU name: intensity 0-5}, e.g. happy: {AU6: 2.5, AU12: 4.0}. "
        "AUs not listed are 0.",
    )
    jitter: float = Field(
        default=0.5,
        ge=0,
        le=AU_MAX,
        description="Standard deviation of Gaussian noise added per sample to every listed AU "
        "(intensity units); results are clipped to 0-5. 0 disables jitter.",
    )

    @property
    def names(self) -> tuple[str, ...]:
        return AU_SETS[self.au_set]

    @model_validator(mode="after")
    def _aus_known(self) -> ActionUnits:
        for cls_name, table in self.intensity.items():
            for au in table:
                if au not in self.names:
                    raise fail(
                        "unknown_au",
                        "class '{cls}' sets '{au}', which is not in AU set {au_set}",
                        "use AUs of {au_set} ({names}) or pick another aus.au_set",
                        at=f"intensity.{cls_name}.{au}",
                        cls=cls_name,
                        au=au,
                        au_set=self.au_set,
                        names=", ".join(self.names),
                    )
        return self
