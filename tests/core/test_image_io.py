"""builder.core.images on real files: every mode Pillow reads becomes the right 8-bit RGB, and damaged files are
told apart from honest ones (real face photos, stored and re-encoded as JPEG)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from builder.core.images import (
    ALPHA_BACKGROUND,
    CorruptImage,
    kept_suffix,
    open_rgb8,
    read_checked,
    to_rgb8,
)

RAMP8 = np.tile(np.arange(256, dtype=np.uint8), (8, 1))  # 8 x 256: every 8-bit level


def saved(image: Image.Image, fmt: str, **params) -> Image.Image:
    """``image`` written as ``fmt`` and opened again (decoded whole), as a file on disk would be."""
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    reopened = Image.open(io.BytesIO(buf.getvalue()))
    reopened.load()
    return reopened


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb8(image)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_16_bit_grey_png_is_scaled_not_saturated():
    png = saved(Image.fromarray(RAMP8.astype(np.uint16) * 257), "PNG")
    assert png.mode == "I;16" and (np.asarray(png.convert("RGB"))[:, 1:] == 255).all()  # Pillow's own: saturated
    assert (rgb(png) == RAMP8[..., None]).all()  # v * 257 -> v exactly
    fine = np.linspace(0, 65535, 4096).astype(np.uint16).reshape(16, 256)
    got = rgb(saved(Image.fromarray(fine), "PNG"))[..., 0]
    assert np.abs(got - fine / 257.0).max() <= 0.5 + 1e-9  # rounded, never clipped
    dark = rgb(saved(Image.fromarray(np.full((8, 8), 200, np.uint16)), "PNG"))
    assert (dark == 1).all()  # 200 of 65535 is near black, not the 8-bit level 200


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16", "<u2")])
def test_16_bit_byte_orders(mode, dtype):
    values = RAMP8.astype(np.uint16) * 257
    image = Image.frombytes(mode, (256, 8), values.astype(dtype).tobytes())
    assert (rgb(image) == RAMP8[..., None]).all()


def test_16_bit_tiff():
    tiff = saved(Image.fromarray(RAMP8.astype(np.uint16) * 257), "TIFF")
    assert tiff.mode.startswith("I;16") and (rgb(tiff) == RAMP8[..., None]).all()


def test_32_bit_integer_ranges():
    as_8 = saved(Image.fromarray(RAMP8.astype(np.int32)), "TIFF")
    assert as_8.mode == "I" and (rgb(as_8) == RAMP8[..., None]).all()
    as_16 = Image.fromarray(RAMP8.astype(np.int32) * 257)
    assert (rgb(as_16) == RAMP8[..., None]).all()
    wide = Image.fromarray(RAMP8.astype(np.int32) * 1000 - 50_000)  # negative and beyond 16 bits: stretched
    assert (rgb(wide) == RAMP8[..., None]).all()
    old_pillow_png = Image.fromarray(np.full((8, 8), 200, np.int32))  # how older Pillow opens a 16-bit PNG
    old_pillow_png.format = "PNG"
    assert (rgb(old_pillow_png) == 1).all()


def test_float_ranges():
    unit = Image.fromarray(RAMP8.astype(np.float32) / 255)
    assert unit.mode == "F" and (rgb(unit) == RAMP8[..., None]).all()
    levels = saved(Image.fromarray(RAMP8.astype(np.float32)), "TIFF")
    assert levels.mode == "F" and (rgb(levels) == RAMP8[..., None]).all()
    wide = Image.fromarray(RAMP8.astype(np.float32) * 4.0 - 300.0)
    assert (rgb(wide) == RAMP8[..., None]).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb8(Image.fromarray(np.full((4, 4), np.nan, np.float32)))


def test_transparency_is_composited_on_white():
    pixels = np.zeros((4, 3, 4), np.uint8)
    pixels[..., :3] = (200, 40, 10)
    pixels[:, 0, 3], pixels[:, 1, 3], pixels[:, 2, 3] = 0, 255, 128
    got = rgb(saved(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert (got[:, 0] == ALPHA_BACKGROUND).all() and (got[:, 1] == (200, 40, 10)).all()
    assert np.abs(got[:, 2] - (np.array((200, 40, 10)) * 128 + 255 * 127) / 255).max() <= 1

    la = Image.fromarray(np.stack([np.full((4, 2), 60, np.uint8), np.array([[0, 255]] * 4, np.uint8)], -1), "LA")
    got = rgb(saved(la, "PNG"))
    assert (got[:, 0] == 255).all() and (got[:, 1] == 60).all()

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 240, 0, 0] + [0] * 762)
    gif = saved(palette, "GIF", transparency=0)
    got = rgb(gif)
    assert (got[0, 0] == ALPHA_BACKGROUND).all() and (got[0, 1] == (240, 0, 0)).all()
    assert (rgb(saved(palette, "PNG", transparency=1))[0, 1] == ALPHA_BACKGROUND).all()

    pa = palette.convert("PA")
    assert (rgb(pa)[0, 1] == (240, 0, 0)).all()


def test_other_modes():
    cmyk = saved(Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "TIFF")
    assert (rgb(cmyk) == (0, 255, 255)).all()
    assert (rgb(saved(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", quality=95)) >= 253).all()
    bilevel = saved(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1"), "PNG")
    assert bilevel.mode == "1" and rgb(bilevel).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    grey = saved(Image.fromarray(RAMP8), "PNG")
    assert grey.mode == "L" and (rgb(grey) == RAMP8[..., None]).all()
    colours = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.abs(rgb(Image.fromarray(colours).convert("YCbCr")) - colours).max() <= 3
    assert rgb(Image.new("HSV", (1, 1), (0, 255, 255))).tolist() == [[[255, 0, 0]]]
    assert np.abs(rgb(Image.new("LAB", (1, 1), (255, 128, 128))) - 255).max() <= 1


def test_exif_orientation_and_first_frame(tmp_path):
    picture = np.zeros((20, 40, 3), np.uint8)
    picture[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it 90 degrees clockwise
    for fmt in ("JPEG", "PNG"):
        path = tmp_path / f"rotated.{fmt.lower()}"
        Image.fromarray(picture).save(path, fmt, exif=exif.tobytes())
        upright = np.asarray(open_rgb8(path)).astype(int)
        assert upright.shape == (40, 20, 3)
        assert upright[5, 10, 0] > 200 and upright[35, 10, 0] < 60  # the left half is now on top
    frames = [Image.new("RGB", (8, 8), c) for c in ((10, 200, 30), (250, 250, 250))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = np.asarray(open_rgb8(tmp_path / "anim.gif")).astype(int)
    assert np.abs(first - (10, 200, 30)).max() <= 8  # GIF palette quantisation


def test_kept_suffix_keeps_only_what_viewers_show_as_labelled(people):
    photo = people["portrait"]
    jpeg = encoded(photo, "JPEG", quality=90)
    assert kept_suffix(read_checked(jpeg), jpeg, ".JPEG") == ".jpeg"
    assert kept_suffix(read_checked(jpeg), jpeg, ".png") == ".jpg"  # JPEG bytes named .png
    png = encoded(photo, "PNG")
    assert kept_suffix(read_checked(png), png, ".png") == ".png"
    for data in (encoded(photo, "GIF"), encoded(photo, "TIFF"), encoded(photo, "BMP"), encoded(photo.convert("RGBA"), "PNG"),
                 encoded(Image.fromarray(RAMP8.astype(np.uint16) * 257), "PNG")):
        assert kept_suffix(read_checked(data), data, ".png") is None


def cut_and_terminated(data: bytes, fraction: float) -> bytes:
    """A JPEG cut at ``fraction`` of its bytes with an end-of-image marker appended: it decodes, grey at the end."""
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


def test_a_cut_jpeg_is_refused_even_where_pillow_would_load_it(people, monkeypatch):
    data = encoded(people["astronaut"], "JPEG", quality=90)
    cut = data[: len(data) * 6 // 10]
    with pytest.raises(OSError, match="truncated"):
        read_checked(cut)  # Pillow refuses it: an unreadable file
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in the pipeline turns Pillow lenient
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CorruptImage, match="end-of-image marker"):
        read_checked(cut)


def test_a_jpeg_whose_tail_the_decoder_filled_with_grey_is_corrupt(people):
    data = encoded(people["astronaut"], "JPEG", quality=90)
    garbled = cut_and_terminated(data, 0.6)
    decoded = np.asarray(Image.open(io.BytesIO(garbled)).convert("RGB"))
    assert (decoded[-100:] == 128).all()  # what a viewer shows: the bottom third is flat grey
    with pytest.raises(CorruptImage, match="flat mid-grey"):
        read_checked(garbled)
    zeroed = data[: len(data) * 6 // 10] + bytes(len(data) - len(data) * 6 // 10 - 2) + b"\xff\xd9"
    with pytest.raises(CorruptImage):
        read_checked(zeroed)  # the tail overwritten with zeros, the end marker kept
    garbage = bytearray(data)
    garbage[len(data) // 2: len(data) // 2 + 64] = b"\xff\x12" * 32  # a marker that cannot occur in scan data
    with pytest.raises((CorruptImage, OSError)):
        read_checked(bytes(garbage))


def test_a_png_cut_before_its_end_is_corrupt(people):
    data = encoded(people["portrait"], "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(CorruptImage, match="before its IEND"):
        read_checked(data[:-12])  # every pixel is there, the file is not
    at = data.index(b"IDAT")
    crc = at + 4 + int.from_bytes(data[at - 4:at], "big")
    flipped = bytearray(data)
    flipped[crc] ^= 0x01  # Pillow decodes it (it does not check IDAT CRCs); the file is still damaged
    Image.open(io.BytesIO(bytes(flipped))).load()
    with pytest.raises(CorruptImage, match="'IDAT' .* fails its CRC check"):
        read_checked(bytes(flipped))


HONEST_ENCODINGS = {"q75": {"quality": 75}, "q95": {"quality": 95}, "progressive": {"quality": 85, "progressive": True},
                    "4:4:4": {"quality": 90, "subsampling": 0}}


def test_no_honest_photo_is_corrupt(people):
    """The rule's thresholds on the real face photos, as stored (PNG), as JPEG of four kinds, in grey, and
    with flat backgrounds that are not the decoder's fill: letterboxed in mid-grey, white or black below."""
    import insightface
    import matplotlib

    files = sorted((Path(insightface.__file__).parent / "data" / "images").iterdir())
    files.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    photos = {**people, **{f.name: Image.open(f).convert("RGB") for f in files}}
    checked = 0
    for photo in photos.values():
        w, h = photo.size
        boxed = Image.new("RGB", (w, h + h // 2), (128, 128, 128))
        boxed.paste(photo, (0, h // 4))  # letterbox: grey bands above and below
        padded = Image.new("RGB", (w, h + h // 3), (255, 255, 255))
        padded.paste(photo, (0, 0))  # a crop padded below with white
        variants = [encoded(photo, "PNG"), encoded(photo.convert("L"), "JPEG", quality=85),
                    encoded(boxed, "JPEG", quality=90), encoded(padded, "JPEG", quality=90)]
        variants += [encoded(photo, "JPEG", **params) for params in HONEST_ENCODINGS.values()]
        for data in variants:
            read_checked(data)  # raises CorruptImage on a false alarm
            checked += 1
    for f in files:
        read_checked(f.read_bytes())  # the JPEG files as shipped
        checked += 1
    assert checked == len(photos) * 8 + len(files) >= 100
