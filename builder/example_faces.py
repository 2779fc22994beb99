"""Write a folder of real face photos from installed packages, for the images-source example.

``python -m builder.example_faces out/faces`` (or ``make faces``) writes the
insightface wheel's portrait, one crop per person of its group photo (found
with the pipeline's MTCNN), and ``skimage.data.astronaut()`` when scikit-image
is installed. These are the only real face photos available offline; they
exist to run ``manifests/label-photos.yaml`` end to end, not to train on.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

CROP_MARGIN = 0.6  # context around each group-photo face, as a fraction of its box side


NEAR_COPIES = ("resize", "jpeg", "flip", "crop", "crop15", "rotate")


def example_faces() -> dict:
    """name -> RGB PIL photo: ``portrait``, ``g1``..``g6`` (the group photo's people, left to right, cropped
    around their MTCNN boxes with ``CROP_MARGIN``) and ``astronaut`` (when scikit-image is installed)."""
    import insightface
    from PIL import Image

    from curation.faces.detect import FacePolicy, load_detector

    images = Path(insightface.__file__).parent / "data" / "images"
    out = {}
    with Image.open(images / "Tom_Hanks_54745.png") as im:
        out["portrait"] = im.convert("RGB")
    with Image.open(images / "t1.jpg") as im:
        group = im.convert("RGB")
    faces = sorted(FacePolicy().keep(load_detector().detect(np.asarray(group))), key=lambda d: d.box[0])
    for i, face in enumerate(faces, start=1):
        x1, y1, x2, y2 = face.box
        pad = CROP_MARGIN * max(x2 - x1, y2 - y1)
        out[f"g{i}"] = group.crop((max(0, int(x1 - pad)), max(0, int(y1 - pad)), min(group.width, int(x2 + pad)),
                                   min(group.height, int(y2 + pad))))
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed: skipping the astronaut photo", file=sys.stderr)
    else:
        out["astronaut"] = Image.fromarray(data.astronaut())
    return out


def near_copy(image, kind: str):
    """A near copy of a PIL photo, as a leak or a duplicate would arrive: ``resize`` (2/3), ``jpeg`` (quality
    40), ``flip`` (mirror), ``crop`` (3-6 % per side), ``crop15`` (12-15 %, which moves the perceptual hash
    like another picture would) or ``rotate`` (5 degrees)."""
    from PIL import Image

    w, h = image.size
    if kind == "resize":
        return image.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BICUBIC)
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=40)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "crop":
        return image.crop((int(w * 0.06), int(h * 0.05), int(w * 0.95), int(h * 0.97)))
    if kind == "crop15":
        return image.crop((int(w * 0.15), int(h * 0.12), int(w * 0.9), int(h * 0.95)))
    if kind == "rotate":
        return image.rotate(5, resample=Image.Resampling.BICUBIC)
    raise ValueError(f"unknown near-copy kind {kind!r}; use one of {', '.join(NEAR_COPIES)}")


def write_example_faces(folder: Path) -> list[Path]:
    """Write the photos into ``folder`` (``g<i>`` as ``group-<i>.png``); return their paths (sorted)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in example_faces().items():
        path = folder / f"{'group-' + name[1:] if name[:1] == 'g' and name[1:].isdigit() else name}.png"
        image.save(path)
        written.append(path)
    return sorted(written)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "out/faces")
    paths = write_example_faces(target)
    print(f"wrote {len(paths)} face photos to {target}")
