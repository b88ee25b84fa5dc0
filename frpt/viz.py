"""Pictures for the app and reports, with numpy + PIL only: heatmap overlays, the DPP's sampling grid, boxes,
magnification maps and image grids. Every function takes and returns ``HxWx3 uint8`` arrays (tensors in [0, 1]
and PIL images are accepted as inputs) so the same code serves Streamlit, PNG downloads and tests.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ImageLike = np.ndarray | torch.Tensor | Image.Image

# Anchor colours of a perceptually ordered dark-to-bright map (close to matplotlib's "inferno").
_SEQUENTIAL = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                        [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float32)
# Diverging blue - white - red for magnification (< 1 compressed, 1 unchanged, > 1 magnified).
_DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
                      dtype=np.float32)
HIT, MISS, BOX = (46, 160, 67), (214, 39, 40), (0, 255, 127)


def to_uint8(image: ImageLike) -> np.ndarray:
    """``HxWx3 uint8`` from a (3,H,W)/(1,3,H,W) float tensor in [0, 1], a PIL image or an array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4:
            t = t[0]
        image = (t.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _lut(anchors: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(np.nan_to_num(t), 0, 1) * (len(anchors) - 1)
    lo = np.floor(t).astype(int).clip(0, len(anchors) - 2)
    frac = (t - lo)[..., None]
    return (anchors[lo] * (1 - frac) + anchors[lo + 1] * frac + 0.5).astype(np.uint8)


def colorize(values: np.ndarray | torch.Tensor, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map a 2-D array to colours of the sequential map; the range defaults to the array's min..max."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float32)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    return _lut(_SEQUENTIAL, (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v))


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height)."""
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_overlay(image: ImageLike, heat: np.ndarray | torch.Tensor, alpha: float = 0.55,
                    vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend a heatmap (any resolution, resized bilinearly) over ``image``.

    The colour range is the map's own min..max (the usual Grad-CAM display) unless ``vmin``/``vmax`` fix a shared
    scale; the heat also sets the opacity, so cold regions keep the photo visible.
    """
    base = to_uint8(image)
    h = np.asarray(heat.detach().float().cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32)
    h = _resize_map(np.squeeze(h), (base.shape[1], base.shape[0]))
    lo = float(h.min()) if vmin is None else vmin
    hi = float(h.max()) if vmax is None else vmax
    t = np.clip((h - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(h)
    colours = _lut(_SEQUENTIAL, t).astype(np.float32)
    weight = np.maximum(alpha * t, alpha * 0.2)[..., None]
    return (base * (1 - weight) + colours * weight + 0.5).astype(np.uint8)


def magnification_image(density: np.ndarray | torch.Tensor, size: int | None = None, limit: float = 4.0) -> np.ndarray:
    """Colour a sampling-density map (1 = unchanged) on a log scale: red magnified, blue compressed.

    ``limit`` is the factor shown at full saturation (x4 and /4 by default); ``size`` upsamples (nearest).
    """
    d = np.asarray(density.detach().cpu() if isinstance(density, torch.Tensor) else density, dtype=np.float32)
    d = np.squeeze(d)
    t = np.log2(np.maximum(d, 1e-3)) / np.log2(limit)
    rgb = _lut(_DIVERGING, (t + 1) / 2)
    if size is not None:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST))
    return rgb


def draw_grid(image: ImageLike, grid: np.ndarray | torch.Tensor, lines: int = 16,
              color: tuple[int, int, int] = (255, 255, 0), width: int = 1) -> np.ndarray:
    """Draw the deformed sampling grid on the *input* image.

    ``grid`` is one (H, W, 2) sampling grid in [-1, 1] (``align_corners=True``): output pixel (i, j) reads input
    point grid[i, j]. Drawing ``lines`` evenly spaced output rows and columns at those input points shows where
    the warped image's uniform pixel lattice lands: dense where the DPP magnifies.
    """
    base = Image.fromarray(to_uint8(image))
    g = np.asarray(grid.detach().float().cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.float32)
    g = np.squeeze(g)
    gh, gw = g.shape[:2]
    w, h = base.size
    px = (g[..., 0] + 1) / 2 * (w - 1)
    py = (g[..., 1] + 1) / 2 * (h - 1)
    draw = ImageDraw.Draw(base)
    for r in np.unique(np.linspace(0, gh - 1, lines).round().astype(int)):
        draw.line(list(zip(px[r].tolist(), py[r].tolist())), fill=color, width=width)
    for c in np.unique(np.linspace(0, gw - 1, lines).round().astype(int)):
        draw.line(list(zip(px[:, c].tolist(), py[:, c].tolist())), fill=color, width=width)
    return np.asarray(base)


def draw_box(image: ImageLike, box: Sequence[float] | None, color: tuple[int, int, int] = BOX,
             width: int = 2) -> np.ndarray:
    """Draw an (x, y, w, h) box in the image's pixels; ``None`` draws nothing."""
    base = Image.fromarray(to_uint8(image))
    if box is not None:
        x, y, bw, bh = (float(v) for v in box)
        ImageDraw.Draw(base).rectangle((x, y, x + max(bw - 1, 0), y + max(bh - 1, 0)), outline=color, width=width)
    return np.asarray(base)


def box_to_unit(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of a (width, height) image -> (x0, y0, x1, y1) in the [-1, 1] coordinates of
    ``grid_sample(align_corners=True)``, for :func:`frpt.models.focus_score`."""
    x, y, bw, bh = (float(v) for v in box)
    w, h = size
    return (2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1, 2 * (x + bw - 1) / (w - 1) - 1, 2 * (y + bh - 1) / (h - 1) - 1)


def frame(image: ImageLike, color: tuple[int, int, int], width: int = 4) -> np.ndarray:
    """Image with a coloured border (retrieval hits green, misses red)."""
    arr = to_uint8(image).copy()
    arr[:width], arr[-width:], arr[:, :width], arr[:, -width:] = color, color, color, color
    return arr


def image_grid(images: Sequence[ImageLike], cols: int = 4, pad: int = 4, size: int | None = None,
               background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Tile images row by row; each is resized to ``size`` x ``size`` (default: the first image's size)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    tiles = [to_uint8(im) for im in images]
    s = size or tiles[0].shape[0]
    tiles = [t if t.shape[:2] == (s, s) else np.asarray(Image.fromarray(t).resize((s, s), Image.Resampling.BILINEAR))
             for t in tiles]
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    out = np.empty((rows * s + (rows + 1) * pad, cols * s + (cols + 1) * pad, 3), np.uint8)
    out[:] = background
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        out[y:y + s, x:x + s] = t
    return out


def label(image: ImageLike, text: str, size: int | None = None) -> np.ndarray:
    """Image with ``text`` on a dark band along its bottom edge: numbers for figures that have no captions (a PNG
    download of a gallery); ``size`` is the font's pixel height (default: 1/13 of the image, at least 9)."""
    base = Image.fromarray(to_uint8(image))
    if not text:
        return np.asarray(base)
    w, h = base.size
    px = size or max(9, h // 13)
    draw = ImageDraw.Draw(base, "RGBA")
    draw.rectangle((0, h - px - 4, w, h), fill=(0, 0, 0, 170))
    draw.text((3, h - px - 3), text, fill=(255, 255, 255, 255), font=ImageFont.load_default(px))
    return np.asarray(base.convert("RGB"))


def png_bytes(image: ImageLike) -> bytes:
    """PNG encoding of an image (for downloads)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["to_uint8", "colorize", "heatmap_overlay", "magnification_image", "draw_grid", "draw_box", "box_to_unit",
           "frame", "image_grid", "label", "png_bytes", "HIT", "MISS", "BOX"]
