"""The calibration rule on hand-made probabilities: pooling, and every disposition."""
from __future__ import annotations

import numpy as np
import pytest

from curation.labelling.calibrate import Opinion, decide, pool

# three classes: 0 neutral, 1 happy, 2 contempt
HAPPY = Opinion.of([0.1, 0.8, 0.1])
HAPPY_NO_CONTEMPT = Opinion.of([0.2, 0.8, 0.0], known=[True, True, False])
NEUTRAL = Opinion.of([0.7, 0.2, 0.1])
UNSURE = Opinion.of([0.34, 0.33, 0.33])


def test_weighted_vote_is_the_weighted_mean():
    pooled = pool([Opinion.of([0.1, 0.8, 0.1], weight=3), Opinion.of([0.7, 0.2, 0.1], weight=1)], "weighted_vote")
    np.testing.assert_allclose(pooled, [(0.3 + 0.7) / 4, (2.4 + 0.2) / 4, (0.3 + 0.1) / 4])


def test_product_is_the_normalised_weighted_geometric_mean():
    pooled = pool([HAPPY, NEUTRAL], "product")
    raw = np.sqrt(np.array([0.1 * 0.7, 0.8 * 0.2, 0.1 * 0.1]))
    np.testing.assert_allclose(pooled, raw / raw.sum())


def test_a_class_is_pooled_only_over_the_labellers_that_know_it():
    knows_all = Opinion.of([0.1, 0.1, 0.8])
    pooled = pool([knows_all, HAPPY_NO_CONTEMPT], "weighted_vote")
    # contempt comes from the one labeller that knows it; the other's 0 does not count against it
    raw = np.array([(0.1 + 0.2) / 2, (0.1 + 0.8) / 2, 0.8])
    np.testing.assert_allclose(pooled, raw / raw.sum())
    nobody = pool([HAPPY_NO_CONTEMPT], "product")
    assert nobody[2] == 0 and nobody.sum() == pytest.approx(1)


def test_probabilities_are_renormalised_over_known_classes():
    partial = Opinion.of([0.1, 0.3, 0.5], known=[True, True, False])
    np.testing.assert_allclose(partial.probs, [0.25, 0.75, 0.0])


def test_confirmed():
    v = decide([HAPPY, HAPPY_NO_CONTEMPT], target=1)
    assert (v.disposition, v.reason, v.label, v.agreement) == ("confirmed", "", 1, 1.0)
    raw = np.array([np.sqrt(0.1 * 0.2), np.sqrt(0.8 * 0.8), 0.1])  # contempt: only the first knows it
    assert v.confidence == pytest.approx(raw[1] / raw.sum())


def test_relabelled_only_when_allowed():
    allowed = decide([HAPPY, HAPPY], target=0, relabel=True)
    assert (allowed.disposition, allowed.label) == ("relabelled", 1)
    refused = decide([HAPPY, HAPPY], target=0, relabel=False)
    assert (refused.disposition, refused.reason, refused.label) == ("rejected", "label_mismatch", 1)


def test_rejected_for_low_confidence():
    v = decide([UNSURE], target=0, min_confidence=0.5)
    assert (v.disposition, v.reason) == ("rejected", "low_confidence")
    assert decide([UNSURE], target=0, min_confidence=0.3).disposition == "confirmed"


def test_rejected_for_disagreement():
    strong_happy = Opinion.of([0.01, 0.98, 0.01])
    v = decide([strong_happy, NEUTRAL, NEUTRAL], target=1, rule="weighted_vote", min_confidence=0.0,
               min_agreement=0.5)
    # pooled: neutral (0.01+0.7+0.7)/3 = 0.47 edges out happy (0.98+0.2+0.2)/3 = 0.46; 2 of 3 agree
    assert v.label == 0 and v.agreement == pytest.approx(2 / 3)
    heavy = Opinion.of([0.01, 0.98, 0.01], weight=10)
    v = decide([heavy, NEUTRAL, NEUTRAL], target=1, rule="weighted_vote", min_confidence=0.0, min_agreement=0.9)
    assert (v.label, v.disposition, v.reason) == (1, "rejected", "disagreement")
    assert v.agreement == pytest.approx(10 / 12)


def test_labelled_when_there_is_no_target():
    v = decide([HAPPY], target=None)
    assert (v.disposition, v.label) == ("labelled", 1)
    assert decide([UNSURE], target=None).disposition == "rejected"


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown combine rule"):
        pool([HAPPY], "median")
    with pytest.raises(ValueError, match="no labeller opinions"):
        pool([], "product")
    with pytest.raises(ValueError, match="at least one class"):
        Opinion.of([0.5, 0.5], known=[False, False])
