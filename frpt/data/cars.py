"""Stanford Cars-196 (Krause et al. 2013) in the retrieval layout: ``cars_annos.mat`` + ``car_ims/``.

Classes 1-98 train (8,054 images), 99-196 test (8,131), FRPT paper §3; the mat's ``test`` flag is
ignored because retrieval splits by class. Boxes come from bbox_x1..bbox_y2, read as 1-based
inclusive MATLAB pixel coordinates.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from frpt.data.base import (
    Box,
    RetrievalDataset,
    check_classes_nonempty,
    check_files,
    check_split,
    require_file,
)
from frpt.data.images import display_path
from frpt.errors import DatasetError

__all__ = ["build_cars"]


def _scalar(value):
    """Unwrap the nested 0-d/1-element arrays scipy.io.loadmat produces."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            break
        value = value.reshape(-1)[0]
    return value


def _text(value) -> str:
    value = _scalar(value)
    if isinstance(value, np.ndarray):  # char array
        value = "".join(str(v) for v in value.reshape(-1))
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def build_cars(
    split: str,
    root: str | os.PathLike,
    transform: Callable | None = None,
) -> RetrievalDataset:
    """Cars-196 retrieval split read from ``<root>/cars_annos.mat`` (image paths relative to root)."""
    check_split(split)
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"Cars root {display_path(root)} does not exist; pass --root pointing at the folder with cars_annos.mat and car_ims/.")
    mat_path = require_file(os.path.join(root, "cars_annos.mat"), "Cars metadata file")
    try:
        import scipy.io
    except ImportError:
        raise DatasetError("reading cars_annos.mat needs scipy; install it with 'pip install scipy'.") from None
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
        annos = np.atleast_1d(mat["annotations"])
        fields = annos.dtype.names or ()
        paths = [_text(a) for a in annos["relative_im_path"]]
        cls = [int(_scalar(c)) for c in annos["class"]]
    except Exception as exc:  # noqa: BLE001 - any malformed .mat is a dataset problem
        raise DatasetError(
            f"{display_path(mat_path)} is not a valid Cars annotation file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:80]}); restore the original cars_annos.mat."
        ) from None

    names: list[str] | None = None
    if "class_names" in mat:
        try:
            names = [_text(n) for n in np.atleast_1d(mat["class_names"]).reshape(-1)]
        except Exception:  # noqa: BLE001
            names = None
    n_classes = len(names) if names else max(cls, default=0)
    if n_classes < 2 or min(cls, default=1) < 1 or max(cls, default=0) > n_classes:
        raise DatasetError(f"{display_path(mat_path)} has class ids outside 1..{n_classes}; restore the original cars_annos.mat.")
    half = n_classes // 2
    lo, hi = (1, half) if split == "train" else (half + 1, n_classes)
    has_box = all(f in fields for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))

    samples: list[tuple[str, int]] = []
    boxes: list[Box | None] = []
    for k, (rel, c) in enumerate(zip(paths, cls)):
        if not lo <= c <= hi:
            continue
        samples.append((os.path.join(root, rel), c - lo))
        if has_box:
            a = annos[k]
            x1, y1, x2, y2 = (float(_scalar(a[f])) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
            boxes.append((x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0))
        else:
            boxes.append(None)
    classes = names[lo - 1 : hi] if names else [f"class_{c:03d}" for c in range(lo, hi + 1)]
    check_classes_nonempty(classes, samples, "cars_annos.mat")
    check_files((p for p, _ in samples), "cars_annos.mat")
    return RetrievalDataset("cars", split, classes, samples, transform, boxes if has_box else None, root)
