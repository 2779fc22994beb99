"""Bad ``images:`` sources: a build folder inside the source folder, folders whose every entry is skipped."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.e2e.bad_inputs import Case, case
from tests.e2e.bad_inputs.env import ROOT

PHOTOS = ROOT / "manifests" / "label-photos.yaml"


def _photo_folder(tmp: Path, name: str = "photos") -> Path:
    """A folder holding one small PNG (the refusals come before any model loads)."""
    from PIL import Image

    folder = tmp / name
    folder.mkdir()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(folder / "face.png")
    return folder


def _manifest(tmp: Path, folder: Path, **images) -> Path:
    data = yaml.safe_load(PHOTOS.read_text())
    data["images"] = {"folder": str(folder), **images}
    path = tmp / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _not_created(path: Path):
    def check() -> None:
        assert not path.exists(), f"{path} was created"

    return check


# -- --out inside images.folder --------------------------------------------------------------------------------
@case("images-out-inside-the-source-folder")
def _(tmp, env):
    folder = _photo_folder(tmp)
    out = folder / "build"
    return Case([_manifest(tmp, folder), "--out", out, "--no-progress"], out,
                ["--out is inside images.folder", str(folder), "choose an --out folder that is not inside"], [folder],
                _not_created(out))


@case("images-out-is-the-source-folder")
def _(tmp, env):
    folder = _photo_folder(tmp)
    return Case([_manifest(tmp, folder), "--out", folder], folder, ["--out is inside images.folder"], [folder])


@case("images-out-inside-the-source-folder-dry-run")
def _(tmp, env):
    folder = _photo_folder(tmp)
    out = folder / "sub" / "build"
    return Case([_manifest(tmp, folder), "--out", out, "--dry-run"], out, ["--out is inside images.folder"], [folder],
                _not_created(out))


@case("images-out-inside-the-source-folder-rerun")
def _(tmp, env):
    """A build an older version let into the source folder: the rerun lists its files; refused for what it is."""
    folder = _photo_folder(tmp)
    out = folder / "build"
    images = out / "shards" / "ingest" / "00000" / "images"
    images.mkdir(parents=True)
    (images / "label-photos-0000000.png").write_bytes((folder / "face.png").read_bytes())
    (out / "build.json").write_text(json.dumps({"fingerprint": "0" * 64, "manifest": {}}))
    return Case([_manifest(tmp, folder), "--out", out, "--no-progress"], out,
                ["--out is inside images.folder", "nothing was written"], [folder])


@case("images-out-inside-a-linked-source-folder")
def _(tmp, env):
    """images.folder is a link: the build folder is inside the folder it points to."""
    folder = _photo_folder(tmp, "real-photos")
    (tmp / "photos").symlink_to(folder)
    out = folder / "build"
    return Case([_manifest(tmp, tmp / "photos"), "--out", out, "--no-progress"], out,
                ["--out is inside images.folder", str(tmp / "photos")], [folder], _not_created(out))


# -- folders whose every entry is skipped ---------------------------------------------------------------------
@case("images-folder-of-unsupported-formats")
def _(tmp, env):
    folder = tmp / "photos"
    folder.mkdir()
    (folder / "a.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (folder / "b.txt").write_text("notes")
    manifest = _manifest(tmp, folder)
    return Case([manifest, "--no-progress"], manifest,
                ["holds no image", "2 unsupported_format (e.g. a.heic)", "convert other formats"], [folder])


@case("images-folder-of-links-outside")
def _(tmp, env):
    folder = _photo_folder(tmp, "elsewhere")
    photos = tmp / "photos"
    photos.mkdir()
    (photos / "face.png").symlink_to(folder / "face.png")
    manifest = _manifest(tmp, photos)
    return Case([manifest, "--no-progress"], manifest,
                ["holds no image", "1 link_outside_folder (e.g. face.png)", "images.follow_links_outside: true"],
                [folder, photos])


@case("images-folder-of-dangling-links")
def _(tmp, env):
    photos = tmp / "photos"
    photos.mkdir()
    (photos / "face.png").symlink_to(tmp / "deleted.png")
    manifest = _manifest(tmp, photos)
    return Case(["validate", manifest], manifest, ["holds no image", "1 dangling_link (e.g. face.png)"], [photos])


@case("images-folder-of-hidden-files")
def _(tmp, env):
    photos = tmp / "photos"
    (photos / ".thumbs").mkdir(parents=True)
    (photos / ".face.png").write_bytes(b"")
    manifest = _manifest(tmp, photos)
    return Case(["validate", manifest], manifest, ["holds no image", "2 hidden (e.g. .face.png)"], [photos])


@case("images-only-in-sub-folders-not-recursive")
def _(tmp, env):
    folder = tmp / "photos"
    folder.mkdir()
    _photo_folder(folder, "people")
    manifest = _manifest(tmp, folder, recursive=False)
    return Case(["validate", manifest], manifest,
                ["holds no image", "1 subfolder (e.g. people)", "images.recursive: true"], [folder])


@case("images-follow-links-outside-not-a-boolean")
def _(tmp, env):
    folder = _photo_folder(tmp)
    manifest = _manifest(tmp, folder, follow_links_outside="sometimes")
    return Case(["validate", manifest], manifest, ["images.follow_links_outside"], [folder])
