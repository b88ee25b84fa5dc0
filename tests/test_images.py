"""open_image: hostile inputs raise one-sentence ImageErrors; valid oddities become RGB."""
from __future__ import annotations

import io
import os
import resource
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from frpt.data import open_image
from frpt.errors import FRPTError, ImageError


# ---------------------------------------------------------------- helpers

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all zeros: a few hundred KB that decode to ~width*height bytes."""
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def noise_image(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def assert_one_sentence(err: pytest.ExceptionInfo, name: str) -> str:
    msg = str(err.value)
    assert name in msg, msg
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.endswith("."), msg
    assert "Traceback" not in msg
    msg.encode("utf-8")  # printable
    return msg


# ---------------------------------------------------------------- hostile corpus

@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    jpeg = encoded(noise_image(256, 192), "JPEG", quality=90)
    png = encoded(noise_image(64, 48), "PNG")
    files = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "header_only.jpg": jpeg[:200],
        "random.jpg": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "page.png": b"<!DOCTYPE html>\n<html><head><title>cat</title></head><body><img src='cat.jpg'></body></html>\n",
        "drawing.png": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n',
        "bomb.png": bomb_png(30000, 30000),
        "text.jpg": b"just some text, definitely not a JPEG\n" * 10,
    }
    # Corrupt PNG: valid signature and header, IDAT payload replaced by garbage (CRC recomputed).
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    files["corrupt.png"] = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                            + _png_chunk(b"IDAT", b"\x78\x9c" + os.urandom(0) + bytes(range(200)))
                            + _png_chunk(b"IEND", b""))
    # Corrupt JPEG: valid markers, entropy-coded data destroyed in the middle.
    bad = bytearray(jpeg)
    bad[len(bad) // 3: len(bad) // 3 + 400] = b"\xff" * 400
    files["corrupt.jpg"] = bytes(bad)
    out = {}
    for name, data in files.items():
        p = d / name
        p.write_bytes(data)
        out[name] = p
    return out


HOSTILE_NAMES = ["empty.jpg", "truncated.jpg", "truncated.png", "header_only.jpg", "random.jpg", "page.png",
                 "drawing.png", "bomb.png", "text.jpg", "corrupt.png"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_raises_one_sentence(hostile, name):
    with pytest.raises(ImageError) as err:
        open_image(hostile[name])
    assert isinstance(err.value, FRPTError)
    assert_one_sentence(err, name)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_bytes_name_the_upload(hostile, name):
    with pytest.raises(ImageError) as err:
        open_image(hostile[name].read_bytes())
    assert_one_sentence(err, "uploaded image")


def test_corrupt_jpeg_never_escapes_as_other_exception(hostile):
    # libjpeg may or may not detect garbled entropy data; it must either decode to RGB or raise ImageError.
    try:
        im = open_image(hostile["corrupt.jpg"])
    except ImageError as exc:
        assert "corrupt.jpg" in str(exc)
    else:
        assert im.mode == "RGB" and im.size == (256, 192)


def test_specific_reasons(hostile):
    cases = {"empty.jpg": "empty", "truncated.jpg": "truncated", "page.png": "HTML", "drawing.png": "SVG",
             "bomb.png": "bomb"}
    for name, word in cases.items():
        with pytest.raises(ImageError, match=word):
            open_image(hostile[name])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_refused_before_decoding(tmp_path):
    # 8000 x 8000 is under Pillow's own bomb limit but over our 40 M default, so only the header check stops it.
    p = tmp_path / "big.png"
    p.write_bytes(bomb_png(8000, 8000))
    assert p.stat().st_size < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        with pytest.raises(ImageError, match="8000x8000") as err:
            open_image(p)
        assert_one_sentence(err, "big.png")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 40_000, f"peak RSS grew by {grown_kib} KiB: the bomb was decoded"
    # Between Pillow's warning and error thresholds, even with warnings turned into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="bomb"):
            open_image(bomb_png(10000, 10000), max_pixels=500_000_000)
    # A valid PNG is accepted when the caller raises the limit deliberately.
    assert open_image(bomb_png(300, 200), max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageError):
        open_image(bomb_png(300, 200), max_pixels=59_999)


def test_over_size_bytes(tmp_path):
    data = encoded(noise_image(64, 64), "PNG")
    p = tmp_path / "large.png"
    p.write_bytes(data)
    with pytest.raises(ImageError, match="limit") as err:
        open_image(p, max_bytes=len(data) - 1)
    assert_one_sentence(err, "large.png")
    with pytest.raises(ImageError, match="limit"):
        open_image(data, max_bytes=len(data) - 1)
    assert open_image(p, max_bytes=len(data)).size == (64, 64)


def test_missing_directory_and_bad_type(tmp_path):
    with pytest.raises(ImageError, match="does not exist") as err:
        open_image(tmp_path / "nope.jpg")
    assert_one_sentence(err, "nope.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError, match="directory") as err:
        open_image(tmp_path / "folder.jpg")
    assert_one_sentence(err, "folder.jpg")
    with pytest.raises(ImageError):
        open_image(12345)  # type: ignore[arg-type]
    with pytest.raises(ImageError) as err:
        open_image(b"", name="cat.jpg")
    assert_one_sentence(err, "cat.jpg")


def test_non_utf8_filename_message_prints(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9\nx.jpg")
    with open(raw, "wb"):
        pass
    with pytest.raises(ImageError) as err:
        open_image(os.fsdecode(raw))  # str with surrogate escapes (bytes would mean file *content*)
    msg = assert_one_sentence(err, "caf")
    assert "\ufffd" in msg


def test_file_is_closed_and_image_loaded(tmp_path):
    p = tmp_path / "ok.jpg"
    noise_image().save(p, "JPEG")
    fds = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    im = open_image(p)
    if fds is not None:
        assert set(os.listdir("/proc/self/fd")) <= fds | set()  # no descriptor left open
    p.unlink()
    assert im.mode == "RGB" and im.size == (96, 64)
    im.getpixel((5, 5))


# ---------------------------------------------------------------- valid oddities

def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # pure red in CMYK
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (40, 30)
    r, g, b = im.getpixel((20, 15))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("value,expected", [(0, 0), (32768, 128), (65535, 255), (1000, 4)])
def test_16bit_grey_png_scaled_not_clipped(tmp_path, value, expected):
    p = tmp_path / "grey16.png"
    Image.fromarray(np.full((20, 30), value, np.uint16)).save(p)
    with Image.open(p) as raw:
        assert raw.mode in ("I;16", "I")
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (30, 20)
    assert all(abs(c - expected) <= 1 for c in im.getpixel((3, 3))), im.getpixel((3, 3))


def test_16bit_gradient_keeps_order(tmp_path):
    p = tmp_path / "ramp16.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))).save(p)
    row = np.asarray(open_image(p))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all() and len(set(row)) > 50


def test_palette_with_transparency(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    im.paste(0, (0, 0, 5, 10))
    im.save(p, transparency=0)
    out = open_image(p)
    assert out.mode == "RGB" and out.size == (10, 10)
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent -> white, not black
    assert out.getpixel((8, 1)) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "pal_opaque.png"
    noise_image(20, 10).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p)
    out = open_image(p)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 4, 6))
    rgba.save(tmp_path / "a.png")
    out = open_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (8, 6)
    assert out.getpixel((6, 2)) == (255, 255, 255) and out.getpixel((1, 2)) == (0, 0, 255)

    la = Image.new("LA", (8, 6), (0, 0))
    la.paste((0, 255), (0, 0, 4, 6))
    la.save(tmp_path / "la.png")
    out = open_image(tmp_path / "la.png")
    assert out.mode == "RGB" and out.getpixel((6, 2)) == (255, 255, 255) and out.getpixel((1, 2)) == (0, 0, 0)


def test_grayscale_bilevel_and_1x1(tmp_path):
    Image.new("L", (7, 5), 77).save(tmp_path / "g.jpg", quality=100)
    out = open_image(tmp_path / "g.jpg")
    assert out.mode == "RGB" and out.size == (7, 5) and abs(out.getpixel((3, 2))[0] - 77) <= 2

    Image.new("1", (9, 4), 1).save(tmp_path / "b.png")
    assert open_image(tmp_path / "b.png").getpixel((0, 0)) == (255, 255, 255)

    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    out = open_image(tmp_path / "one.png")
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (10, 20, 30)


def test_bytes_and_other_formats_ok():
    im = noise_image(33, 17)
    for fmt in ("PNG", "BMP", "WEBP", "GIF", "TIFF"):
        out = open_image(encoded(im, fmt))
        assert out.mode == "RGB" and out.size == (33, 17), fmt
