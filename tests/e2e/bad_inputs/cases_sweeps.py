"""Bad evaluation sweep inputs: sizes that are not numbers or zero, negative synthetic ratios, ratios without a
real training set, a size larger than the split (``evaluation.sweep``)."""
from __future__ import annotations

import json
import shutil

from tests.e2e.bad_inputs import Case, case


def _argv(tmp, *more):
    """An evaluate command whose options are refused before any folder is opened."""
    return ["evaluate", tmp / "out", "--test", tmp / "test", *more]


@case("eval-sweep-sizes-not-numbers")
def _(tmp, env):
    return Case(_argv(tmp, "--sizes", "1000,lots"), "--sizes", ["'lots' is not a number", "1000,5000,20000"])


@case("eval-sweep-size-zero")
def _(tmp, env):
    return Case(_argv(tmp, "--sizes", "0,1000"), "--sizes", ["a size of 0 trains on nothing", "above 0"])


@case("eval-sweep-ratio-negative")
def _(tmp, env):
    return Case(_argv(tmp, "--train-real", tmp / "real", "--synthetic-ratios", "0,-0.5"), "--synthetic-ratios",
                ["-0.5 is negative", "ratios >= 0"])


@case("eval-sweep-ratios-without-real")
def _(tmp, env):
    return Case(_argv(tmp, "--synthetic-ratios", "0,0.5,1"), "--synthetic-ratios",
                ["needs --train-real", "--sizes for synthetic-only scaling"])


@case("eval-sweep-size-larger-than-split")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    rows = [json.loads(line) for line in (out / "records" / "train.jsonl").read_text().splitlines() if line.strip()]
    test = tmp / "test-set"
    for k, row in enumerate(rows[:2]):
        folder = test / row["label_name"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / row["image"], folder / f"copy-{k}.png")

    def nothing_written():
        assert not (out / "eval").exists(), "a refused sweep wrote OUT/eval"

    return Case(["evaluate", out, "--test", test, "--no-align", "--sizes", "10,100000"], "--sizes 100000",
                [f"larger than the build's 'train' split ({len(rows)} samples)", f"sizes up to {len(rows)}"],
                [out, test], nothing_written)
