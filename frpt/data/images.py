"""Safe image decoding: every input becomes an RGB ``PIL.Image`` or one :class:`ImageError` sentence.

Used for dataset files and for uploads in the app. The whole file is read into memory first
(bounded by ``max_bytes``), so the file is closed on return, and the pixel count is checked from
the header before any pixel data are decoded, so a decompression bomb never allocates its canvas.
Truncated files are refused: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at False.
"""
from __future__ import annotations

import io
import os
import re
import stat

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from frpt.errors import ImageError

__all__ = ["open_image", "display_path", "IMAGE_FORMATS"]

#: Raster formats we let Pillow decode. Exotic plugins (EPS runs Ghostscript, PSD, FITS, ...) are
#: refused: they are never needed for photos and widen the attack surface for uploads.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM", "AVIF", "ICO")

_FIX = "re-export it as JPEG or PNG"


def display_path(path: str | os.PathLike | bytes) -> str:
    """Return ``path`` as a printable one-line string (undecodable bytes become U+FFFD)."""
    text = os.fsdecode(path)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _safe_formats() -> list[str]:
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def _sniff(head: bytes) -> str | None:
    """Name a recognisable non-image document (HTML page, SVG drawing) from its first bytes."""
    text = head[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "an SVG vector drawing, not a raster image; export it as PNG or JPEG"
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text or b"<body" in text:
        return "an HTML page, not an image (probably a saved web page); save the picture itself as JPEG or PNG"
    if text.startswith((b"<?xml", b"<")):
        return "an XML/text document, not an image; choose a JPEG or PNG file"
    if text.startswith(b"%pdf"):
        return "a PDF document, not an image; export the page as PNG or JPEG"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.float32) / 257.0).round()
        elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr8 = (arr.astype(np.float32) / 257.0).round()  # 16-bit data held in a 32-bit mode
        elif mode == "F" and arr.size and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            arr8 = (arr * 255.0).round()
        else:  # arbitrary range: stretch min..max to 0..255
            arr = np.nan_to_num(arr.astype(np.float64))
            lo, hi = float(arr.min()), float(arr.max())
            arr8 = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        grey = Image.fromarray(np.clip(arr8, 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")


def open_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 50 * 2**20,
    name: str | None = None,
    exif_transpose: bool = False,
) -> Image.Image:
    """Decode ``source`` (a path or the raw bytes of an upload) into a fully loaded RGB image.

    ``name`` labels the input in error messages (default: the path, or "uploaded image" for bytes).
    ``exif_transpose`` applies the EXIF orientation tag (useful for phone uploads; off by default so
    dataset boxes stay in stored-pixel coordinates, as in torchvision and the released FRPT code).
    Raises :class:`ImageError` with one sentence for anything that is not a safe, readable image.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = display_path(name) if name else "uploaded image"
        data = bytes(source)
        if not data:
            raise ImageError(f"{label} is empty (0 bytes); choose a JPEG or PNG image.")
        if len(data) > max_bytes:
            raise ImageError(
                f"{label} is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit; "
                "resize or recompress it."
            )
    else:
        try:
            path = os.fspath(source)
        except TypeError:
            raise ImageError(
                f"cannot open an image from a {type(source).__name__}; pass a file path or bytes."
            ) from None
        label = display_path(name) if name else display_path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageError(f"{label} does not exist; check the path.") from None
        except OSError as exc:
            raise ImageError(f"{label} cannot be accessed ({exc.strerror or exc}); check the path and permissions.") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{label} is a directory, not an image file; pass an image file inside it.")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{label} is not a regular file; pass a JPEG or PNG image file.")
        if st.st_size == 0:
            raise ImageError(f"{label} is empty (0 bytes); re-export or re-download it as JPEG or PNG.")
        if st.st_size > max_bytes:
            raise ImageError(
                f"{label} is {st.st_size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit; "
                "resize or recompress it."
            )
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"{label} cannot be read ({exc.strerror or exc}); check its permissions.") from None
        if len(data) > max_bytes:  # grew while we looked
            raise ImageError(f"{label} is over the {max_bytes / 2**20:.0f} MiB limit; resize or recompress it.")
        if not data:
            raise ImageError(f"{label} is empty (0 bytes); re-export or re-download it as JPEG or PNG.")
    return _decode(data, label, max_pixels, exif_transpose)


def _decode(data: bytes, label: str, max_pixels: int, exif_transpose: bool) -> Image.Image:
    # Never let a caller's global setting make us accept half an image silently.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            f"{label} was not decoded because PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this "
            "process; leave it False so truncated files are detected."
        )
    # No warnings.catch_warnings() here: it is not thread-safe (Streamlit serves sessions from
    # threads). Pillow's DecompressionBombWarning is harmless (we refuse such sizes ourselves) and
    # is caught below in case a caller turned warnings into errors.
    try:
        im = Image.open(io.BytesIO(data), formats=_safe_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f" ({int(found.group(1)):,} pixels)" if found else ""
        raise ImageError(
            f"{label} declares too many pixels{count} to decode safely (possible decompression bomb); "
            f"use an image under {max_pixels:,} pixels."
        ) from None
    except UnidentifiedImageError:
        what = _sniff(data)
        if what:
            raise ImageError(f"{label} is {what}.") from None
        raise ImageError(
            f"{label} is not a readable image (unknown or unsupported format); {_FIX}."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise ImageError(f"{label} is not a readable image ({_reason(exc)}); {_FIX}.") from None

    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{label} has an empty size ({width}x{height}); {_FIX}.")
    if width * height > max_pixels:
        raise ImageError(
            f"{label} is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,}-pixel "
            "limit (possible decompression bomb); downscale it first."
        )
    try:
        im.load()
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        rgb = _to_rgb(im)
        rgb.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{label} declares too many pixels to decode safely (possible decompression bomb); "
            f"use an image under {max_pixels:,} pixels."
        ) from None
    except MemoryError:
        raise ImageError(f"{label} is too large to decode in the available memory; downscale it first.") from None
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{label} is not a readable image ({_reason(exc)}); {_FIX}.") from None
    if rgb is im:
        rgb = im.copy()  # detach from the decoder object and its buffer
    return rgb


def _reason(exc: BaseException) -> str:
    """A short lowercase reason for a Pillow/OS decoding exception, without newlines."""
    text = " ".join(str(exc).split()).rstrip(".")
    low = text.lower()
    if "truncated" in low or isinstance(exc, EOFError):
        return "truncated or incomplete data"
    if "broken data stream" in low or "corrupt" in low or "crc" in low or "broken png" in low:
        return "corrupt image data"
    if not text:
        return type(exc).__name__
    text = text if len(text) <= 80 else text[:77] + "..."
    return display_path(text)
