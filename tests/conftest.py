"""Test environment: offline, private caches, tiny components built once per session."""
from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "manifests" / "demo.yaml"

# Set before any test imports huggingface_hub / datasets (they read these at import).
_HOME = Path(tempfile.mkdtemp(prefix="fer-synth-tests-"))
os.environ.update(
    FER_SYNTH_HOME=str(_HOME / "fer-synth"),
    HF_HOME=str(_HOME / "hf"),
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    TRANSFORMERS_VERBOSITY="error",
    DIFFUSERS_VERBOSITY="error",
    TOKENIZERS_PARALLELISM="false",
    # FiftyOne: a database and config of this test session only (cards.review_app starts mongod there)
    FIFTYONE_DATABASE_DIR=str(_HOME / "fiftyone" / "db"),
    FIFTYONE_CONFIG_PATH=str(_HOME / "fiftyone" / "config.json"),
    FIFTYONE_APP_CONFIG_PATH=str(_HOME / "fiftyone" / "app_config.json"),
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_SHOW_PROGRESS_BARS="false",
)
for _name in ("FIFTYONE_DATABASE_URI", "FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_NAME"):
    os.environ.pop(_name, None)  # never the user's database


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


def deep_update(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def demo_data() -> dict:
    return yaml.safe_load(DEMO.read_text())


@pytest.fixture
def write_manifest(tmp_path, demo_data):
    """write_manifest(changes) -> path of the demo manifest with ``changes`` deep-merged in."""

    def write(changes: dict | None = None, name: str = "manifest.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_update(demo_data, changes or {}), sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from builder.models.tiny_sd import ensure_tiny_pipeline

    return ensure_tiny_pipeline()


@pytest.fixture
def run_cli():
    """Run ``build-dataset`` as a real subprocess; returns CompletedProcess."""
    import subprocess

    def run(*args: str, timeout: float = 300, **kwargs):
        return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, **kwargs)

    return run


def dataset_rows(out: Path) -> dict[str, list[dict]]:
    """Every row of a build's ``hf/`` dataset, images as PNG bytes, for sample-by-sample comparison."""
    import datasets

    dd = datasets.load_from_disk(str(out / "hf"))
    rows = {}
    for split, ds in dd.items():
        ds = ds.cast_column("image", datasets.Image(decode=False))
        rows[split] = [{**r, "image": r["image"]["bytes"]} for r in ds]
    return rows


def stage_counts(out: Path) -> dict:
    """stats.json without timings: what must be equal between an interrupted and a clean build."""
    import json

    stats = json.loads((out / "stats.json").read_text())
    return {
        "stages": {k: {f: v[f] for f in ("in", "kept", "dropped")} for k, v in stats["stages"].items()},
        "released": stats["released"],
        "requested": stats["requested"],
    }


from tests.fixtures.people import people, reference  # noqa: E402,F401  (shared fixtures of real face photos)
