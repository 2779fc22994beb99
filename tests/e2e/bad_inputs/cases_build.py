"""Bad build folders, review decisions, run options and classifier configs that would run code."""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.env import ROOT

DEMO = ROOT / "manifests" / "demo.yaml"


def _demo_manifest(tmp: Path, **changes) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    path = tmp / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- damaged build folders --------------------------------------------------------------------------------------
@case("build-json-not-json")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    (out / "build.json").write_text('{"fingerprint": "ab')
    return Case(["release", out, "--no-review"], out / "build.json", ["the build record is damaged"], [out])


@case("build-json-without-manifest")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    (out / "build.json").write_text(json.dumps({"fingerprint": "x" * 64}))
    return Case(["release", out, "--no-review"], out / "build.json", ["lacks 'fingerprint' or 'manifest'"], [out])


@case("build-json-damaged-on-resume")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    (out / "build.json").write_bytes(b"\xff\xfe")
    return Case([DEMO, "--out", out], out / "build.json", ["the build record is damaged"], [out])


@case("shard-stats-damaged")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    stats = out / "shards" / "integrity" / "00001" / "stats.json"
    stats.write_text("{")
    return Case(["release", out, "--no-review"], stats, ["committed shard file is damaged", "delete the folder"],
                [out])


@case("shard-records-damaged")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    records = out / "shards" / "integrity" / "00002" / "records.jsonl"
    records.write_text('{"sample_id": 1}\n')
    return Case(["release", out, "--no-review"], records, ["committed shard file is damaged"], [out])


@case("shard-images-deleted-release")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    image = next((out / "shards" / "generate" / "00001" / "images").iterdir())
    image.unlink()
    return Case(["release", out, "--no-review"], out, ["image file(s) of finished shards are gone", "shards 1",
                                                       "build-dataset MANIFEST --out OUT"], [out])


@case("release-unfinished-build")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    import shutil

    shutil.rmtree(out / "shards" / "integrity" / "00003")
    return Case(["release", out, "--no-review"], out, ["is not finished: 1 of 4 shards to do"], [out])


@case("release-not-a-build")
def _(tmp, env):
    (tmp / "folder").mkdir()
    return Case(["release", tmp / "folder", "--no-review"], tmp / "folder", ["holds no build"], [tmp / "folder"])


@case("everything-dropped")
def _(tmp, env):
    manifest = _demo_manifest(tmp, **{"curation.integrity.min_std": 128, "labels.counts": 1})
    return Case([manifest, "--out", tmp / "out", "--no-progress"], tmp / "out",
                ["no sample is left to release", "integrity: 7 in, 0 kept, dropped blank_image 7", "--allow-empty"],
                check=lambda: _nothing_released(tmp / "out"))


def _nothing_released(out: Path) -> None:
    assert not (out / ".release.json").exists() and not (out / "hf").exists()
    assert (out / "shards" / "integrity" / "00000" / "stats.json").is_file(), "the shards are kept"


# -- run options ---------------------------------------------------------------------------------------------------
@case("threads-zero")
def _(tmp, env):
    return Case([DEMO, "--out", tmp / "out", "--threads", "0"], "--threads must be at least 1", ["positive"],
                check=lambda: _no_folder(tmp / "out"))


def _no_folder(out: Path) -> None:
    assert not out.exists()


# -- review decisions ----------------------------------------------------------------------------------------------
def _decisions(tmp: Path, content) -> Path:
    path = tmp / "decisions.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _review_case(tmp, env, content, expect: list[str]) -> Case:
    out = env.demo_build(tmp / "out")
    path = _decisions(tmp, content)
    return Case(["release", out, "--decisions", path], path, expect, [out],
                check=lambda: _no_review_file(out))


def _no_review_file(out: Path) -> None:
    assert not (out / "review.json").exists(), "a refused review wrote review.json"


@case("decision-not-a-string")
def _(tmp, env):
    return _review_case(tmp, env, {"decisions": {"demo-0000001": 3}}, ["decision 3 is neither 'reject'"])


@case("decision-unknown-sample")
def _(tmp, env):
    return _review_case(tmp, env, {"decisions": {"demo-0000001": "reject", "demo-9999999": "reject",
                                                 "dmeo-0000002": "reject"}},
                        ["2 decision(s) name unknown sample ids", "'demo-9999999'", "'dmeo-0000002'"])


@case("decision-path-like-sample")
def _(tmp, env):
    return _review_case(tmp, env, {"decisions": {"../../etc/passwd": "reject"}},
                        ["path-like or unknown sample ids", "'../../etc/passwd'"])


@case("decisions-not-json")
def _(tmp, env):
    return _review_case(tmp, env, "{decisions: reject}", ["cannot read the review decisions"])


@case("decisions-a-list")
def _(tmp, env):
    return _review_case(tmp, env, ["demo-0000001"], ["holds a list, not an object"])


@case("decisions-without-decisions")
def _(tmp, env):
    return _review_case(tmp, env, {"dataset": "mine"}, ["no 'decisions' key"])


@case("decisions-unknown-class")
def _(tmp, env):
    return _review_case(tmp, env, {"decisions": {"demo-0000001": "relabel:joy"}},
                        ["'relabel:joy' is neither", "relabel: followed by one of neutral"])


@case("decisions-contradict-earlier")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    first = tmp / "first.json"
    first.write_text(json.dumps({"decisions": {"demo-0000001": "reject", "demo-0000002": "relabel:happy"}}))
    from builder.cli import main

    assert main(["release", str(out), "--decisions", str(first)]) == 0
    second = _decisions(tmp, {"decisions": {"demo-0000002": "relabel:sad", "demo-0000003": "reject"}})
    return Case(["release", out, "--decisions", second], second,
                ["1 decision(s) contradict the review already applied", "demo-0000002 (relabel:happy -> relabel:sad)",
                 "--no-review"], [out])


@case("decisions-while-a-build-runs")
def _(tmp, env):
    out = env.demo_build(tmp / "out")
    path = _decisions(tmp, {"decisions": {"demo-0000001": "reject"}})
    lock = open(out / ".lock", "a+")  # noqa: SIM115 (held until the case's check runs)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def check():
        lock.close()
        _no_review_file(out)

    return Case(["release", out, "--decisions", path], "another build-dataset process",
                [f"is writing to '{out}'"], [out], check=check)


# -- classifier configs that would run code ------------------------------------------------------------------------
def _hostile_expert(tmp: Path, target: str, init_args: dict, *flags: str) -> Case:
    from safetensors.torch import save_file
    from torch import nn

    marker = tmp / "EXECUTED"
    save_file(nn.Linear(2, 7).state_dict(), tmp / "w.safetensors")
    config = tmp / "expert.yaml"
    args = json.loads(json.dumps(init_args).replace("{marker}", str(marker)))
    config.write_text(yaml.safe_dump({"architecture": target, "init_args": args, "weights": "w.safetensors",
                                      "labels": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
                                      "input": {"size": 32}}))
    manifest = _demo_manifest(tmp, **{"labelling": {"experts": [{"name": "x", "model": str(config)}],
                                                    "device": "cpu"}})

    def check():
        assert not marker.exists(), "the config's target ran"
        assert not (tmp / "out" / "shards").exists(), "refused before any generation"

    return Case([manifest, "--out", tmp / "out", "--no-progress", *flags], config, [target], check=check)


@case("expert-config-subprocess-popen")
def _(tmp, env):
    return _hostile_expert(tmp, "subprocess:Popen", {"args": ["touch", "{marker}"]})


@case("expert-config-os-system")
def _(tmp, env):
    return _hostile_expert(tmp, "os:system", {"command": "touch {marker}"})


@case("expert-config-builtins-exec")
def _(tmp, env):
    return _hostile_expert(tmp, "builtins:exec", {"source": "open('{marker}', 'w').close()"})


@case("expert-config-popen-trusted")
def _(tmp, env):
    bad = _hostile_expert(tmp, "subprocess:Popen", {"args": ["touch", "{marker}"]}, "--trust-remote-code")
    bad.expect.append("not a torch.nn.Module class")
    return bad


@case("expert-config-plain-function")
def _(tmp, env):
    bad = _hostile_expert(tmp, "builder.cli:main", {"argv": ["schema", "--write"]})
    bad.expect.append("is a function, not a torch.nn.Module class")
    return bad


@case("expert-config-non-module-class")
def _(tmp, env):
    bad = _hostile_expert(tmp, "builder.core.records:Drop", {"stage": "a", "reason": "b"})
    bad.expect.append("is the class Drop, not a torch.nn.Module class")
    return bad


@case("guide-config-weights-outside")
def _(tmp, env):
    from safetensors.torch import save_file
    from torch import nn

    (tmp / "models").mkdir()
    save_file(nn.Linear(2, 7).state_dict(), tmp / "w.safetensors")
    config = tmp / "models" / "guide.yaml"
    config.write_text(yaml.safe_dump({"architecture": "torch.nn:Linear", "init_args": {"in_features": 2,
                                      "out_features": 7}, "weights": "../w.safetensors",
                                      "labels": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
                                      "input": {"size": 32}}))
    manifest = _demo_manifest(tmp, **{"generator.guidance": {"classifier": str(config)}})
    return Case([manifest, "--out", tmp / "out", "--no-progress"], config,
                ["field 'weights' points outside", "'../w.safetensors'"])


# -- paths in files that leave their folder ------------------------------------------------------------------------
@case("record-image-outside-build-folder")
def _(tmp, env):
    """A tampered build folder whose record names a file elsewhere: a release must not read (and publish) it."""
    out = env.demo_build(tmp / "out")
    secret = tmp / "secret.png"
    secret.write_bytes(b"not for the Hub")
    records = out / "shards" / "integrity" / "00000" / "records.jsonl"
    lines = records.read_text().splitlines()
    first = json.loads(lines[0])
    first["image"] = "../secret.png"
    records.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return Case(["release", out, "--no-review"], out, ["names the file '../secret.png', which is outside the build "
                                                       "folder"], [out])


@case("train-metadata-file-outside-folder")
def _(tmp, env):
    from PIL import Image

    folder = tmp / "pairs"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(tmp / "outside.png")
    meta = folder / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "../outside.png", "caption": "a face", "au": [0.0] * 12}) + "\n")
    config = tmp / "train.yaml"
    config.write_text(yaml.safe_dump({"base_model": "builtin:tiny-sd", "au_set": "disfa12", "resolution": 64,
                                      "output_dir": str(tmp / "adapter"),
                                      "data": {"image_folder": str(folder)}, "train": {"steps": 1}}))
    return Case(["train-au-adapter", config, "--no-progress"], meta,
                ["field 'file_name (line 1)' points outside", "'../outside.png'"],
                check=lambda: _no_folder(tmp / "adapter" / "checkpoints"))
