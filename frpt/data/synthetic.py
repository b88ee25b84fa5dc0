"""A built-in, deterministic fine-grained retrieval set that needs no files ("synthetic beetles").

Every image shows one stylised beetle (the single meta-category) on a cluttered background. All
classes share the same body distribution (random size, shade, pose, flip, position); a class is
defined ONLY by a small marker on the beetle's back: its shape x colour x pattern. Decoy markers
with random attributes are scattered in the background, so global colour/shape statistics do not
identify the class and a model has to find and read the part on the body - the situation FRPT's
DPP (part sampling) and CAH (category-specific features) target. ``box(i)`` is the marker's
ground-truth box. Train and test classes use disjoint attribute combinations (zero-shot).

Image ``i`` of a split is generated from ``numpy.random.default_rng([seed, split, i])``, so it is
identical across calls, instances and processes; one 128-px image takes about 1-2 ms.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from frpt.data.base import Box, RetrievalDataset, check_split
from frpt.errors import DatasetError

__all__ = ["SyntheticDataset", "build_synthetic", "PART_SHAPES", "PART_COLOURS", "PART_PATTERNS", "class_table"]

PART_SHAPES = ("circle", "square", "triangle", "diamond")
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "yellow": (245, 215, 25),
    "cyan": (25, 205, 230),
    "magenta": (215, 45, 205),
    "white": (250, 250, 250),
}
PART_PATTERNS = ("solid", "striped", "dotted")
_BODY_TONES = ((92, 60, 34), (70, 84, 40), (58, 50, 46), (110, 72, 40), (50, 64, 70))
_SS = 3  # supersampling factor for the marker patch
_CLASS_ORDER_SEED = 20230207  # fixed: the class table does not depend on the image seed


def class_table(num_classes: int) -> list[tuple[str, str, str]]:
    """The (shape, colour, pattern) of classes 0..num_classes-1: a fixed shuffle of all combinations."""
    combos = list(itertools.product(PART_SHAPES, PART_COLOURS, PART_PATTERNS))
    if not 2 <= num_classes <= len(combos):
        raise DatasetError(f"synthetic num_classes={num_classes} is not possible; use 2..{len(combos)}.")
    order = np.random.default_rng(_CLASS_ORDER_SEED).permutation(len(combos))
    return [combos[k] for k in order[:num_classes]]


def _rot(points, cx: float, cy: float, cos: float, sin: float) -> list[tuple[float, float]]:
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _marker_patch(shape: str, colour: tuple[int, int, int], pattern: str, side: float) -> tuple[Image.Image, Image.Image]:
    """Marker drawn axis-aligned at _SS x resolution: (RGB patch, L mask)."""
    n = max(6, int(round(side * _SS)))
    rgb = Image.new("RGB", (n, n), colour)
    mask = Image.new("L", (n, n), 0)
    dm, dr = ImageDraw.Draw(mask), ImageDraw.Draw(rgb)
    e = n - 1
    if shape == "circle":
        dm.ellipse((0, 0, e, e), fill=255)
    elif shape == "square":
        m = n * 0.1
        dm.rectangle((m, m, e - m, e - m), fill=255)
    elif shape == "triangle":
        dm.polygon([(0, 0), (e, e / 2), (0, e)], fill=255)  # points towards the head (+x)
    else:  # diamond
        dm.polygon([(e / 2, 0), (e, e / 2), (e / 2, e), (0, e / 2)], fill=255)
    ink = (20, 20, 20)
    if pattern == "striped":
        band = n / 6
        for k in range(1, 6, 2):
            dr.rectangle((k * band, 0, (k + 1) * band - 1, e), fill=ink)
    elif pattern == "dotted":
        r = n * 0.2
        dr.ellipse((n / 2 - r, n / 2 - r, n / 2 + r, n / 2 + r), fill=ink)
    return rgb, mask


class SyntheticDataset(RetrievalDataset):
    """Generated beetles whose class is a small marker's shape x colour x pattern (see module doc)."""

    def __init__(
        self,
        split: str,
        transform: Callable | None = None,
        *,
        num_classes: int = 20,
        images_per_class: int = 24,
        image_size: int = 128,
        seed: int = 0,
    ) -> None:
        check_split(split)
        if not 32 <= int(image_size) <= 1024:
            raise DatasetError(f"synthetic image_size={image_size} is not supported; use 32..1024 pixels.")
        if int(images_per_class) < 1:
            raise DatasetError(f"synthetic images_per_class={images_per_class} is not possible; use 1 or more.")
        table = class_table(int(num_classes))
        half = len(table) // 2
        self.attributes: list[tuple[str, str, str]] = table[:half] if split == "train" else table[half:]
        self.image_size = int(image_size)
        self.images_per_class = int(images_per_class)
        self.seed = int(seed)
        self._split_id = 0 if split == "train" else 1
        classes = [f"{c}-{s}-{p}" for s, c, p in self.attributes]
        samples = [
            (f"synthetic/{split}/{k:05d}", k // self.images_per_class)
            for k in range(len(classes) * self.images_per_class)
        ]
        super().__init__("synthetic", split, classes, samples, transform, None, None)
        self._box_cache: dict[int, Box] = {}

    def load_image(self, i: int) -> Image.Image:
        return self.render(i)[0]

    def box(self, i: int) -> Box:
        i = self._index(i)
        if i not in self._box_cache:
            self.render(i)
        return self._box_cache[i]

    def render(self, i: int) -> tuple[Image.Image, Box]:
        """Generate image ``i`` and its marker box (x, y, w, h); pure function of (seed, split, i)."""
        i = self._index(i)
        label = self.samples[i][1]
        shape, colour_name, pattern = self.attributes[label]
        S = self.image_size
        rng = np.random.default_rng([self.seed, self._split_id, i])
        u = rng.uniform

        img = Image.new("RGB", (S, S), tuple(int(v) for v in rng.integers(70, 215, 3)))
        draw = ImageDraw.Draw(img)
        # Background clutter: random shapes and strokes of any colour.
        for _ in range(int(rng.integers(6, 12))):
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = u(-0.1, 1.0) * S, u(-0.1, 1.0) * S
            w, h = u(0.05, 0.3) * S, u(0.05, 0.3) * S
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse((x, y, x + w, y + h), fill=col)
            elif kind == 1:
                draw.rectangle((x, y, x + w, y + h), fill=col)
            else:
                draw.line((x, y, x + w, y + h), fill=col, width=max(1, int(S * u(0.01, 0.04))))

        # Pose of the beetle (body frame: +x towards the head).
        length = u(0.42, 0.6) * S
        width = length * u(0.5, 0.62)
        theta = u(0.0, 2 * math.pi)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        cos, sin = math.cos(theta), math.sin(theta)
        head_r = width * 0.28
        reach = length / 2 + head_r * 2.2
        lo, hi = min(reach, S / 2), max(S - reach, S / 2)
        cx, cy = u(lo, hi), u(lo, hi)
        tone = _BODY_TONES[int(rng.integers(0, len(_BODY_TONES)))]
        body_col = tuple(int(np.clip(c + rng.integers(-22, 23), 0, 255)) for c in tone)
        dark = tuple(max(0, c - 40) for c in body_col)

        # Decoy markers with random attributes, drawn before the body (it may cover them).
        part_side = u(0.085, 0.11) * S
        for _ in range(2):
            d_shape = PART_SHAPES[int(rng.integers(0, len(PART_SHAPES)))]
            d_col = list(PART_COLOURS.values())[int(rng.integers(0, len(PART_COLOURS)))]
            d_pat = PART_PATTERNS[int(rng.integers(0, len(PART_PATTERNS)))]
            self._paste_marker(img, d_shape, d_col, d_pat, part_side, u(0, S), u(0, S), u(0, 360), False)

        # Legs and antennae, then body and head.
        hw = width / 2
        for k, fx in enumerate((-0.25, 0.0, 0.25)):
            for side in (-1, 1):
                kink = (fx * length + 0.08 * length * (k - 1), side * (hw + 0.22 * length))
                tip = (fx * length + 0.12 * length * (k - 1), side * (hw + 0.32 * length))
                draw.line(_rot([(fx * length, 0), kink, tip], cx, cy, cos, sin), fill=dark, width=max(1, int(S / 64)))
        hx = length / 2 + head_r * 0.6
        for side in (-1, 1):
            ant = [(hx, 0), (hx + head_r * 1.6, side * head_r * 1.2)]
            draw.line(_rot(ant, cx, cy, cos, sin), fill=dark, width=max(1, int(S / 96)))
        ellipse = [(length / 2 * math.cos(t), hw * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 28, endpoint=False)]
        draw.polygon(_rot(ellipse, cx, cy, cos, sin), fill=body_col, outline=dark)
        (hx_, hy_), = _rot([(hx, 0)], cx, cy, cos, sin)
        draw.ellipse((hx_ - head_r, hy_ - head_r, hx_ + head_r, hy_ + head_r), fill=dark)
        draw.line(_rot([(-length / 2, 0), (length * 0.05, 0)], cx, cy, cos, sin), fill=dark, width=1)

        # Pixel noise as texture, then the discriminative marker on the back, on top.
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-10, 11, (S, S, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        px, py = -0.16 * length, flip * 0.1 * width
        (mx, my), = _rot([(px, py)], cx, cy, cos, sin)
        box = self._paste_marker(img, shape, PART_COLOURS[colour_name], pattern, part_side, mx, my,
                                 -math.degrees(theta), flip < 0)
        self._box_cache[i] = box
        return img, box

    @staticmethod
    def _paste_marker(img: Image.Image, shape: str, colour, pattern: str, side: float,
                      x: float, y: float, angle_deg: float, mirror: bool) -> Box:
        rgb, mask = _marker_patch(shape, colour, pattern, side)
        if mirror:
            rgb, mask = rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM), mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        rgb = rgb.rotate(angle_deg, Image.Resampling.BILINEAR, expand=True)
        mask = mask.rotate(angle_deg, Image.Resampling.BILINEAR, expand=True)
        n = max(1, round(rgb.width / _SS))
        rgb = rgb.resize((n, n), Image.Resampling.BOX)
        mask = mask.resize((n, n), Image.Resampling.BOX)
        ox, oy = int(round(x - n / 2)), int(round(y - n / 2))
        img.paste(rgb, (ox, oy), mask)
        bb = mask.point(lambda v: 255 if v >= 96 else 0).getbbox() or (0, 0, n, n)
        S_w, S_h = img.size
        x0, y0 = max(0, ox + bb[0]), max(0, oy + bb[1])
        x1, y1 = min(S_w, ox + bb[2]), min(S_h, oy + bb[3])
        return (float(x0), float(y0), float(max(0, x1 - x0)), float(max(0, y1 - y0)))


def build_synthetic(
    split: str,
    root: str | None = None,
    transform: Callable | None = None,
    *,
    num_classes: int = 20,
    images_per_class: int = 24,
    image_size: int = 128,
    seed: int = 0,
) -> SyntheticDataset:
    """The generated dataset; ``root`` is ignored (nothing is read from disk)."""
    return SyntheticDataset(split, transform, num_classes=num_classes, images_per_class=images_per_class,
                            image_size=image_size, seed=seed)
