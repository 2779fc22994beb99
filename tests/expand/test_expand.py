"""Expansion: specs are a pure function of (manifest, index)."""
from __future__ import annotations

import pickle
from collections import Counter

import pytest

from builder.core.seeding import derive_seed
from builder.expand.specs import class_sequence, iter_specs, make_spec, shard_specs
from builder.manifest import Manifest
from builder.manifest.loader import load_manifest
from tests.conftest import DEMO


@pytest.fixture(scope="module")
def demo() -> Manifest:
    return load_manifest(DEMO)


def spec_dicts(records):
    return [r.to_json() for r in records]


@pytest.mark.parametrize("shard_size", [1, 3, 5, 8, 27, 28, 1000])
def test_specs_do_not_depend_on_shard_size(demo, shard_size):
    whole = spec_dicts(iter_specs(demo))
    shards = -(-demo.total // shard_size)
    sharded = [r for s in range(shards) for r in shard_specs(demo, s, shard_size)]
    assert spec_dicts(sharded) == whole


def test_specs_do_not_depend_on_order_or_process(demo):
    classes = class_sequence(demo)
    forward = spec_dicts(make_spec(demo, i, classes[i]) for i in range(demo.total))
    backward = spec_dicts(make_spec(demo, i, classes[i]) for i in reversed(range(demo.total)))[::-1]
    copied = pickle.loads(pickle.dumps(demo))  # as a worker process receives it
    assert forward == backward == spec_dicts(iter_specs(copied))


def test_spec_golden_values(demo):
    """Changing these changes every dataset built before: only on purpose, with a version bump."""
    first = next(iter_specs(demo))
    assert first.sample_id == "demo-0000000"
    assert first.label_name == "neutral"
    assert first.seed == derive_seed(1234, 0, "generator") == 8856193619761346152
    assert first.prompt == ("A close-up portrait photo of an old man with white ethnicity showing a neutral "
                            "facial expression, frontal, studio lighting.")


def test_class_counts_are_exact_and_interleaved(demo_data):
    m = Manifest.model_validate({**demo_data, "labels": {"counts": {"happy": 30, "sad": 10, "anger": 20}}})
    classes = class_sequence(m)
    assert Counter(classes) == {1: 30, 2: 10, 6: 20}
    for prefix in range(1, len(classes) + 1):
        counts = Counter(classes[:prefix])
        for label, n in {1: 30, 2: 10, 6: 20}.items():
            assert abs(counts[label] - prefix * n / 60) <= 1.0, "every prefix (shard) keeps the class mix"


def test_seeds_are_unique_and_follow_the_global_seed(demo, demo_data):
    seeds = [r.seed for r in iter_specs(demo)]
    assert len(set(seeds)) == len(seeds)
    other = Manifest.model_validate({**demo_data, "seed": 99})
    assert not set(seeds) & {r.seed for r in iter_specs(other)}


def test_axis_weights_are_respected(demo_data):
    data = {**demo_data, "labels": {"counts": 2000}, "aus": {"intensity": {}}}
    data["prompts"] = {**demo_data["prompts"], "axes": {**demo_data["prompts"]["axes"],
                                                          "gender": {"values": ["man", "woman"], "weights": [3, 1]}}}
    m = Manifest.model_validate(data)
    genders = Counter(r.attributes["gender"] for r in iter_specs(m))
    assert abs(genders["man"] / m.total - 0.75) < 0.02


def test_au_vectors_follow_targets_with_clipped_jitter(demo, demo_data):
    names = demo.aus.names
    targets = demo.aus.intensity
    deviations = []
    for r in iter_specs(demo):
        assert len(r.au) == len(names)
        table = targets.get(r.label_name, {})
        for name, value in zip(names, r.au):
            assert 0.0 <= value <= 5.0
            if name not in table:
                assert value == 0.0
            else:
                deviations.append(value - table[name])
    assert any(abs(d) > 0 for d in deviations) and all(abs(d) < 5 * 0.3 + 1e-9 for d in deviations)

    no_jitter = Manifest.model_validate({**demo_data, "aus": {**demo_data["aus"], "jitter": 0}})
    happy = next(r for r in iter_specs(no_jitter) if r.label_name == "happy")
    assert dict(zip(names, happy.au)) == {n: {"AU6": 2.5, "AU12": 4.0, "AU25": 1.5}.get(n, 0.0) for n in names}


def test_expression_text_override(demo_data):
    data = {**demo_data, "prompts": {**demo_data["prompts"], "expression_text": {"happy": "joyful, beaming"}}}
    m = Manifest.model_validate(data)
    happy = next(r for r in iter_specs(m) if r.label_name == "happy")
    assert "joyful, beaming facial expression" in happy.prompt
    anger = next(r for r in iter_specs(m) if r.label_name == "anger")
    assert "angry facial expression" in anger.prompt


def test_article_follows_the_substituted_value_only(demo_data):
    from builder.manifest.templates import render_prompt

    assert render_prompt("a {age} man, a {expression} face", {"age": "old", "expression": "happy"}) == \
        "an old man, a happy face"
    assert render_prompt("A {x}; a elephant; {{a {x}}}", {"x": "angry"}) == "An angry; a elephant; {an angry}"
