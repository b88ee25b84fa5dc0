"""Train/test transforms. Outputs are float tensors in [0, 1], NOT normalised.

The model normalises internally with its backbone's mean/std, because the DPP warp (paper §1.4)
resamples the image before normalisation. Sizes scale with the input size ``s``: the paper's
256 -> 224 becomes round(s * 256 / 224) -> s.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from frpt.errors import ConfigError

__all__ = ["build_transform", "test_geometry", "transform_box", "resize_size", "RECIPES", "IMAGENET_MEAN"]

RECIPES = ("paper", "official")
#: Random-erasing fill: the ImageNet mean, i.e. 0 after the model's normalisation (as in REA on normalised input).
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def resize_size(input_size: int) -> int:
    """Side of the square resize before cropping: 256 for a 224 input, proportional otherwise."""
    return int(round(input_size * 256 / 224))


def test_geometry(input_size: int) -> Callable[[Image.Image], Image.Image]:
    """The test transform's PIL part (square bicubic resize, centre crop): what a page shows of an image, with no
    float round trip (the test transform is this, then ``ToTensor``)."""
    r = resize_size(input_size)
    return T.Compose([T.Resize((r, r), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(input_size)])


def build_transform(input_size: int, *, train: bool, recipe: str = "paper") -> Callable[[Image.Image], torch.Tensor]:
    """Return the PIL -> tensor transform.

    Test (both recipes): Resize((r, r), bicubic), CenterCrop(s), r = round(s*256/224).
    Train "paper" (paper §Implementation: resize 256x256, random crop 224, flip, colour jitter,
    random erasing): Resize((r, r), bicubic), RandomCrop(s), HorizontalFlip(0.5),
    ColorJitter(0.2, 0.2, 0.2, 0), RandomErasing(p=0.5, scale=(0.02, 0.2), fill=ImageNet mean).
    Train "official" (released code, cub.yml): Resize((r, r), bicubic),
    RandomResizedCrop(s, scale=(0.16, 1), ratio=(3/4, 4/3), bicubic), HorizontalFlip(0.5),
    ColorJitter(0.25, 0.25, 0.25, 0) with p=0.5, no erasing.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"augmentation recipe {recipe!r} is unknown; use one of: {', '.join(RECIPES)}.")
    try:
        s = int(input_size)
    except (TypeError, ValueError):
        s = 0
    if s < 8 or s != input_size:
        raise ConfigError(f"input size {input_size!r} is not usable; use a whole number of pixels such as 224.")
    r = resize_size(s)
    bicubic = InterpolationMode.BICUBIC
    resize = T.Resize((r, r), interpolation=bicubic)
    if not train:
        return T.Compose([test_geometry(s), T.ToTensor()])
    if recipe == "paper":
        return T.Compose([
            resize,
            T.RandomCrop(s),
            T.RandomHorizontalFlip(0.5),
            T.ColorJitter(0.2, 0.2, 0.2, 0.0),
            T.ToTensor(),
            T.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3), value=IMAGENET_MEAN),
        ])
    return T.Compose([
        resize,
        T.RandomResizedCrop(s, scale=(0.16, 1.0), ratio=(3 / 4, 4 / 3), interpolation=bicubic),
        T.RandomHorizontalFlip(0.5),
        T.RandomApply([T.ColorJitter(0.25, 0.25, 0.25, 0.0)], p=0.5),
        T.ToTensor(),
    ])


def transform_box(
    box: tuple[float, float, float, float],
    image_size: tuple[int, int],
    input_size: int,
) -> tuple[float, float, float, float]:
    """Map an (x, y, w, h) box in original pixels (image_size = (width, height)) to the pixels of the
    test transform's output (s x s), clipped to the crop; a box outside the crop gets w = h = 0."""
    x, y, w, h = (float(v) for v in box)
    width, height = image_size
    s = int(input_size)
    r = resize_size(s)
    # torchvision's center_crop offset: int(round((r - s) / 2)).
    off = int(round((r - s) / 2.0))
    sx, sy = r / float(width), r / float(height)
    x0, x1 = x * sx - off, (x + w) * sx - off
    y0, y1 = y * sy - off, (y + h) * sy - off
    x0, x1 = min(max(x0, 0.0), s), min(max(x1, 0.0), s)
    y0, y1 = min(max(y0, 0.0), s), min(max(y1, 0.0), s)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))
