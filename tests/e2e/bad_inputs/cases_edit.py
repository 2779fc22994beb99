"""Bad ``edit:`` sources: refused before any model loads, naming the manifest, the field and the fix."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.env import ROOT

DEMO = ROOT / "manifests" / "edit-demo.yaml"


def _folder(tmp: Path) -> Path:
    from PIL import Image

    folder = tmp / "faces"
    folder.mkdir()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(folder / "face.png")
    return folder


def _manifest(tmp: Path, **edit) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["edit"].update(edit)
    path = tmp / "edit.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@case("edit-real-faces-without-consent")
def _(tmp, env):
    folder = _folder(tmp)
    path = _manifest(tmp, folder=str(folder), consent=None)
    out = tmp / "out"

    def check() -> None:
        assert not out.exists(), "a refused manifest creates no build folder"

    return Case([path, "--out", out], path, ["field 'edit.consent'", "edits of real people's faces need 'consent'",
                                            "sources_are_synthetic: true"], [folder], check)


@case("edit-folder-missing")
def _(tmp, env):
    path = _manifest(tmp, folder=str(tmp / "nowhere"))
    return Case([path, "--out", tmp / "out"], path, ["edit.folder", "is not a folder", "fix: point edit.folder"])


@case("edit-out-inside-the-source-folder")
def _(tmp, env):
    folder = _folder(tmp)
    out = folder / "build"
    return Case([_manifest(tmp, folder=str(folder)), "--out", out], out,
                ["--out is inside edit.folder", "choose an --out folder that is not inside"], [folder])


@case("edit-dataset-without-the-identity-column")
def _(tmp, env):
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    image = tmp / "face.png"
    PILImage.new("RGB", (32, 32), (90, 60, 30)).save(image)
    ds = Dataset.from_dict({"image": [str(image)], "person": ["a"]},
                           features=Features({"image": Image(), "person": Value("string")}))
    ds.save_to_disk(str(tmp / "ds"))
    path = _manifest(tmp, folder=None, dataset=str(tmp / "ds"), source_identity={"column": "who"})
    return Case([path, "--out", tmp / "out"], path, ["edit.source_identity.column 'who' is not a column",
                                                    "use one of: image, person"], [tmp / "ds"])
