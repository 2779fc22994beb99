"""The 'output' section: splits and sharding."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from builder.core.config import Strict, fail
from builder.manifest.common import IDENT


class Output(Strict):
    """Dataset splits and how work is sharded."""

    splits: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: {"train": 1.0},
        description="Split name -> fraction of the kept samples; fractions sum to 1. Splits are "
        "stratified by class.",
    )
    shard_size: int = Field(
        default=256,
        gt=0,
        le=100_000,
        description="Samples per shard: the unit of resumption and of distribution across workers. "
        "Changing it does not change any sample.",
    )

    @field_validator("splits")
    @classmethod
    def _splits_sum(cls, splits: dict[str, float]) -> dict[str, float]:
        for name in splits:
            if not IDENT.match(name):
                raise fail("split_name", "split name '{name}' is not allowed",
                            "use a lower-case identifier such as train, validation or test", name=name)
        if not splits:
            raise fail("no_splits", "has no split", "give at least one split, e.g. {{train: 1.0}}")
        total = sum(splits.values())
        if abs(total - 1.0) > 1e-6:
            raise fail(
                "splits_sum",
                "fractions sum to {total:g}, not 1",
                "scale the fractions so they add up to 1, e.g. {{train: 0.8, validation: 0.1, test: 0.1}}",
                total=total,
            )
        return splits
