"""Prompt enrichment: AU cues from the sample's AU vector, and the built-in SyntFER template set."""
from __future__ import annotations

from collections import Counter

import pytest

from builder.expand.specs import iter_specs
from builder.manifest import Manifest
from builder.manifest.au_sets import AU_SETS
from builder.manifest.templates import au_cues, au_label


def test_au_cues_grade_and_rank():
    names = ("AU1", "AU6", "AU12", "AU25")
    assert au_cues(names, [0.5, 2.7, 4.1, 1.6], 1.0, 4) == (
        "cheeks clearly raised, lip corners strongly pulled up, lips moderately parted", "AU6, AU12, AU25")
    assert au_cues(names, [0.5, 2.7, 4.1, 1.6], 1.0, 1) == ("lip corners strongly pulled up", "AU12")
    assert au_cues(names, [0.0, 0.2, 0.0, 0.9], 1.0, 4) == ("relaxed face", "no action units")
    assert au_cues(names, [4.9, 0, 0, 0], 1.0, 4)[0] == "inner brows extremely raised"


def test_every_au_of_every_set_has_words():
    for names in AU_SETS.values():
        for name in names:
            part, action = au_label(name)
            assert part and action
    assert au_label("AUL12") == ("left lip corners", "pulled up")


@pytest.fixture
def syntfer(demo_data) -> Manifest:
    prompts = {"template_set": "syntfer", "negative_prompt": "blurry",
               "axes": {"age": {"values": ["young"]}, "lighting": {"values": ["dim light"]}}}
    return Manifest.model_validate({**demo_data, "labels": {"counts": 40}, "prompts": prompts})


def test_syntfer_set_axes_and_overrides(syntfer):
    assert list(syntfer.prompts.all_axes) == ["gender", "age", "ethnicity", "pose", "trait", "lighting"]
    specs = list(iter_specs(syntfer))
    assert {s.attributes["age"] for s in specs} == {"young"}, "the manifest's axis overrides the set's"
    assert len({s.attributes["ethnicity"] for s in specs}) == 5
    assert all(s.prompt.startswith("A close-up portrait clearly showing an intense and highly expressive") for s in specs)


def test_syntfer_cues_describe_each_sample_au_vector(syntfer):
    styles = Counter()
    for spec in iter_specs(syntfer):
        cues, codes = au_cues(syntfer.aus.names, spec.au, 1.0, 4)
        if f"({codes}: {cues})" in spec.prompt:
            styles["combined"] += 1
        elif f"({cues})" in spec.prompt:
            styles["descriptive"] += 1
        elif f"({codes})" in spec.prompt:
            styles["au_names"] += 1
        if spec.label_name == "happy":
            assert "AU12" in codes and "lip corners" in cues
        if spec.label_name == "neutral":
            assert codes == "no action units"
    assert set(styles) == {"combined", "descriptive", "au_names"} and sum(styles.values()) == 280


def test_custom_template_with_cues(demo_data):
    prompts = {**demo_data["prompts"], "templates": ["a {expression} face, {au_cues}"], "au_cues": {"max_cues": 2}}
    m = Manifest.model_validate({**demo_data, "prompts": prompts})
    surprise = next(s for s in iter_specs(m) if s.label_name == "surprise")
    assert surprise.prompt.startswith("a surprised face, ") and surprise.prompt.count(",") == 2
