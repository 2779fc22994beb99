"""``build-dataset evaluate`` sweeps: scaling on nested class-balanced subsets, real + synthetic mixes, seeds with
mean and std, a matrix over several test sets, and the guard once per sweep (``evaluation.sweep``).

The fixtures are ``test_evaluate``'s (the tinted build of 42 images, its RAF-DB-ordered dataset and FER2013-named
folder, tiny random backbones); every run here uses centre crops (``--no-align``) and a few epochs at 32 px.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from builder.core.errors import UserError
from tests.evaluation.test_evaluate import FAST, SAME_PHOTOS, main, real_sets  # noqa: F401 (real_sets: a fixture)

QUICK = [*FAST, "--epochs", "3", "--no-align", *SAME_PHOTOS]


def test_nested_subsets_are_nested_class_balanced_and_seeded():
    from evaluation.sweep import nested_subsets, quotas

    labels = np.array([0] * 10 + [1] * 3 + [2] * 7 + [3] * 12)
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(len(labels))]
    available = Counter(labels.tolist())
    sizes = list(range(4, len(labels) + 1))
    for seed in (0, 1, 2):
        subsets = nested_subsets(labels, sizes, seed)
        assert nested_subsets(labels, sizes, seed).keys() == subsets.keys()
        assert all(np.array_equal(subsets[n], nested_subsets(labels, sizes, seed)[n]) for n in sizes)  # seeded
        for small, big in zip(sizes, sizes[1:]):
            assert set(subsets[small]) <= set(subsets[big])  # nested
        for n in sizes:
            rows = subsets[n]
            assert len(rows) == n == len(set(rows.tolist()))
            counts = Counter(labels[rows].tolist())
            # balanced: a class with samples left holds at most one fewer than any other class
            open_ = [counts.get(c, 0) for c in available if counts.get(c, 0) < available[c]]
            if open_:
                assert max(counts.values()) - min(open_) <= 1
    assert not np.array_equal(nested_subsets(labels, [8], 0)[8], nested_subsets(labels, [8], 1)[8])
    assert quotas({0: 10, 1: 3, 2: 7}, 12, [2, 0, 1]) == {0: 4, 1: 3, 2: 5}  # level 4, then one more for class 2
    assert quotas({0: 2, 1: 2}, 99, [0, 1]) == {0: 2, 1: 2}


@pytest.fixture(scope="module")
def scaling(built, real_sets, backbones):  # noqa: F811
    """Sizes 6 and 42 (all), seeds 0 and 1, two test sets (a saved dataset and an image folder)."""
    args = [str(built), "--test", str(real_sets["rafdb"]), "--test", str(real_sets["fer"]),
            "--test-label-column", "label", "--backbone", str(backbones["resnet"]), "--sizes", "6,42",
            "--seeds", "0,1", "--name", "scaling", *QUICK]
    assert main(args) == 0
    return json.loads((built / "eval" / "scaling.json").read_text())


def test_scaling_sweep_one_run_per_size_and_seed_with_mean_and_std(scaling, built):
    r = scaling
    assert r["kind"] == "fer-synth-evaluation-sweep" and r["sweep"] == "scaling"
    assert [(run["size"], run["seed"]) for run in r["runs"]] == [(6, 0), (42, 0), (6, 1), (42, 1)]
    assert [run["synthetic_classes"] for run in r["runs"][:2]] == [{"happy": 2, "sad": 2, "anger": 2},
                                                                   {"happy": 14, "sad": 14, "anger": 14}]
    assert all(run["real_per_epoch"] == 0 and run["synthetic_per_epoch"] == run["size"] for run in r["runs"])
    assert [(row["point"], row["test"]) for row in r["summary"]] == [
        ("size 6", "rafdb-test"), ("size 6", "fer-test"), ("size 42", "rafdb-test"), ("size 42", "fer-test")]
    for row in r["summary"]:
        values = [run["results"][row["test"]]["accuracy"] for run in r["runs"] if run["size"] == row["size"]]
        assert row["accuracy"]["values"] == values and row["seeds"] == [0, 1]
        assert row["accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert row["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert 0 <= row["macro_accuracy"]["mean"] <= 1
    # the matrix: one cell per (training configuration, test set)
    m = r["matrix"]
    assert m["columns"] == ["rafdb-test", "fer-test"] and len(m["rows"]) == 4
    assert all(len(row) == 2 for row in m["accuracy"]) and m["accuracy"][3][1] == r["runs"][3]["results"]["fer-test"][
        "accuracy"]
    assert [t["samples"] for t in r["tests"]] == [28, 28] and r["tests"][1]["label_alignment"]["missing_in_model"] \
        == ["fear"]
    # timings of every part
    s = r["seconds"]
    assert {"open", "overlap", "backbone", "crops", "runs", "total"} <= set(s)
    assert set(s["crops"]["test"]) == {"rafdb-test", "fer-test"}
    assert all({"backbone", "train", "test"} <= set(run["seconds"]) for run in r["runs"])
    assert r["guard"]["overridden"] is False and r["guard"]["checked"]
    assert (built / "eval" / "scaling-scaling.png").read_bytes()[:4] == b"\x89PNG"
    # the report summarises the sweep and the card's headline shows its scaling figures
    report = json.loads((built / "report" / "report.json").read_text())
    (sweep,) = [s for s in report["sweeps"] if s["name"] == "scaling"]
    assert [(row["point"], row["test"]) for row in sweep["rows"]] == [(row["point"], row["test"]) for row in
                                                                      r["summary"]]
    heads = [h for h in report["headline"]["sweeps"] if h["name"] == "scaling"]
    assert [(h["test"], h["point"], h["first"]["point"]) for h in heads] == [("rafdb-test", "size 42", "size 6"),
                                                                            ("fer-test", "size 42", "size 6")]
    assert heads[0]["accuracy"]["mean"] == pytest.approx(r["summary"][2]["accuracy"]["mean"])
    assert "## Sweep: scaling (scaling)" in (built / "report" / "report.md").read_text()
    assert "Scaling (`scaling`) on `rafdb-test`" in (built / "README.md").read_text()


def test_mix_sweep_reports_the_gain_over_real_only(built, real_sets, backbones):  # noqa: F811
    args = [str(built), "--test", str(real_sets["rafdb"]), "--backbone", str(backbones["vit"]), "--mode", "linear",
            "--train-real", str(real_sets["real_train"]), "--synthetic-ratios", "0.5,1", "--name", "mixes",
            "--head-lr", "3e-2", *QUICK]
    assert main(args) == 0
    r = json.loads((built / "eval" / "mixes.json").read_text())
    assert r["sweep"] == "mixes" and [run["synthetic_ratio"] for run in r["runs"]] == [0, 0.5, 1]  # 0 added
    assert [(run["synthetic_per_epoch"], run["real_per_epoch"]) for run in r["runs"]] == [(0, 21), (10, 21), (21, 21)]
    base = r["runs"][0]["results"]["rafdb-test"]["accuracy"]
    for row, run in zip(r["summary"], r["runs"]):
        assert row["gain"]["mean"] == pytest.approx(run["results"]["rafdb-test"]["accuracy"] - base)
    assert r["summary"][0]["gain"]["mean"] == 0
    assert (built / "eval" / "mixes-mixes.png").is_file()
    heads = [h for h in json.loads((built / "report" / "report.json").read_text())["headline"]["sweeps"]
             if h["name"] == "mixes"]
    best = max(r["summary"][1:], key=lambda row: row["gain"]["mean"])
    assert [(h["point"], h["gain"]["mean"]) for h in heads] == [(best["point"], pytest.approx(best["gain"]["mean"]))]


def test_guard_refuses_a_sweep_whose_backbone_labelled_the_build(built, real_sets, backbones, tmp_path):  # noqa: F811
    copy = tmp_path / "labelled-by-resnet"
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("shards", "eval"))
    stats = json.loads((copy / "stats.json").read_text())
    stats["labelling"]["experts"][0]["model"] = str(backbones["resnet"])
    (copy / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(UserError) as err:
        main([str(copy), "--test", str(real_sets["rafdb"]), "--test", str(real_sets["fer"]), "--backbone",
              str(backbones["resnet"]), "--sizes", "6,42", "--seeds", "0,1", *QUICK])
    assert "is the model that labelled the data" in err.value.message and "--force" in err.value.fix
    assert not list((copy / "eval").glob("*.json"))


def test_sweep_options_that_do_not_go_together(tmp_path, real_sets):  # noqa: F811
    base = [str(tmp_path), "--test", str(real_sets["rafdb"])]
    cases = [
        ([*base, "--sizes", "10", "--train-real", str(real_sets["real_train"]), "--mix", "0.5"],
         "--sizes trains on synthetic subsets only"),
        ([*base, "--sizes", "10", "--synthetic-ratios", "1"], "exclude each other"),
        ([*base, "--train-real", str(real_sets["real_train"]), "--mix", "0.5", "--synthetic-ratios", "1"],
         "--synthetic-ratios and --mix exclude each other"),
        ([*base, "--sizes", "0.5,100"], "mixes fractions"),
        ([*base, "--sizes", "10.5"], "neither a whole number"),
        ([*base, "--seeds", "0,x"], "'x' is not an integer"),
        ([*base, "--test", str(real_sets["fer"]), "--test", str(real_sets["fer"]), "--test-split", "a",
          "--test-split", "b"], "--test-split is given 2 times for 3 --test sets"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message):
            main(argv)
