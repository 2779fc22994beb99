"""Resumption: a build killed with SIGKILL at any point and rerun equals an uninterrupted build."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.cli import main
from tests.conftest import ROOT, dataset_rows, stage_counts

pytestmark = pytest.mark.slow

CHANGES = {"name": "resume", "labels": {"counts": 5}, "output": {"shard_size": 5}}  # 35 samples, 7 shards


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, demo_data):
    import yaml

    from tests.conftest import deep_update

    path = tmp_path_factory.mktemp("resume") / "resume.yaml"
    path.write_text(yaml.safe_dump(deep_update(demo_data, CHANGES), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    return out


def start(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress",
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the build finished (rc {proc.returncode}) before the kill point: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kill point never reached")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def done_shards(out: Path, stage: str) -> int:
    return len([p for p in (out / "shards" / stage).glob("0*")]) if (out / "shards" / stage).exists() else 0


def staging(out: Path, stage: str) -> bool:
    return any((out / "shards" / stage).glob(".tmp-*")) if (out / "shards" / stage).exists() else False


KILL_POINTS = {
    # inside generation of a shard, after at least one shard was committed
    "mid-generation": lambda out: done_shards(out, "generate") >= 2 and staging(out, "generate"),
    # inside the integrity stage of a shard whose images are already committed
    "mid-integrity": lambda out: done_shards(out, "integrity") >= 3 and staging(out, "integrity"),
    # while the dataset, card and stats are being written
    "mid-release": lambda out: (out / ".release-tmp").exists(),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_build_resumes_to_the_same_dataset(point, manifest, reference, tmp_path):
    out = tmp_path / "out"
    kill_when(start(manifest, out), lambda: KILL_POINTS[point](out))
    assert not (out / ".release.json").exists(), "the kill landed before the build finished"

    rerun = subprocess.run([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    expected, got = dataset_rows(reference), dataset_rows(out)
    assert list(got) == list(expected)
    for split in expected:
        assert [r["sample_id"] for r in got[split]] == [r["sample_id"] for r in expected[split]]
        for a, b in zip(got[split], expected[split]):
            assert a == b, f"{split} {a['sample_id']} differs"
    assert stage_counts(out) == stage_counts(reference), "stats stay correct after a relaunch"
    for stage in ("generate", "integrity"):
        assert (out / "rejected" / f"{stage}.jsonl").read_text() == (reference / "rejected" / f"{stage}.jsonl").read_text()
    assert not list(out.rglob(".tmp-*")) and not (out / ".release-tmp").exists()


def test_interrupted_release_is_redone_in_process(manifest, reference, tmp_path):
    """A release whose outputs were half moved into place (no marker) is rebuilt whole."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / ".release.json").unlink()
    shutil.rmtree(out / "hf")
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert dataset_rows(out) == dataset_rows(reference)


def test_ctrl_c_exits_130_and_keeps_finished_shards(manifest, reference, tmp_path):
    out = tmp_path / "out"
    proc = start(manifest, out)
    deadline = time.monotonic() + 240
    while not (done_shards(out, "generate") >= 2 and staging(out, "generate")):
        assert proc.poll() is None and time.monotonic() < deadline, "interrupt point never reached"
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert rc == 130, err
    assert "interrupted: finished shards are kept" in err
    assert done_shards(out, "generate") >= 2  # a staging folder may remain; the next run deletes it
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    assert dataset_rows(out) == dataset_rows(reference)


def test_model_error_on_resume_loses_nothing(tmp_path, tiny_model, write_manifest, capsys):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "model")
    manifest = write_manifest({"generator": {"model": str(model)}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    shutil.rmtree(out / "shards" / "generate" / "00003")  # as if the run had stopped before shard 3
    shutil.rmtree(out / "shards" / "integrity" / "00003")
    shutil.rmtree(model)
    kept = {p: p.read_bytes() for p in (out / "shards").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"generator.model: '{model}' does not exist" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (out / "shards").rglob("*") if p.is_file()} == kept


def _unfinish_last_shard(out: Path) -> None:
    import shutil

    for stage in ("generate", "integrity"):
        shutil.rmtree(out / "shards" / stage / "00006")
    (out / ".release.json").unlink()


def test_resume_with_a_smaller_batch(manifest, reference, tmp_path, write_manifest):
    """Lowering generator.batch_size (after a GPU OOM) is allowed on resume and changes no sample."""
    import io
    import shutil

    import numpy as np
    import yaml
    from PIL import Image

    out = shutil.copytree(reference, tmp_path / "out")
    _unfinish_last_shard(out)
    data = yaml.safe_load(manifest.read_text())
    data["generator"]["batch_size"] = 1
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main([str(smaller), "--out", str(out), "--no-progress"]) == 0
    expected, got = dataset_rows(reference), dataset_rows(out)
    for split in expected:
        for a, b in zip(got[split], expected[split], strict=True):
            pixels = [np.asarray(Image.open(io.BytesIO(r["image"])), dtype=int) for r in (a, b)]
            assert np.abs(pixels[0] - pixels[1]).max() <= 1, "float rounding across batch sizes only (measured: 1)"
            assert {**a, "image": None} == {**b, "image": None}


def test_changed_model_files_are_refused_before_any_work(tmp_path, tiny_model, write_manifest, capsys):
    import shutil

    import torch
    from diffusers import StableDiffusionPipeline

    model = shutil.copytree(tiny_model, tmp_path / "model")
    manifest = write_manifest({"generator": {"model": str(model)}})
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 0
    for stage in ("generate", "integrity"):
        shutil.rmtree(out / "shards" / stage / "00003")
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    with torch.no_grad():
        pipe.unet.conv_out.bias += 0.1  # someone retrained or replaced the checkpoint
    pipe.save_pretrained(model)
    capsys.readouterr()
    assert main([str(manifest), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stage 'generate' is set up differently from the shards already in" in err
    assert "weights_sha256" in err and "fix: resume where the same model files" in err
    assert not (out / "shards" / "generate" / "00003").exists()


def test_resumed_with_another_thread_default_gives_the_same_bytes(manifest, tmp_path):
    """CPU pixels depend on torch's thread count. A build started with --threads 1, killed, and resumed by a
    process whose default is another count applies the recorded 1 and equals an uninterrupted --threads 1 build;
    --threads on the resume overrides it, with a warning."""
    reference = tmp_path / "reference"
    assert main([str(manifest), "--out", str(reference), "--no-progress", "--threads", "1"]) == 0
    out = tmp_path / "out"
    kill_when(start(manifest, out, "--threads", "1"), lambda: KILL_POINTS["mid-generation"](out))
    assert json.loads((out / "build.json").read_text())["threads"] == 1
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    rerun = subprocess.run([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert dataset_rows(out) == dataset_rows(reference)
    ran = {json.loads(p.read_text())["runtime"]["threads"] for p in (out / "shards").glob("*/0*/stats.json")}
    assert ran == {1}
    result = subprocess.run([sys.executable, "-m", "builder.cli", str(manifest), "--out", str(out), "--no-progress",
                             "--threads", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--threads 2 differs from the 1 threads this build started with" in result.stderr
