"""The wheel: every module and data file of the packages is in it, and the installed tool runs without the checkout.

The wheel is built from a copy of the checkout (setuptools writes build/ and *.egg-info next to the sources),
with this venv's setuptools and no network. It is then installed with `pip install --no-deps` into a fresh venv
whose only other import path is this venv's site-packages (for the dependencies, without the editable install's
finder, which .pth processing would load), and `build-dataset` runs there from a folder outside the checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("builder", "cards", "curation", "evaluation")
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "artifacts", "results")

pytestmark = pytest.mark.slow


def package_files() -> dict[str, list[str]]:
    """What the wheel must hold, as paths relative to the checkout: 'modules' (.py) and 'data' (every other file
    inside a package folder: the code can only read it at run time if it ships)."""
    out = {"modules": [], "data": []}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out["modules" if path.suffix == ".py" else "data"].append(path.relative_to(ROOT).as_posix())
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", str(source), "-w", str(work / "dist")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (work / "dist").glob("fer_synth-*.whl")
    return path


def test_wheel_holds_every_module_and_data_file_and_no_tests(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    wanted = package_files()
    # the subpackages a hand-written package list once left out
    assert {"builder/models/fer/__init__.py", "curation/labelling/feranno/__init__.py", "curation/identity/__init__.py"} <= set(
        wanted["modules"])
    missing = [f for f in wanted["modules"] + wanted["data"] if f not in names]
    assert missing == [], ("not in the wheel (a data file needs a [tool.setuptools.package-data] entry in "
                           f"pyproject.toml): {missing}")
    assert not [n for n in names if n.startswith("tests/")]
    assert "build-dataset = builder.cli:main" in entry_points


def fresh_venv(where: Path) -> Path:
    """A venv without pip whose only extra import path is this venv's site-packages (the dependencies)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: the directory is appended to sys.path, its own .pth files (the editable finder) are not run
    (Path(purelib) / "fer-synth-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "--disable-pip-version-check", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    tool = str(python.parent / "build-dataset")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run(str(python), "-c", "import json, sys, builder, cards, curation, evaluation, builder.models.fer, "
                "curation.labelling.feranno, curation.identity; print(json.dumps([m.__file__ for m in (builder, cards, curation, "
                "evaluation, builder.models.fer, curation.labelling.feranno, curation.identity)] + sys.path))")
    assert where.returncode == 0, where.stderr
    paths = json.loads(where.stdout)
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    assert all(Path(f).is_relative_to(site) for f in paths[:7]), paths[:7]  # the wheel's copy, not the checkout's
    assert str(ROOT) not in paths[7:]  # ("" is the working folder, outside the checkout)

    schema = run(tool, "schema")
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout == (ROOT / "manifests" / "schema.json").read_text()
    train = run(tool, "schema", "--config", "train-au-adapter")
    assert train.returncode == 0 and train.stdout == (ROOT / "manifests" / "train" / "schema.json").read_text()
    check = run(tool, "schema", "--check")  # no manifests/ folder in an installed wheel: a clear refusal
    assert check.returncode == 2 and "runs from an installed package" in check.stderr and "fix:" in check.stderr

    valid = run(tool, "validate", str(ROOT / "manifests" / "demo.yaml"))
    assert valid.returncode == 0 and "ok (28 samples" in valid.stdout, valid.stderr
    plan = run(tool, str(ROOT / "manifests" / "demo.yaml"), "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["total"] == 28

    # the build that failed with ModuleNotFoundError (builder.models.fer): real photos, MTCNN, the FER2013 expert
    faces = run(str(python), "-m", "builder.example_faces", "out/faces")
    assert faces.returncode == 0, faces.stderr
    build = run(tool, str(ROOT / "manifests" / "label-photos.yaml"), "--no-progress")
    assert build.returncode == 0, build.stderr
    stats = json.loads((elsewhere / "out" / "label-photos" / "stats.json").read_text())
    assert stats["released"]["total"] > 0 and (elsewhere / "out" / "label-photos" / "hf").is_dir()
