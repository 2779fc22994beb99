"""``build-dataset audit`` and ``build-dataset report``: attribute classifiers against the prompts, one page.

The release is the demo build (generated, prompt axes age, gender, ethnicity, pose, trait as columns). The
classifiers are tiny transformers models built here from configs (``ViTForImageClassification``,
``ResNetForImageClassification``, saved with save_pretrained as safetensors with an image processor): one whose
head always answers 'old' (bias only), so agreement and gaps have known values from the records, and random ones
for the plumbing. The report is also checked on hand-written result files (an evaluation, a fidelity result, a
sweep of an unknown kind, a broken file) and the card's headline block.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builder.core.errors import UserError
from evaluation.audit import Plan, auto_mapping, canonical, compare, parse_maps


def _save(model, dest: Path) -> Path:
    from transformers import ViTImageProcessorPil

    model.save_pretrained(dest)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dest)
    return dest


def tiny_vit(dest: Path, id2label: dict, always: int | None = None) -> Path:
    """A tiny ViT classifier; with ``always``, its head ignores the image and answers that label."""
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        id2label=id2label, label2id={v: k for k, v in id2label.items()}))
    if always is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[always] = 5.0
    return _save(model, dest)


def tiny_resnet(dest: Path, id2label: dict) -> Path:
    import transformers
    from transformers import ResNetConfig, ResNetForImageClassification

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    return _save(ResNetForImageClassification(ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", id2label=id2label,
        label2id={v: k for k, v in id2label.items()})), dest)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo build (28 generated images, three splits, prompt axes as columns)."""
    from builder.cli import main
    from tests.conftest import DEMO

    out = tmp_path_factory.mktemp("audit") / "demo"
    torch.set_num_threads(1)
    assert main([str(DEMO), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("classifiers")
    return {"old": tiny_vit(root / "always-old", {0: "young", 1: "old"}, always=1),
            "gender": tiny_resnet(root / "gender", {0: "Male", 1: "Female"}),
            "skin": tiny_vit(root / "skin", {0: "type I-II", 1: "type III-IV", 2: "type V-VI"})}


def prompted_ages(out: Path) -> list[str]:
    return [json.loads(line)["attributes"]["age"] for split in ("train", "validation", "test")
            for line in (out / "records" / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def run(args: list) -> int:
    from builder.cli import cli

    argv = [str(a) for a in args]
    with cli.make_context("build-dataset", argv) as ctx:
        ctx.meta["argv"] = argv
        result = cli.invoke(ctx)
    return result if isinstance(result, int) else 0


def test_audit_numbers_match_the_records_for_a_classifier_that_always_answers_old(demo, classifiers):
    from builder import api

    result = api.audit(demo, {"age": str(classifiers["old"])}, whole_image=True, progress=False)
    ages = prompted_ages(demo)
    a = result["attributes"][0]
    assert a["attribute"] == "age" and a["mapping"] == {"young": ["young"], "old": ["old"]}
    assert a["mapping_how"] == {"young": "exact", "old": "exact"} and a["unmapped_values"] == ["middle-aged"]
    o = a["overall"]
    compared = [v for v in ages if v in ("young", "old")]
    share_old = compared.count("old") / len(compared)
    assert o["images"] == len(ages) == 28 and o["compared_images"] == len(compared)
    assert o["predicted_labels"] == {"young": 0, "old": 28}
    assert o["groups"] == ["young", "old"] and o["predicted"] == {"young": 0.0, "old": 1.0}
    assert o["asked"]["old"] == pytest.approx(share_old)
    assert o["agreement"] == pytest.approx(share_old)
    assert o["tvd"] == pytest.approx(1 - share_old)
    assert o["manifest"] == {"young": 0.5, "old": 0.5} and o["tvd_manifest"] == pytest.approx(0.5)
    assert o["unmapped"] == {"middle-aged": ages.count("middle-aged")}
    assert sum(s["images"] for s in a["per_split"].values()) == 28 and set(a["per_split"]) == {
        "train", "validation", "test"}
    assert sum(c["images"] for c in a["per_class"].values()) == 28
    assert result["faces"]["counts"] == {"whole": 28}
    rows = (demo / "eval" / "audit-predictions.jsonl").read_text().splitlines()
    assert len(rows) == 28 and json.loads(rows[0])["age"]["predicted"] == "old"
    assert (demo / "eval" / "audit.png").stat().st_size > 1000
    # the user's mapping: middle-aged counts as 'old' (then 'old' itself has no label left)
    mapped = api.audit(demo, [f"age={classifiers['old']}"], maps=["age:middle-aged=old"], whole_image=True,
                       progress=False)["attributes"][0]
    assert mapped["mapping"] == {"young": ["young"], "middle-aged": ["old"]} and mapped["unmapped_values"] == ["old"]
    assert mapped["overall"]["agreement"] == pytest.approx(
        ages.count("middle-aged") / (ages.count("middle-aged") + ages.count("young")))


def test_audit_cli_guesses_the_attribute_crops_faces_and_refreshes_report_and_card(demo, classifiers):
    assert run(["audit", demo, "--classifier", classifiers["gender"], "--classifier",
                f"skin_tone={classifiers['skin']}", "--no-progress", "--batch-size", "8"]) == 0
    result = json.loads((demo / "eval" / "audit.json").read_text())
    gender, skin = result["attributes"]
    assert gender["attribute"] == "gender"  # Male/Female matched man/woman by their canonical synonyms
    assert gender["mapping"] == {"man": ["Male"], "woman": ["Female"]} and gender["mapping_how"]["man"] == "canonical"
    assert gender["overall"]["compared_images"] == 28 and 0 <= gender["overall"]["tvd"] <= 1
    assert skin["prompted"] is False and skin["overall"]["agreement"] is None  # not prompted: predicted only
    assert sum(skin["overall"]["predicted_labels"].values()) == 28
    assert result["faces"]["mode"] == "crop" and sum(result["faces"]["counts"].values()) == 28
    report = json.loads((demo / "report" / "report.json").read_text())
    assert [a["attribute"] for a in report["headline"]["audit"]] == ["gender", "skin_tone"]
    page = (demo / "report" / "report.md").read_text()
    assert "## Demographic audit" in page and "](../eval/audit.png)" in page and "| man | Male |" in page
    card = (demo / "README.md").read_text()
    assert "### Report headline" in card and "Audit of gender" in card and str(classifiers["gender"]) not in card


def test_map_and_names():
    assert parse_maps(("age:young=0-2, 3-9", "age:old=70+")) == {"age": {"young": ["0-2", "3-9"], "old": ["70+"]}}
    for bad in ("age=young", "age:young=", ":young=a", "Age:young=a"):
        with pytest.raises(UserError, match="ATTRIBUTE:VALUE=LABEL"):
            parse_maps((bad,))
    assert canonical("Middle-Aged") == canonical("middle aged") and canonical("Woman") == canonical("female")
    mapping, how = auto_mapping(["young", "middle-aged", "man"], ("Young", "middle aged", "male", "young"))
    assert mapping == {"young": ["young"], "middle-aged": ["middle aged"], "man": ["male"]}
    assert how == {"young": "exact", "middle-aged": "canonical", "man": "canonical"}


def test_compare_by_hand():
    class Clf:
        labels = ("a", "b", "c")

    plan = Plan("x", "m", Clf(), {"values": ["A", "B"], "weights": [0.75, 0.25]}, ["A", "B"],
                {"A": ["a"], "B": ["b"]})
    o = compare(plan, ["A", "A", "B", "B", None], [0, 2, 1, 0, 1])
    assert o["groups"] == ["A", "B", "(other)"] and o["compared_images"] == 4
    assert o["asked"] == {"A": 0.5, "B": 0.5, "(other)": 0.0}
    assert o["predicted"] == {"A": 0.5, "B": 0.25, "(other)": 0.25}
    assert o["agreement"] == pytest.approx(0.5) and o["tvd"] == pytest.approx(0.25)
    assert o["tvd_manifest"] == pytest.approx(0.5 * (0.25 + 0 + 0.25))


def _evaluation_result(name: str, test: str, accuracy: float, overridden: bool = False) -> dict:
    """What the card and the report read of an evaluation result (the rest of ``evaluation.run``'s format)."""
    return {"kind": "fer-synth-evaluation", "name": name, "guard_overridden": overridden,
            "guard": {"conflicts": [{"where": "labelling.experts[0]"}]},
            "backbone": {"source": "hub", "id": "microsoft/resnet-18", "input_size": 32},
            "config": {"mode": "finetune", "epochs": 1, "seed": 0}, "faces": {"align": True},
            "train": {"samples": 22}, "train_real": None, "mix": {"ratio": 0.0},
            "test": {"source": f"/data/{test}", "split": None, "samples": 10},
            "metrics": {"accuracy": accuracy, "macro_accuracy": accuracy - 0.1, "macro_f1": accuracy - 0.2,
                        "accuracy_all_test_samples": accuracy, "evaluated_classes": ["happy", "sad"],
                        "samples_evaluated": 10, "samples_total": 10, "samples_unpredictable": 0,
                        "per_class": {"happy": {"support": 5, "precision": 0.5, "recall": 0.5, "f1": 0.5}}},
            "coverage": {"unpredictable_test_samples": {}, "model_classes_not_in_test": [],
                         "build_classes_without_training_samples": []},
            "files": {"confusion": f"{name}-confusion.png"}, "seconds": {"total": 12.5}}


def test_report_gathers_every_result_and_lists_unknown_ones(demo):
    from cards.evaluation_section import evaluation_section

    eval_dir = demo / "eval"
    for name, test, acc, forced in (("r1", "rafdb", 0.5, False), ("r2", "rafdb", 0.7, False),
                                    ("r3", "rafdb", 0.9, True), ("r4", "fer", 0.4, False)):
        (eval_dir / f"{name}.json").write_text(json.dumps(_evaluation_result(name, test, acc, forced)))
    (eval_dir / "sweep-sizes.json").write_text(json.dumps({"kind": "fer-synth-evaluation-sweep", "name": "sizes"}))
    (eval_dir / "sweep-sizes.png").write_bytes(b"\x89PNG")
    (eval_dir / "broken.json").write_text("{not json")
    (demo / "fidelity").mkdir(exist_ok=True)
    (demo / "fidelity" / "fidelity.json").write_text(json.dumps({
        "kind": "fer-synth-fidelity", "encoder": {"given": "/models/clip-tiny", "source": "local"},
        "reference": {"source": "/data/ref"}, "overall": {"fd": 12.345, "kid": {"mean": 0.01, "std": 0.002},
                                                         "release_images": 28, "reference_images": 6},
        "per_class": [{"class": "happy", "reference_class": "happy", "fd": 3.0, "kid": {"mean": 0.1},
                       "status": "ok"}],
        "diversity": {"metric": "cosine", "release": {"class_mean": 0.2}, "reference": {"class_mean": 0.3}},
        "seconds": {"total": 3.0}}))
    assert run(["report", demo]) == 0
    report = json.loads((demo / "report" / "report.json").read_text())
    head = report["headline"]
    assert [(b["test_set"], b["name"]) for b in head["best_test_accuracy"]] == [("fer", "r4"), ("rafdb", "r2")]
    assert head["results_guard_overridden"] == 1
    assert head["fidelity"]["fd"] == 12.345 and head["fidelity"]["encoder"] == "clip-tiny (local)"
    assert [a["attribute"] for a in head["audit"]] == ["gender", "skin_tone"]  # the audit of the test above
    assert {o["file"]: o["kind"] for o in report["other_results"]} == {
        "eval/broken.json": None, "eval/sweep-sizes.json": "fer-synth-evaluation-sweep"}
    assert report["other_figures"] == ["eval/sweep-sizes.png"]
    page = (demo / "report" / "report.md").read_text()
    for text in ("Best test accuracy on `rafdb`: 70.00%", "FD 12.35", "](../eval/r2-confusion.png)",
                 "[eval/sweep-sizes.json](../eval/sweep-sizes.json)", "![sweep-sizes.png](../eval/sweep-sizes.png)",
                 "## Fidelity", "Run times"):
        assert text in page, text
    section = "\n".join(evaluation_section(demo))
    assert "### Report headline" in section and "Best test accuracy on `fer`: 40.00%" in section
    assert section.index("### Report headline") < section.index("| result | backbone")
    card = (demo / "README.md").read_text()
    assert card.count("<!-- fer-synth:evaluation -->") == 1 and "Fidelity against `ref`" in card
