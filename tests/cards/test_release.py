"""The release for people and the Hub: parquet configs (default and rejected), figures, a card whose metadata
passes the Hub's rules and whose numbers are the run's stats, byte-identical re-releases, and review decisions."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard

from builder.cli import main
from builder.core.records import Record
from cards.hub_metadata import validate_card_text, validate_metadata


@pytest.fixture(scope="module")
def release_out(tmp_path_factory, demo_data):
    """The demo with balance at 3 per class, so the release has rejects (over_target) to audit."""
    import yaml

    from tests.conftest import deep_update

    work = tmp_path_factory.mktemp("release")
    path = work / "manifest.yaml"
    path.write_text(yaml.safe_dump(deep_update(demo_data, {"curation": {"balance": {"per_class": 3}}}),
                                   sort_keys=False))
    out = work / "out"
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0
    return out


def stats_of(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


def test_release_loads_from_its_card_with_a_rejected_config(release_out):
    stats = stats_of(release_out)
    default = datasets.load_dataset(str(release_out))
    assert {split: len(ds) for split, ds in default.items()} == {
        split: n for split, n in stats["released"]["splits"].items() if n}
    assert default["train"].features["label"].names == ["neutral", "happy", "sad", "surprise", "fear", "disgust",
                                                        "anger"]
    rejected = datasets.load_dataset(str(release_out), "rejected")["rejected"]
    dropped = sum(sum(s["dropped"].values()) for s in stats["stages"].values())
    assert len(rejected) == dropped == stats["stages"]["balance"]["in"] - stats["stages"]["balance"]["kept"] > 0
    assert set(rejected["reason"]) == {"over_target"} and set(rejected["stage"]) == {"balance"}
    assert all(image is not None for image in rejected["image"])  # the generated images, for the audit
    files = sorted(p.relative_to(release_out).as_posix() for p in (release_out / "data").iterdir())
    assert files == sorted(f for paths in stats["files"].values() for f in paths)
    records = {p.stem: [Record.from_json(line) for line in p.read_text().splitlines()]
               for p in (release_out / "records").glob("*.jsonl")}
    assert {k: len(v) for k, v in records.items()} == stats["released"]["splits"]


def test_card_passes_hub_metadata_rules_and_every_number_is_the_runs(release_out):
    stats = stats_of(release_out)
    text = (release_out / "README.md").read_text()
    card = DatasetCard.load(release_out / "README.md")
    assert validate_card_text(text) == []
    meta = card.data.to_dict()
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["image-classification"]
    assert [c["config_name"] for c in meta["configs"]] == ["default", "rejected"]

    def table_after(heading: str) -> list[list[str]]:
        block = text.split(heading, 1)[1].split("\n\n", 2)[1]
        return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]

    splits = list(stats["released"]["splits"])
    for row in table_after("## Contents"):
        name, total = row[0], int(row[-1])
        assert total == stats["released"]["classes"][name]
        assert [int(v) for v in row[2:-1]] == [stats["released"]["class_by_split"][s].get(name, 0) for s in splits]
    funnel = {row[0]: row for row in table_after("## Processing funnel")}
    assert list(funnel) == list(stats["stages"])
    for name, s in stats["stages"].items():
        assert (int(funnel[name][1]), int(funnel[name][2])) == (s["in"], s["kept"])
        assert funnel[name][3] == (", ".join(f"{r}: {c}" for r, c in s["dropped"].items()) or "none")
    for axis, table in stats["released"]["by_attribute"].items():
        assert f"Images per class and `{axis}`" in text
        assert sum(sum(counts.values()) for counts in table.values()) == stats["released"]["total"]
    for path in stats["figures"].values():
        assert (release_out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({path})" in text
    assert set(stats["figures"]) == {"samples", "funnel", "classes"}  # no leak gate ran: no leak figure


def test_releasing_again_gives_the_same_bytes(release_out):
    def digests() -> dict[str, str]:
        files = [release_out / "README.md", *sorted((release_out / "data").iterdir()),
                 *sorted((release_out / "figures").iterdir())]
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = digests()
    assert main(["release", str(release_out), "--no-review"]) == 0
    assert digests() == before


def test_review_decisions_reject_and_relabel(release_out, tmp_path, capsys):
    before = stats_of(release_out)
    train = [Record.from_json(line) for line in (release_out / "records" / "train.jsonl").read_text().splitlines()]
    dropped_id = next(r.sample_id for r in (Record.from_json(line) for line in
                                           (release_out / "rejected" / "balance.jsonl").read_text().splitlines()))
    first, second = train[0], train[1]
    new_class = "happy" if second.label_name != "happy" else "sad"
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"dataset": "by hand", "decisions": {
        first.sample_id: "reject", second.sample_id: f"relabel:{new_class}", dropped_id: "reject"}}))
    assert main(["release", str(release_out), "--decisions", str(decisions)]) == 0
    after = stats_of(release_out)
    review = after["stages"]["review"]
    assert (review["in"], review["kept"], review["dropped"]) == (before["released"]["total"],
                                                                  before["released"]["total"] - 1,
                                                                  {"reviewer_reject": 1})
    assert review["meta"] == {"source": "file", "dataset": "by hand", "decisions": 3, "rejected": 1,
                              "relabelled": 1, "not_released": 1}
    released = {r.sample_id: r for p in (release_out / "records").glob("*.jsonl")
                for r in map(Record.from_json, p.read_text().splitlines())}
    assert first.sample_id not in released and released[second.sample_id].label_name == new_class
    assert after["released"]["classes"][new_class] == before["released"]["classes"][new_class] + 1
    card = (release_out / "README.md").read_text()
    assert "## Human review" in card and "tagged 3: 1 rejected" in card
    assert "| review | " in card
    # read the shard itself: load_dataset keeps what it resolved for this folder earlier in the process
    rejected = datasets.Dataset.from_parquet(str(release_out / "data" / "rejected-00000-of-00001.parquet"))
    assert first.sample_id in rejected["sample_id"]

    assert main(["release", str(release_out), "--no-review"]) == 0
    assert stats_of(release_out)["released"] == before["released"]


def test_bad_review_decisions_change_nothing(release_out, tmp_path, capsys):
    before = (release_out / "stats.json").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"decisions": {"x": "relabel:joy"}}))
    assert main(["release", str(release_out), "--decisions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "relabel:joy" in err and "fix: use reject, or relabel: followed by one of neutral" in err
    assert (release_out / "stats.json").read_bytes() == before
    assert main(["release", str(tmp_path), "--no-review"]) == 2
    assert "holds no build" in capsys.readouterr().err


def test_hub_metadata_rules_catch_bad_values():
    problems = validate_metadata({"size_categories": ["n<2K"], "license": "free", "task_categories": ["fer"],
                                  "annotations_creators": ["robots"],
                                  "configs": [{"config_name": "a", "data_files": [{"path": "x"}]},
                                              {"config_name": "a", "data_files": "y"}]})
    text = "\n".join(problems)
    for needle in ("size_categories: 'n<2K'", "license: 'free'", "task_categories: 'fer'",
                   "annotations_creators: 'robots'", "unique", "configs: a:"):
        assert needle in text, needle
    assert validate_metadata({"license": "other", "license_name": "unknown", "license_link": "README.md#licence",
                              "size_categories": "n<1K"}) == []
    assert validate_card_text("no metadata") == ["the card has no YAML metadata block"]


def test_license_other_needs_a_name_and_a_link():
    """The Hub's card rules: 'license: other' comes with license_name and license_link."""
    assert validate_metadata({"license": "other"}) == [
        "license_name: 'license: other' needs it (the licence's id and a link to its text)",
        "license_link: 'license: other' needs it (the licence's id and a link to its text)"]
    assert [p.split(":")[0] for p in validate_metadata({"license": ["mit", "other"], "license_name": "x",
                                                        "license_link": " "})] == ["license_link"]
    assert validate_metadata({"license": "mit"}) == []


@pytest.mark.parametrize("provenance, licence, says", [
    ({"model": "builtin:tiny-sd", "revision": "builtin-1", "license": "mit"}, {"license": "mit"},
     "random, made by this tool"),
    ({"model": "org/sd", "revision": "abc", "license": "creativeml-openrail-m"},
     {"license": "creativeml-openrail-m"}, "declares in its model card"),
    ({"model": "org/sd", "revision": "abc", "license": None},
     {"license": "other", "license_name": "unknown", "license_link": "https://huggingface.co/org/sd"},
     "its model card names no licence"),
    ({"model": "org/sd", "revision": "abc", "license": "other"},
     {"license": "other", "license_name": "generator-model-licence", "license_link": "https://huggingface.co/org/sd"},
     "declares its own licence (`other`)"),
    ({"model": "/models/sd", "revision": "local", "license": "My Licence 1.0"},
     {"license": "other", "license_name": "my-licence-1.0", "license_link": "README.md#licence"},
     "not a Hub id (`My Licence 1.0`)"),
    (None, {"license": "other", "license_name": "unknown", "license_link": "README.md#licence"},
     "the images are copies of the source images"),
], ids=["builtin", "hub-id", "no-licence", "other", "local-free-text", "images-source"])
def test_card_licence_metadata_passes_the_hub_rules_and_the_card_explains_it(release_out, provenance, licence,
                                                                               says):
    from builder.run import load_build
    from cards.card import _licence_lines, card_licence, render_card

    assert card_licence(provenance) == licence and validate_metadata(licence) == []
    if provenance is None:  # an images source: its licence is the source images'
        section = _licence_lines(licence, None)[0]
    else:
        manifest, _ = load_build(release_out, verify=False)
        stats = stats_of(release_out)
        text = str(render_card(manifest, stats, {**stats["generator"], **provenance}))
        assert validate_card_text(text) == []
        meta = DatasetCard(text).data.to_dict()
        assert {k: meta.get(k) for k in ("license", "license_name", "license_link")} == {
            "license_name": None, "license_link": None, **licence}
        section = text.split("\n## Licence\n\n", 1)[1].split("\n\n", 1)[0]
    assert says in section and f"`license: {licence['license']}`" in section


def test_card_of_a_release_without_drops_says_it_has_no_rejected_config():
    """`datasets` cannot load a config with no rows, so a release with nothing dropped lists none, and says so."""
    from cards.card import _files_lines, hub_configs

    files = {"train": ["data/train-00000-of-00001.parquet"]}
    assert [c["config_name"] for c in hub_configs(files)] == ["default"]
    assert "No sample was dropped, so this release has no `rejected` config" in _files_lines(files)[0]
    with_rejects = {**files, "rejected": ["data/rejected-00000-of-00001.parquet"]}
    assert [c["config_name"] for c in hub_configs(with_rejects)] == ["default", "rejected"]
    assert 'load_dataset(REPO, "rejected")' in _files_lines(with_rejects)[0]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(seed=m["seed"] + 1), "has another fingerprint with this version of build-dataset"),
    (lambda m: m.update(colour="blue"), "does not load with this version of build-dataset (ValidationError)"),
], ids=["other-fingerprint", "unknown-field"])
def test_a_build_json_this_version_reads_differently_is_refused(release_out, tmp_path, capsys, edit, message):
    """As when a newer version of the tool would rebuild the recorded manifest into another dataset: releasing
    again is refused, naming the version that built it, and nothing is written."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(release_out, copy, ignore=shutil.ignore_patterns(".lock"))
    recorded = json.loads((copy / "build.json").read_text())
    edit(recorded["manifest"])
    (copy / "build.json").write_text(json.dumps(recorded))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["release", str(copy), "--no-review"]) == 2
    err = capsys.readouterr().err
    assert message in err and f"use the version that built it ({recorded['tool_version']})" in err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
