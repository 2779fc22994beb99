"""FiftyOne review of a release: the dataset, its views, the reviewer's tags read back, and the App in Chromium.

Two real builds: the demo (tiny generator; targets, AUs, prompts, axes, dedupe rejects) and real photos
labelled by the real FER2013 expert plus a second expert that disagrees (the same weights with shuffled
labels), with the identity-leak gate, dedupe and identities. The FiftyOne database lives in this test
session's temporary folder (conftest.py), started by ``cards.review_app`` like the command does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from builder.cli import main
from builder.core.errors import UserError
from builder.core.records import Record, read_jsonl
from tests.conftest import ROOT, deep_update
from tests.fixtures.browser import Chromium, find_chromium, why_no_chromium
from tests.fixtures.people import THRESHOLD

ARTIFACTS = ROOT / "tests" / "artifacts"
pytestmark = [pytest.mark.filterwarnings("ignore:Passing a class to strawberry.scalar:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")]


def records(out: Path) -> tuple[dict[str, tuple[Record, str | None]], list[Record]]:
    """sample_id -> (record, split or None) over records/ and rejected/, and the rejected records."""
    found = {r.sample_id: (r, p.stem) for p in (out / "records").glob("*.jsonl") for r in read_jsonl(p)}
    rejected = [r for p in (out / "rejected").glob("*.jsonl") for r in read_jsonl(p)]
    found.update({r.sample_id: (r, None) for r in rejected})
    return found, rejected


def by_id(view) -> dict:
    return {s.sample_id: s for s in view}


@pytest.fixture(scope="module")
def database():
    """This module's FiftyOne database (started in the session's temporary folder), stopped at the end."""
    import psutil

    from cards.review_app import connect, stop_database

    db = connect()
    assert db.started_here and Path(os.environ["FIFTYONE_DATABASE_DIR"]).resolve() == db.folder
    yield db
    stop_database()
    assert not db.process.is_running() or db.process.status() == psutil.STATUS_ZOMBIE


def build(work: Path, manifest: dict) -> Path:
    """Write ``manifest`` into ``work`` and build it into ``work/out``."""
    path = work / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert main([str(path), "--out", str(work / "out"), "--no-progress"]) == 0
    return work / "out"


@pytest.fixture(scope="module")
def demo_build(demo_data, tmp_path_factory) -> Path:
    """The demo manifest with perceptual-hash dedupe loose enough to find a few near copies among its images."""
    work = tmp_path_factory.mktemp("demo")
    manifest = deep_update(demo_data, {"name": "review-demo", "curation": {"dedupe": {"exact": True,
                                                                                        "near_distance": 20}}})
    return build(work, manifest)


@pytest.fixture(scope="module")
def demo_review(demo_build, database):
    from cards.review import review_dataset

    return review_dataset(demo_build, log=lambda message: None)


def shuffled_expert(folder: Path) -> Path:
    """The real mini-Xception with its label order reversed: a second expert that disagrees for a known reason."""
    from safetensors.torch import save_file

    from builder.manifest.label_maps import LABEL_MAPS
    from builder.models.store import load_fer_classifier

    reference = load_fer_classifier("mini-xception-fer2013")
    save_file({k: v.contiguous() for k, v in reference.module.state_dict().items()}, folder / "mx.safetensors")
    config = {"architecture": "builder.models.fer.mini_xception:MiniXception", "init_args": {"num_classes": 7},
              "weights": "mx.safetensors", "labels": list(reversed(LABEL_MAPS["fer2013"])),
              "input": {"size": 64, "channels": 1, "mean": [0.5], "std": [0.5]}}
    path = folder / "shuffled.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def photo_build(people, reference, tmp_path_factory) -> Path:
    """Real photos: six people, a near copy of g2 (dedupe), the portrait (in the reference index: a leak), the
    group photo (several faces), a grey picture and a broken file; two experts; leak gate, dedupe, identities."""
    from PIL import Image

    from builder.example_faces import near_copy

    work = tmp_path_factory.mktemp("photos")
    folder = work / "photos"
    folder.mkdir()
    for name in ("g2", "g4", "g6", "astronaut", "portrait"):
        people[name].save(folder / f"{name}.png")
    near_copy(people["g2"], "jpeg").save(folder / "g2-copy.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(folder / "grey.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    import insightface

    shutil.copy(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg", folder / "group.jpg")
    manifest = yaml.safe_load((ROOT / "manifests" / "label-photos.yaml").read_text())
    manifest.update(name="review-photos", images={"folder": str(folder)},
                    output={"splits": {"train": 0.5, "test": 0.5}, "shard_size": 4})
    manifest["labelling"].update(experts=[{"name": "fer2013", "model": "mini-xception-fer2013"},
                                          {"name": "shuffled", "model": str(shuffled_expert(work))}],
                                 combine="weighted_vote", min_confidence=0.4, min_agreement=0.0)
    manifest["curation"].update(identity_leak={"index": str(reference["index"]), "threshold": THRESHOLD},
                                identities={"threshold": 0.93})
    return build(work, manifest)


@pytest.fixture(scope="module")
def photo_review(photo_build, database):
    from cards.review import review_dataset

    return review_dataset(photo_build, log=lambda message: None)


def test_generated_build_fields_tags_and_views(demo_build, demo_review):
    from builder.manifest.au_sets import AU_SETS
    from cards.review import build_manifest

    ds, out = demo_review, demo_build.resolve()
    manifest, fingerprint = build_manifest(out)
    assert ds.name == f"fer-synth/review-demo-{fingerprint[:8]}" and ds.persistent
    found, rejected = records(out)
    samples = by_id(ds)
    assert set(samples) == set(found) and len(ds) == len(found) == 28
    assert ds.info["au_names"] == list(AU_SETS["disfa12"]) and ds.info["label_names"] == list(manifest.labels.names)
    assert ds.info["fingerprint"] == fingerprint
    flat = ds.get_field_schema(flat=True)
    assert all(type(flat[f"au.{n}"]).__name__ == "FloatField" for n in ds.info["au_names"])  # filterable in the App
    for sid, (record, split) in found.items():
        s = samples[sid]
        assert s.filepath == str(out / record.image) and Path(s.filepath).is_file()
        assert (s.split, s.index, s.label_name, s.prompt, s.seed) == (split, record.index, record.label_name,
                                                                      record.prompt, record.seed)
        assert s.ground_truth.label == record.label_name and s.predictions is None
        assert [s.au[n] for n in ds.info["au_names"]] == pytest.approx(record.au)  # named, like the release's
        assert s.pixel_std == pytest.approx(record.scores["pixel_std"])
        assert {k: s[k] for k in record.attributes} == record.attributes
        if record.drop:
            assert s.tags == ["rejected", f"rejected:{record.drop.stage}"]
            assert (s.drop_stage, s.drop_reason, s.drop_detail) == (record.drop.stage, record.drop.reason,
                                                                    record.drop.detail)
        else:
            assert s.tags == [] and s.drop_stage is None
    dupes = [r for r in rejected if r.drop.stage == "dedupe"]
    assert dupes, "the fixture should find near copies"
    for r in dupes:
        keeper = samples[r.sample_id].duplicate_of
        assert keeper != r.sample_id and re.search(rf"\b{re.escape(keeper)}\b", r.drop.detail)
        assert found[keeper][1] is not None, "the copy that stayed is released"
        assert samples[r.sample_id].duplicate_group == samples[keeper].duplicate_group == keeper
    assert {s.duplicate_group for s in samples.values() if s.duplicate_group} == {samples[r.sample_id].duplicate_of
                                                                                 for r in dupes}

    names = manifest.labels.names
    assert set(ds.list_saved_views()) == {"rejected"} | {f"class-{n}" for n in names}  # no labelling, no leak gate
    assert set(ds.load_saved_view("rejected").values("sample_id")) == {r.sample_id for r in rejected}
    for name in names:
        assert sorted(ds.load_saved_view(f"class-{name}").values("sample_id")) == sorted(
            sid for sid, (r, _) in found.items() if r.label_name == name)


def test_review_again_is_idempotent_and_keeps_reviewer_tags(demo_build, demo_review):
    from cards.review import review_dataset

    ds = demo_review
    before = dict(zip(*ds.values(["sample_id", "id"])))
    released = sorted(sid for sid, split in zip(*ds.values(["sample_id", "split"])) if split)
    a, b = released[0], released[1]
    ds.select_by("sample_id", [a]).tag_samples(["reject", "looked-at"])
    ds.select_by("sample_id", [b]).tag_samples(["relabel:happy", "rejected:stale"])  # a stale automatic tag
    try:
        again = review_dataset(demo_build, log=lambda message: None)
        assert again.name == ds.name and len(again) == len(before)
        assert dict(zip(*again.values(["sample_id", "id"]))) == before, "updated in place, nothing re-added"
        tags = dict(zip(*again.values(["sample_id", "tags"])))
        assert sorted(tags[a]) == ["looked-at", "reject"] and tags[b] == ["relabel:happy"]
        assert len(again.load_saved_view("rejected")) == sum("rejected" in t for t in tags.values())
    finally:
        ds.untag_samples(["reject", "looked-at", "relabel:happy"])


def test_review_of_a_dataset_with_the_old_au_list_declares_named_aus(demo_build, demo_review):
    """A dataset an older review made holds ``au`` as a list of floats; reviewing again turns it into named AUs."""
    import fiftyone as fo

    from cards.review import build_manifest, review_dataset

    manifest, fingerprint = build_manifest(demo_build.resolve())
    old = fo.Dataset("fer-synth/old-au-list")
    try:
        old.info["fingerprint"] = fingerprint
        old.save()
        old.add_sample_field("au", fo.ListField, subfield=fo.FloatField)
        record = next(iter(records(demo_build.resolve())[0].values()))[0]
        old.add_sample(fo.Sample(filepath=str(demo_build.resolve() / record.image), sample_id=record.sample_id,
                                 au=[float(v) for v in record.au]))
        again = review_dataset(demo_build, name=old.name, log=lambda message: None)
        assert isinstance(again.get_field("au"), fo.EmbeddedDocumentField)
        sample = again.select_by("sample_id", [record.sample_id]).first()
        assert [sample.au[n] for n in manifest.aus.names] == pytest.approx(record.au)
    finally:
        fo.delete_dataset("fer-synth/old-au-list")


def test_collect_review_reads_the_tags_into_review_json(demo_build, demo_review):
    from cards.review import collect_review
    from curation.whole_set.review import ReviewStage

    ds, out = demo_review, demo_build
    ids = sorted(ds.values("sample_id"))
    a, b, c = ids[3], ids[7], ids[11]
    ds.select_by("sample_id", [a]).tag_samples("reject")
    ds.select_by("sample_id", [b]).tag_samples("relabel:happy")
    ds.select_by("sample_id", [c]).tag_samples("looked-at")  # not a decision
    messages = []
    try:
        decisions = collect_review(out, log=messages.append)
        assert decisions == {a: "reject", b: "relabel:happy"}
        written = json.loads((out / "review.json").read_text())
        assert written == {"source": "fiftyone", "dataset": ds.name, "decisions": {a: "reject", b: "relabel:happy"}}
        assert list(written["decisions"]) == sorted(written["decisions"])
        stage = ReviewStage.from_file(out / "review.json", ds.info["label_names"])  # what `release` reads
        assert stage.decisions == {a: None, b: ds.info["label_names"].index("happy")}

        ds.select_by("sample_id", [a]).tag_samples("relabel:sad")  # reject and relabel: reject wins, with a warning
        assert collect_review(out, log=messages.append)[a] == "reject"
        assert any("warning" in m and a in m and "rejected" in m for m in messages)

        ds.select_by("sample_id", [c]).tag_samples("relabel:joy")
        with pytest.raises(UserError) as err:
            collect_review(out, log=messages.append)
        text = err.value.render()
        assert c in text and "'joy' is not a class" in text and "neutral, happy, sad" in text
        assert json.loads((out / "review.json").read_text())["decisions"] == {a: "reject", b: "relabel:happy"}
    finally:
        ds.untag_samples(["reject", "relabel:happy", "relabel:sad", "relabel:joy", "looked-at"])
        (out / "review.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match="no FiftyOne dataset 'nope'"):
        collect_review(out, name="nope")


def test_tags_set_in_fiftyone_change_the_released_dataset_and_card(demo_build, demo_review):
    """The round trip: tag in FiftyOne, `build-dataset release OUT`, and the release follows the tags."""
    import datasets

    ds, out = demo_review, demo_build
    before = json.loads((out / "stats.json").read_text())
    released = {r.sample_id: r for p in sorted((out / "records").glob("*.jsonl")) for r in read_jsonl(p)}
    ids = sorted(released)
    gone, moved = ids[0], next(i for i in ids[1:] if released[i].label_name != "happy")
    old_class = released[moved].label_name
    ds.select_by("sample_id", [gone]).tag_samples("reject")
    ds.select_by("sample_id", [moved]).tag_samples("relabel:happy")
    try:
        assert main(["release", str(out)]) == 0
        after = json.loads((out / "stats.json").read_text())
        assert after["released"]["total"] == before["released"]["total"] - 1
        assert after["released"]["classes"]["happy"] == before["released"]["classes"]["happy"] + 1
        assert after["released"]["classes"][old_class] == before["released"]["classes"][old_class] - 1 - (
            released[gone].label_name == old_class)
        rows = {r["sample_id"]: r for split in datasets.load_from_disk(str(out / "hf")).values()
                for r in split.remove_columns("image")}
        names = datasets.load_from_disk(str(out / "hf"))["train"].features["label"].names
        assert gone not in rows and names[rows[moved]["label"]] == "happy"
        card = (out / "README.md").read_text()
        assert f"dataset `{ds.name}`) and tagged 2: 1 rejected" in card and "1 relabelled" in card
        assert f"| happy | {names.index('happy')} |" in card
        contents = card.split("## Contents", 1)[1].split("\n\n")[1]
        happy_row = next(line for line in contents.splitlines() if line.startswith("| happy |"))
        assert happy_row.rstrip(" |").endswith(str(after["released"]["classes"]["happy"]))
    finally:
        ds.untag_samples(["reject", "relabel:happy"])
        assert main(["release", str(out), "--no-review"]) == 0
    assert json.loads((out / "stats.json").read_text())["released"] == before["released"]


def test_photo_build_predictions_experts_leak_and_views(photo_build, photo_review):
    ds, out = photo_review, photo_build.resolve()
    found, rejected = records(out)
    samples = by_id(ds)
    assert set(samples) == set(found)
    names = ds.info["label_names"]
    assert ds.info["labellers"] == {"fer2013": "expert_fer2013", "shuffled": "expert_shuffled"}
    labelled = [sid for sid, (r, _) in found.items() if r.labelling]
    assert len(labelled) >= 5
    for sid in labelled:
        record, s = found[sid][0], samples[sid]
        lab = record.labelling
        assert s.ground_truth is None, "existing images have no target class"
        assert (s.predictions.label, s.predictions.confidence) == (lab["final"], pytest.approx(lab["confidence"]))
        tops = set()
        for name, probs in lab["experts"].items():
            expert = s[f"expert_{name}"]
            assert expert.label == names[int(np.argmax(probs))] and expert.confidence == pytest.approx(max(probs))
            tops.add(expert.label)
        assert s.disagreement == (len(tops) > 1 or lab["agreement"] < 1)
        assert s.disposition == lab["disposition"] and s.agreement == pytest.approx(lab["agreement"])
        assert s.face.label == "face" and 0 <= s.face.bounding_box[0] < 1 and len(s.face_landmarks.keypoints[0].points) == 5
        assert s.face_score == pytest.approx(record.scores["face_score"])
    # the tags and fields of every stage's rejects
    reasons = {(r.drop.stage, r.drop.reason) for r in rejected}
    assert {("ingest", "unreadable_image"), ("integrity", "blank_image"), ("faces", "multiple_faces"),
            ("identity_leak", "identity_leak"), ("dedupe", "near_duplicate")} <= reasons
    broken = next(r for r in rejected if r.drop.stage == "ingest")
    assert samples[broken.sample_id].tags == ["rejected", "rejected:ingest"]
    leak = next(r for r in rejected if r.drop.stage == "identity_leak")
    s = samples[leak.sample_id]
    assert s.nearest_reference == leak.face["nearest_reference"]["id"] == "celebs:portrait.png"
    assert s.leak_similarity == pytest.approx(leak.scores["leak_similarity"]) and s.leak_similarity >= THRESHOLD
    copy = next(r for r in rejected if r.drop.stage == "dedupe")
    assert samples[copy.sample_id].duplicate_of in copy.drop.detail
    assert found[samples[copy.sample_id].duplicate_of][0].source == "g2.png"
    assert all(samples[sid].identity for sid, (r, split) in found.items() if split)

    # saved views select what they say
    views = ds.info["views"]
    assert {"low-confidence", "disagreement", "high-leak-similarity", "rejected"} <= set(views)
    low = {sid for sid in labelled if found[sid][0].labelling["confidence"] < 0.4 + 0.1}
    assert low and set(ds.load_saved_view("low-confidence").values("sample_id")) == low
    assert set(ds.load_saved_view("disagreement").values("sample_id")) == {sid for sid in labelled
                                                                          if samples[sid].disagreement}
    assert ds.load_saved_view("disagreement"), "the shuffled expert disagrees with the real one"
    sims = {sid: r.scores["leak_similarity"] for sid, (r, _) in found.items() if r.scores.get("leak_similarity",
                                                                                               -1) >= 0}
    top = sorted(sims.values())[min(len(sims) - 1, int(len(sims) * 0.9))]
    cut = min(top, 0.9 * THRESHOLD)
    high = set(ds.load_saved_view("high-leak-similarity").values("sample_id"))
    assert high == {sid for sid, v in sims.items() if v >= cut} and leak.sample_id in high
    for name in names:
        assert set(ds.load_saved_view(f"class-{name}").values("sample_id")) == {
            sid for sid, (r, _) in found.items() if r.label_name == name}


def test_opencv_is_the_headless_build():
    """insightface and fiftyone install two OpenCV wheels into one cv2/; `make install` reinstalls the headless
    one last, so cv2 is always the build without GUI libraries (and insightface still works with it)."""
    import base64
    import hashlib
    from importlib.metadata import distribution

    import cv2
    from insightface.utils import face_align

    so = next(Path(cv2.__file__).parent.glob("cv2*.so"))
    digest = base64.urlsafe_b64encode(hashlib.sha256(so.read_bytes()).digest()).rstrip(b"=").decode()
    headless = distribution("opencv-python-headless")
    assert f"cv2/{so.name},sha256={digest}" in headless.read_text("RECORD")
    assert headless.version == distribution("opencv-python").version  # constraints.txt pins both alike
    assert re.search(r"GUI:\s+NONE", cv2.getBuildInformation())
    assert face_align.norm_crop(np.zeros((112, 112, 3), np.uint8), face_align.arcface_dst).shape == (112, 112, 3)


def mongods(folder: Path) -> list:
    """mongod processes serving ``folder``."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if (p.info["name"] or "").startswith("mongod") and str(folder.resolve()) in cmd:
            out.append(p)
    return out


def review_env(tmp_path: Path) -> dict:
    """The environment of a `build-dataset review` subprocess: its own database folder (so it starts and stops
    its own mongod, apart from this module's)."""
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(tmp_path / "db"), "PYTHONUNBUFFERED": "1"}
    env.pop("FIFTYONE_DATABASE_URI", None)  # set in this process by the module's database
    return env


def test_review_command_without_app_and_on_error_leaves_no_process(demo_build, run_cli, tmp_path):
    env = review_env(tmp_path)
    done = run_cli("review", demo_build, "--no-launch", env=env)
    assert done.returncode == 0, done.stderr
    assert f"FiftyOne database: {(tmp_path / 'db').resolve()}" in done.stderr
    assert "28 samples (28 added" in done.stderr and "stopped the FiftyOne database" in done.stderr
    assert not mongods(tmp_path / "db")
    again = run_cli("review", demo_build, "--no-launch", "--name", "other-build", env=env)  # not this build's name
    assert again.returncode == 0 and "28 added" in again.stderr
    other = demo_build.parent / "copy"
    shutil.copytree(demo_build, other)
    build = json.loads((other / "build.json").read_text())
    build["fingerprint"] = "0" * 64
    (other / "build.json").write_text(json.dumps(build))
    (other / ".release.json").write_text(json.dumps({"fingerprint": "0" * 64}))
    failed = run_cli("review", other, "--no-launch", "--name", "other-build", env=env)  # an error after the DB start
    assert failed.returncode == 2 and "belongs to another build" in failed.stderr
    assert "stopped the FiftyOne database" in failed.stderr and not mongods(tmp_path / "db")


class ReviewProcess:
    """`build-dataset review OUT --port 0` in the background: waits for its App line, remembers its processes."""

    def __init__(self, out: Path, env: dict, timeout: float = 300):
        import psutil

        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "review", str(out), "--port", "0"],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"review exited ({self.proc.wait()}) before serving:\n{''.join(self.lines)}")
            self.lines.append(line)
            if line.startswith("App: "):
                break
            if time.perf_counter() - started > timeout:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=60)
                raise AssertionError("no App line:\n" + "".join(self.lines))
        self.seconds = time.perf_counter() - started
        self.url = line.split()[1]
        self.app_seconds = float(re.search(r"answered after ([0-9.]+) s", line).group(1))
        self.family = psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig) -> int:
        import psutil

        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for p in [psutil.Process(self.proc.pid), *self.family]:
                p.kill()
            raise
        self.lines += self.proc.stdout.readlines()
        _, alive = psutil.wait_procs(self.family, timeout=1)
        assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
        return rc


def test_review_command_stops_app_and_database_on_sigterm(demo_build, tmp_path):
    review = ReviewProcess(demo_build, review_env(tmp_path))
    try:
        cmdlines = [" ".join(p.cmdline()) for p in review.family]
        assert any("mongod" in c for c in cmdlines) and any("--51-service server" in c for c in cmdlines)
        import urllib.request

        with urllib.request.urlopen(review.url, timeout=30) as response:
            assert response.status == 200
    finally:
        rc = review.stop(signal.SIGTERM)
    assert rc == 0, "".join(review.lines)
    assert not mongods(tmp_path / "db")


def test_review_app_renders_the_samples_in_chromium(demo_build, tmp_path, capsys):
    """The issue's acceptance: the review command's App, in real headless Chromium, shows the samples grid."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(why_no_chromium())
    import psutil

    review = ReviewProcess(demo_build, review_env(tmp_path))
    browser = None
    try:
        started = time.perf_counter()
        browser = Chromium(chromium)
        browser.goto(review.url)
        tiles = browser.wait_for("document.querySelectorAll('[data-cy=fo-grid] [data-cy=looker]').length", 120)
        counts = browser.wait_for("(document.querySelector('[data-cy=entry-counts]') || {}).innerText", 60)
        assert counts.strip() == "28 samples" and tiles >= 20
        name = re.search(r"dataset '([^']+)'", review.lines[-1]).group(1)
        assert name.startswith("fer-synth/review-demo-")
        assert browser.evaluate("decodeURIComponent(location.pathname)") == f"/datasets/{name}"
        browser.evaluate("[...document.querySelectorAll('button')].filter(b => b.innerText == 'Dismiss')"
                         ".forEach(b => b.click())")  # FiftyOne's advert, so the grid is visible
        time.sleep(1)
        shot = browser.screenshot(ARTIFACTS / "review-app.png")
        assert shot.stat().st_size > 20_000
        with capsys.disabled():  # shown in every run: where the screenshot is, and how long the App took
            print(f"\nApp answered after {review.app_seconds:.1f} s (command to App line {review.seconds:.1f} s); "
                  f"grid rendered in Chromium after {time.perf_counter() - started:.1f} s; screenshot: {shot}")
    finally:
        family = []
        if browser is not None:
            try:
                family = [browser.process, *browser.process.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            browser.close()
        rc = review.stop(signal.SIGINT)  # Ctrl-C
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert rc == 0, "".join(review.lines)
    assert "stopped the FiftyOne database" in "".join(review.lines)
    assert not mongods(tmp_path / "db")
