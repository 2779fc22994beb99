"""Installing only to generate needs none of FiftyOne, InsightFace, dlib, FAISS, Ray or scikit-learn: a demo
build runs in a process where they cannot be imported, and each feature that needs one names its extra."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
import yaml

from tests.conftest import DEMO, ROOT

pytestmark = pytest.mark.slow

BLOCKED = ("fiftyone", "insightface", "dlib", "_dlib_pybind11", "face_recognition_models", "faiss", "ray",
           "sklearn", "scikit_learn", "onnxruntime", "psutil")
"""The extras' packages (and their dist-info): absent from the environment these tests run in."""


@pytest.fixture(scope="module")
def site_without_extras(tmp_path_factory) -> Path:
    """site-packages as links, minus every package of an extra (and the editable install's hook: the source
    tree goes on PYTHONPATH instead)."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path_factory.mktemp("site")
    for entry in site.iterdir():
        name = entry.name.lower()
        if entry.suffix == ".pth" or name.startswith("__editable__") or any(
                name == b or name.startswith((b + "-", b + ".", b + "_")) for b in BLOCKED):
            continue
        (view / entry.name).symlink_to(entry)
    return view


@pytest.fixture(scope="module")
def cli(site_without_extras):
    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site_without_extras}"}
        return subprocess.run([sys.executable, "-S", "-m", "builder.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, env=env)

    return run


def test_the_environment_really_lacks_them(cli, site_without_extras):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site_without_extras}"}
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; print([m for m in "
                            "('fiftyone', 'insightface', 'dlib', 'faiss', 'ray', 'sklearn', 'torch') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.strip() == "['torch']"


def test_core_dependencies_leave_the_extras_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for package in ("fiftyone", "insightface", "dlib", "faiss", "ray", "scikit-learn", "onnxruntime"):
        assert package not in core, package
    extras = project["optional-dependencies"]
    assert {"identity", "review", "ray", "eval", "all"} <= set(extras)


def test_generate_and_release_without_the_extras(cli, tmp_path):
    out = tmp_path / "out"
    result = cli(DEMO, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (out / "hf" / "dataset_dict.json").is_file() and (out / "README.md").is_file()
    review = cli("review", out, "--no-launch")
    assert review.returncode == 2 and "pip install 'fer-synth[review]'" in review.stderr, review.stderr
    ray = cli(DEMO, "--out", out, "--executor", "ray")
    assert ray.returncode == 2 and "pip install 'fer-synth[ray]'" in ray.stderr, ray.stderr


def test_a_manifest_that_needs_the_identity_extra_says_so_before_any_work(cli, tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["curation"]["identities"] = {"threshold": 0.9}
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(data))
    result = cli("validate", manifest)
    assert result.returncode == 2, result.stderr
    assert "curation.identities:" in result.stderr and "pip install 'fer-synth[identity]'" in result.stderr
    assert "faiss" in result.stderr and "Traceback" not in result.stderr
