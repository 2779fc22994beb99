"""Write a folder of real face photos from installed packages, for the images-source example.

``python -m builder.example_faces out/faces`` (or ``make faces``) writes the
insightface wheel's portrait, one crop per person of its group photo (found
with the pipeline's MTCNN), and ``skimage.data.astronaut()`` when scikit-image
is installed. These are the only real face photos available offline; they
exist to run ``manifests/label-photos.yaml`` end to end, not to train on.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CROP_MARGIN = 0.6  # context around each group-photo face, as a fraction of its box side


def write_example_faces(folder: Path) -> list[Path]:
    """Write the photos into ``folder``; return their paths (sorted)."""
    import insightface
    from PIL import Image

    from curation.faces import FacePolicy, load_detector

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = Path(insightface.__file__).parent / "data" / "images"
    written = []
    with Image.open(images / "Tom_Hanks_54745.png") as im:
        im.convert("RGB").save(folder / "portrait.png")
    written.append(folder / "portrait.png")
    with Image.open(images / "t1.jpg") as im:
        group = np.asarray(im.convert("RGB"))
    faces = sorted(FacePolicy().keep(load_detector().detect(group)), key=lambda d: d.box[0])
    for i, face in enumerate(faces, start=1):
        x1, y1, x2, y2 = face.box
        pad = CROP_MARGIN * max(x2 - x1, y2 - y1)
        box = (max(0, int(x1 - pad)), max(0, int(y1 - pad)), min(group.shape[1], int(x2 + pad)),
               min(group.shape[0], int(y2 + pad)))
        path = folder / f"group-{i}.png"
        Image.fromarray(group).crop(box).save(path)
        written.append(path)
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed: skipping the astronaut photo", file=sys.stderr)
    else:
        Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
        written.append(folder / "astronaut.png")
    return sorted(written)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "out/faces")
    paths = write_example_faces(target)
    print(f"wrote {len(paths)} face photos to {target}")
