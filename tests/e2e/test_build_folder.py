"""The build folder under faults: lost image files, a full disk during the release, durable commits, a first
run that failed before committing anything, review decisions merged and checked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import yaml

from builder.cli import main
from builder.core.records import Record
from tests.conftest import DEMO, ROOT, dataset_rows


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main([str(DEMO), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def copy(demo_out, tmp_path):
    return shutil.copytree(demo_out, tmp_path / "out")


def files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_lost_image_files_are_made_again(copy, demo_out, capsys):
    """Images deleted from a committed shard: release refuses (never releases with samples missing), the build
    redoes only that shard and gives the same dataset."""
    images = sorted((copy / "shards" / "generate" / "00002" / "images").iterdir())
    for image in images[:2]:
        image.unlink()
    untouched = (copy / "shards" / "generate" / "00001" / "stats.json").stat().st_mtime_ns
    assert main(["release", str(copy), "--no-review"]) == 2
    assert "2 image file(s) of finished shards are gone (shards 2;" in capsys.readouterr().err
    assert main([str(DEMO), "--out", str(copy), "--no-progress"]) == 0
    assert "shard 2: 2 image file(s) of a finished shard are missing" in capsys.readouterr().err
    assert dataset_rows(copy) == dataset_rows(demo_out)
    assert (copy / "shards" / "generate" / "00001" / "stats.json").stat().st_mtime_ns == untouched


def test_a_full_disk_during_the_release_keeps_the_previous_release(copy, tmp_path):
    """A real fault: the release runs in a process whose file-size limit stops the parquet writes (EFBIG).
    Exit 2 with the folder and the fix; the previous release is byte-identical and loads; nothing is left
    half-written; the same command succeeds once the limit is lifted."""
    before = files(copy)
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
             "from builder.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", limit, "release", str(copy), "--no-review"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"error: {copy}: cannot write" in result.stderr and "file-size limit" in result.stderr
    assert "fix: free space" in result.stderr and "Traceback" not in result.stderr
    assert files(copy) == before
    assert not (copy / ".release-tmp").exists() and not (copy / ".release-old").exists()
    assert len(datasets.load_from_disk(str(copy / "hf"))["train"]) > 0
    assert main(["release", str(copy), "--no-review"]) == 0


def test_an_interrupted_swap_is_redone(copy, demo_out):
    """A release killed while swapping outputs leaves no marker and a set-aside folder: the next run redoes it."""
    (copy / ".release.json").unlink()
    (copy / ".release-old").mkdir()
    (copy / "hf").rename(copy / ".release-old" / "hf")
    (copy / ".release-tmp").mkdir()
    assert main([str(DEMO), "--out", str(copy), "--no-progress"]) == 0
    assert dataset_rows(copy) == dataset_rows(demo_out)
    assert not (copy / ".release-old").exists() and not (copy / ".release-tmp").exists()


def test_commits_flush_files_and_folders_before_the_rename(tmp_path, monkeypatch):
    """Every file of a shard and of a release is fsynced before its folder is renamed into place, and the
    parent folder after."""
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", os.fspath(src)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    out = tmp_path / "out"
    assert main([str(DEMO), "--out", str(out), "--no-progress"]) == 0
    synced = {path for kind, path in events if kind == "fsync"}
    renames = [path for kind, path in events if kind == "rename"]
    staging = [p for p in renames if p.startswith(str(out / "shards")) and "/.tmp-" in p]
    assert len(staging) == 8, "4 shards x 2 stages"
    for folder in staging:
        at = events.index(("rename", folder))
        before = {path for kind, path in events[:at] if kind == "fsync"}
        final = out / "shards" / folder.split("/")[-2] / folder.split("/.tmp-")[1][:5]
        expected = {folder + "/" + p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
        assert expected and expected <= before, "every file of the shard"
        assert folder in before, "the staging folder itself"
    for name in ("stats.json", "README.md", "hf/dataset_dict.json"):
        assert str(out / ".release-tmp" / name) in synced
    assert str(out / "..release.json.tmp") in synced, "the marker, before its rename"


def test_a_first_run_that_committed_nothing_does_not_lock_the_folder(tmp_path, write_manifest, capsys):
    """half precision on a CPU fails at the generator's set-up, after build.json was written: the fixed manifest
    (another fingerprint) reuses the folder instead of being refused as 'a different manifest'."""
    out = tmp_path / "out"
    broken = write_manifest({"generator": {"dtype": "float16", "device": "cpu"}}, name="broken.yaml")
    assert main([str(broken), "--out", str(out), "--no-progress"]) == 2
    assert "not supported on CPU" in capsys.readouterr().err
    assert (out / "build.json").is_file() and not list((out / "shards").glob("*/0*"))
    fixed = write_manifest({"generator": {"dtype": "float32", "device": "cpu"}}, name="fixed.yaml")
    assert main([str(fixed), "--out", str(out), "--no-progress"]) == 0
    assert "replacing the record of an earlier run that committed nothing" in capsys.readouterr().err
    assert main([str(broken), "--out", str(out), "--no-progress"]) == 2
    assert "holds a build of a different manifest" in capsys.readouterr().err, "once work is committed it counts"


def released(out):
    return {r.sample_id: r for p in (out / "records").glob("*.jsonl") for r in map(Record.from_json,
                                                                                  p.read_text().splitlines())}


def test_decisions_files_merge_and_relabel_without_labelling(copy, tmp_path, capsys):
    """Two decisions files merge; the demo has no labelling and a relabel still sets the released label (and
    the dataset's class column); the card never prints the local path of a decisions file."""
    ids = sorted(released(copy))
    target = released(copy)[ids[1]]
    new_class = "happy" if target.label_name != "happy" else "sad"
    first, second = tmp_path / "my-secret-folder-a.json", tmp_path / "my-secret-folder-b.json"
    first.write_text(json.dumps({"decisions": {ids[0]: "reject"}}))
    second.write_text(json.dumps({"decisions": {ids[0]: "reject", ids[1]: f"relabel:{new_class}"}}))
    assert main(["release", str(copy), "--decisions", str(first)]) == 0
    assert main(["release", str(copy), "--decisions", str(second)]) == 0
    review = json.loads((copy / "review.json").read_text())
    assert review == {"source": "file", "dataset": None, "decisions": {ids[0]: "reject",
                                                                       ids[1]: f"relabel:{new_class}"}}
    after = released(copy)
    assert ids[0] not in after and after[ids[1]].label_name == new_class
    dd = datasets.load_from_disk(str(copy / "hf"))
    row = next(r for split in dd.values() for r in split if r["sample_id"] == ids[1])
    assert dd["train"].features["label"].int2str(row["label"]) == new_class
    card = (copy / "README.md").read_text()
    assert "(a decisions file) and tagged 2: 1 rejected" in card and "my-secret-folder" not in card
    assert "my-secret-folder" not in (copy / "stats.json").read_text()


def test_fiftyone_style_review_file_keeps_its_dataset_name(copy, capsys):
    """review.json written by the FiftyOne path (source fiftyone) is shown as such on the card."""
    from curation.whole_set.review import write_review

    ids = sorted(released(copy))
    write_review(copy, {ids[0]: "reject"}, "fer-synth/demo-1234", "fiftyone")
    from builder.run import release_again

    stats = release_again(copy, log=lambda m: None)
    assert stats["stages"]["review"]["meta"]["source"] == "fiftyone"
    assert "in FiftyOne (dataset `fer-synth/demo-1234`)" in (copy / "README.md").read_text()


def test_yaml_of_decisions_is_not_executed(copy, tmp_path):
    """A decisions file is JSON data; a YAML tag or Python in it is just an unreadable file."""
    path = tmp_path / "d.json"
    path.write_text(yaml.safe_dump({"decisions": "!!python/object/apply:os.system ['touch x']"}))
    assert main(["release", str(copy), "--decisions", str(path)]) == 2
    assert not (tmp_path / "x").exists()
