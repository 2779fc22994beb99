"""Reading input images: any mode Pillow opens as upright 8-bit RGB, and damaged files caught.

``to_rgb8`` is the one conversion every stage uses, so that a labeller, a face
detector and the released file show the same picture:

* the EXIF orientation is applied (the picture as viewers show it);
* 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled, ``round(v / 257)`` (65535 -> 255), never
  clipped; 16-bit RGB PNGs come out of Pillow already reduced to their high byte;
* ``I`` (32-bit integers) and ``F`` (floats) take the smallest usual range that holds every value: [0, 1]
  (``F`` only) times 255, [0, 255] as is, [0, 65535] divided by 257, otherwise the image's own min..max
  stretched to 0..255. A PNG holds no 32-bit or float pixels, so an ``I`` PNG (how Pillow opens some 16-bit
  PNGs) is always 16-bit: a dark 16-bit picture is not mistaken for a bright 8-bit one. NaN or inf is an error;
* transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, a ``P``/``L``/``RGB`` image with a transparent colour) is
  composited on white (``ALPHA_BACKGROUND``), as a page shows a cut-out face;
* every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``) by Pillow's own
  conversion; a multi-frame file (GIF, TIFF, APNG, MPO) gives its first frame; colour profiles are not applied.

``read_checked`` decodes a file's bytes and raises ``CorruptImage`` when the file decodes but is damaged.
It does not rely on ``ImageFile.LOAD_TRUNCATED_IMAGES`` being off (it is, nothing here sets it): a cut JPEG
or PNG is also found in the bytes themselves.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

ALPHA_BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited on: white, the way a page shows a cut-out face."""
EXIF_ORIENTATION = 0x0112

FILL_COLOUR = (128, 128, 128)
"""What libjpeg puts where a baseline JPEG's data is missing or cut short (all coefficients zero): mid-grey."""
FLAT_TOLERANCE = 1
"""Grey levels a pixel of the filled band may differ from ``FILL_COLOUR`` and from the band's bottom row."""
FLAT_MIN_ROWS = 16
"""Rows a mid-grey band at the bottom of a JPEG must have to count as filled in (one 4:2:0 MCU row is 16)."""
FLAT_MIN_FRACTION = 0.03
"""Fraction of the height the band must also cover. Measured on 660 honest files (15 real photos, the demo's 28
generated images and 67 other pictures, each as stored and as JPEG of five kinds; tests/test_image_io.py keeps
the photos): none ends in a mid-grey band, while flat bands of other colours (white margins) reach 20 % of the
height, hence the fill colour rule. A baseline JPEG cut at 60 % and re-terminated ends in 25-35 % grey."""

_MCU_ROWS, _MCU_COLUMNS = 16, 8  # the largest block row a JPEG codes; the smallest block width

RELEASED_AS_IS = {"JPEG": (".jpg", ".jpeg"), "MPO": (".jpg", ".jpeg"), "PNG": (".png",), "WEBP": (".webp",)}
"""Formats whose bytes a build keeps (with one of these suffixes); any other format is stored as PNG."""

_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CorruptImage(ValueError):
    """An image file that decodes but is damaged: a cut or garbled stream, or a tail the decoder filled in."""


def to_rgb8(image):
    """``image`` (any mode Pillow opens) as an upright 8-bit RGB PIL image (see the module docstring)."""
    return _orient(_rgb8(image), orientation(image))


def open_rgb8(path: str | Path):
    """The image file at ``path``, decoded whole and converted by ``to_rgb8`` (raises on an unreadable file)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return to_rgb8(im)


def read_checked(data: bytes):
    """The Pillow image (decoded whole, as stored) of encoded ``data``: Pillow's own error when it does not
    decode (an unreadable file), ``CorruptImage`` when it decodes but is damaged: a JPEG without its
    end-of-image marker, with an invalid marker or a segment running past the end, or with a mid-grey tail
    filled in (``FLAT_*``); a PNG whose chunks fail their CRC or that ends before IEND."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    problem = _stream_damage(data) or _filled_tail(image)
    if problem:
        raise CorruptImage(problem)
    return image


def orientation(image) -> int:
    """The EXIF orientation (1-8) of ``image``; 1 when it has none or its EXIF block is unreadable."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return 1  # a broken EXIF block: viewers ignore it, so do we
    return value if value in _TRANSPOSE else 1


def kept_suffix(image, data: bytes, suffix: str) -> str | None:
    """The suffix to store a source file's bytes under unchanged (its own when it names the real format), or
    None when it must be stored as PNG instead: a format outside ``RELEASED_AS_IS``, pixels other than 8-bit RGB
    or grey, transparency, an EXIF rotation, or more than one frame (MPO's extra frames are previews)."""
    fmt = image.format
    if fmt not in RELEASED_AS_IS or image.mode not in ("RGB", "L") or "transparency" in image.info:
        return None
    if orientation(image) != 1 or (fmt != "MPO" and getattr(image, "n_frames", 1) > 1):
        return None
    if fmt == "PNG" and (len(data) < 25 or data[24] > 8):  # IHDR bit depth: Pillow reads 16-bit RGB as 8
        return None
    names = RELEASED_AS_IS[fmt]
    return suffix.lower() if suffix.lower() in names else names[0]


def _rgb8(image):
    """``image`` as 8-bit RGB, not yet oriented."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16"):
        return _grey(np.rint(np.asarray(image).astype(np.float64) / 257.0))
    if mode in ("I", "F"):
        return _grey(_levels(np.asarray(image).astype(np.float64), mode, image.format == "PNG"))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255)), rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert image mode {mode} to RGB ({exc})") from None


def _levels(values: np.ndarray, mode: str, png: bool) -> np.ndarray:
    """32-bit integer or float pixels as 0..255 levels (the range rule of the module docstring)."""
    if not np.isfinite(values).all():
        raise ValueError(f"mode {mode} image holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if png or (lo >= 0 and 255 < hi <= 65535):
        return np.rint(values / 257.0)
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(values * 255.0)
    if lo >= 0 and hi <= 255:
        return np.rint(values)
    return np.rint((values - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(values)


def _grey(levels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _orient(image, value: int):
    from PIL import Image

    return image if value == 1 else image.transpose(getattr(Image.Transpose, _TRANSPOSE[value]))


def _stream_damage(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_damage(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png_damage(data)
    return None


def _jpeg_damage(data: bytes) -> str | None:
    """Walk the JPEG's markers from SOI to the first EOI (an MPO's later images and trailing data are ignored)."""
    end = len(data)
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)  # bytes before a marker are extraneous: libjpeg skips them with a warning
        while 0 <= pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos < 0 or pos >= end:
            return "the JPEG stream ends without its end-of-image marker (the file is truncated)"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if marker < 0xC0 or marker == 0xD8:
            return f"invalid JPEG marker 0xFF{marker:02X} (byte {pos - 1}): the file is garbled"
        if pos + 2 > end:
            return "the JPEG stream ends inside a segment (the file is truncated)"
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > end:
            return f"a JPEG segment (0xFF{marker:02X}) runs past the end of the file (truncated or garbled)"
        pos += length
        if marker == 0xDA:
            pos = _scan_end(data, pos)


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data starting at ``pos`` ends: the next marker other than stuffing or RSTn."""
    end = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= end:
            return end
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            pos += 2
        elif nxt == 0xFF:
            pos += 1
        else:
            return pos


def _png_damage(data: bytes) -> str | None:
    """Walk the PNG's chunks to IEND, checking each CRC."""
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > end:
            break
        body = data[pos + 4:pos + 8 + length]
        if zlib.crc32(body) != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            return f"PNG chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC check: the file is garbled"
        if kind == b"IEND":
            return None
        pos += 12 + length
    return "the PNG stream ends before its IEND chunk (the file is truncated)"


def _filled_tail(image) -> str | None:
    """A JPEG whose decode ends in a ``FILL_COLOUR`` tail of at least ``FLAT_MIN_ROWS`` rows and
    ``FLAT_MIN_FRACTION`` of the height (``filled_rows``), unless the top holds such a band too (letterbox
    padding) or the whole picture is that grey (a blank image, which the integrity check names as such)."""
    if image.format not in ("JPEG", "MPO"):
        return None
    pixels = np.asarray(_rgb8(image))
    height = pixels.shape[0]
    rows = filled_rows(pixels)
    if rows >= height or rows < max(FLAT_MIN_ROWS, FLAT_MIN_FRACTION * height):
        return None
    if filled_rows(pixels[::-1, ::-1]) >= rows / 2:
        return None
    return (f"the last {rows:.0f} of {height} rows are flat mid-grey: the JPEG data is cut short or garbled and "
            "the decoder filled the rest in")


def filled_rows(pixels: np.ndarray) -> float:
    """How much of ``pixels`` (H, W, 3 uint8) is ``FILL_COLOUR`` at the end of the decode order, in rows: the
    bottom rows that are that grey across the width, plus the right-hand part of the block row above them
    (a decoder fills the MCUs it lacks left to right, so the last decoded block row ends in grey)."""
    height, width = pixels.shape[:2]
    grey = (np.abs(pixels.astype(np.int16) - np.array(FILL_COLOUR, dtype=np.int16)) <= FLAT_TOLERANCE).all(axis=2)
    other = ~grey[:, ::-1]
    run = np.where(other.any(axis=1), other.argmax(axis=1), width)  # grey pixels at each row's right end
    full = int(np.argmax(run[::-1] < width)) if (run < width).any() else height
    partial = run[::-1][full:full + _MCU_ROWS]
    partial = partial[: int(np.argmax(partial < _MCU_COLUMNS))] if (partial < _MCU_COLUMNS).any() else partial
    return full + float(partial.sum()) / width
