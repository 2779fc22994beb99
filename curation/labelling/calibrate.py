"""The calibration rule: pool the labellers' class probabilities into a final label and a disposition.

Each labeller (an expert FER model, or FERAnno) gives probabilities over the
manifest's label set and says which of those classes it knows (a FER2013
model knows no 'contempt'). Per class, the pool is taken over the labellers
that know it, then normalised over the classes:

- ``weighted_vote`` (linear pool): the weighted mean of the probabilities;
- ``product`` (product of experts, log-linear pool): the weighted geometric mean.

``confidence`` is the pooled probability of the final class; ``agreement`` is
the weighted share of labellers (among those that know the final class) whose
own top class is the final class. The disposition:

- ``rejected`` with reason ``low_confidence`` or ``disagreement`` when either
  is under its threshold;
- ``confirmed`` when the final class is the target;
- ``relabelled`` when it is another class and relabelling is allowed,
  otherwise ``rejected`` with reason ``label_mismatch``;
- ``labelled`` for samples without a target (existing image collections).

Pure numpy: no torch, unit-tested on hand-made probabilities.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

COMBINE_RULES = ("weighted_vote", "product")
_EPS = 1e-12


@dataclass(frozen=True)
class Opinion:
    """One labeller's view of one sample: probabilities over the label set and which classes it knows."""

    probs: np.ndarray
    known: np.ndarray
    weight: float = 1.0

    @classmethod
    def of(cls, probs: Sequence[float], known: Sequence[bool] | None = None, weight: float = 1.0) -> Opinion:
        p = np.asarray(probs, dtype=np.float64)
        k = np.ones(len(p), dtype=bool) if known is None else np.asarray(known, dtype=bool)
        if p.ndim != 1 or k.shape != p.shape:
            raise ValueError("probs and known must be 1-D and the same length")
        if not k.any():
            raise ValueError("a labeller must know at least one class")
        p = np.where(k, np.clip(p, 0.0, None), 0.0)
        total = p.sum()
        p = p / total if total > 0 else np.where(k, 1.0 / k.sum(), 0.0)  # renormalise over known classes
        return cls(p, k, float(weight))

    @property
    def top(self) -> int:
        return int(np.argmax(np.where(self.known, self.probs, -1.0)))


@dataclass(frozen=True)
class Verdict:
    """The rule's outcome for one sample."""

    label: int
    confidence: float
    agreement: float
    disposition: str
    reason: str
    pooled: list[float] = field(default_factory=list)


def pool(opinions: Sequence[Opinion], rule: str) -> np.ndarray:
    """Pooled probabilities over the label set (sums to 1; classes nobody knows get 0)."""
    if rule not in COMBINE_RULES:
        raise ValueError(f"unknown combine rule '{rule}' (use one of {COMBINE_RULES})")
    if not opinions:
        raise ValueError("no labeller opinions to pool")
    weights = np.array([[o.weight if k else 0.0 for k in o.known] for o in opinions])  # (E, C)
    probs = np.stack([o.probs for o in opinions])
    mass = weights.sum(0)
    known = mass > 0
    safe = np.where(known, mass, 1.0)
    if rule == "weighted_vote":
        pooled = (weights * probs).sum(0) / safe
    else:
        log_mean = (weights * np.log(np.maximum(probs, _EPS))).sum(0) / safe
        pooled = np.exp(log_mean - log_mean[known].max())
    pooled = np.where(known, pooled, 0.0)
    return pooled / pooled.sum()


def decide(opinions: Sequence[Opinion], target: int | None, rule: str = "product", min_confidence: float = 0.5,
           min_agreement: float = 0.5, relabel: bool = False) -> Verdict:
    """Final label, confidence, agreement and disposition for one sample (see the module docstring)."""
    pooled = pool(opinions, rule)
    final = int(np.argmax(pooled))
    confidence = float(pooled[final])
    voters = [o for o in opinions if o.known[final]]
    total = sum(o.weight for o in voters)
    agreement = sum(o.weight for o in voters if o.top == final) / total if total > 0 else 0.0
    common = dict(confidence=confidence, agreement=agreement, pooled=[float(p) for p in pooled])
    if confidence < min_confidence:
        return Verdict(final, disposition="rejected", reason="low_confidence", **common)
    if agreement < min_agreement:
        return Verdict(final, disposition="rejected", reason="disagreement", **common)
    if target is None:
        return Verdict(final, disposition="labelled", reason="", **common)
    if final == target:
        return Verdict(final, disposition="confirmed", reason="", **common)
    if relabel:
        return Verdict(final, disposition="relabelled", reason="", **common)
    return Verdict(final, disposition="rejected", reason="label_mismatch", **common)

