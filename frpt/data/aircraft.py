"""FGVC-Aircraft 2013b (Maji et al. 2013) with the retrieval split of FRPT (paper §3).

Layout: ``fgvc-aircraft-2013b/data/`` with variants.txt, images_variant_{train,val,test}.txt and
images/<id>.jpg; ``root`` may be either folder. All 10,000 images are used; the first 50 variants of
variants.txt train (5,000 images), the last 50 test (5,000). The paper does not state the class
order (see research notes §3); variants.txt order is the natural choice. Optional images_box.txt
gives boxes (1-based inclusive xmin ymin xmax ymax per the dataset README).
"""
from __future__ import annotations

import os
from collections.abc import Callable

from PIL import Image

from frpt.data.base import (
    Box,
    RetrievalDataset,
    bad_line,
    check_classes_nonempty,
    check_files,
    check_split,
    read_lines,
)
from frpt.data.images import display_path
from frpt.errors import DatasetError

__all__ = ["build_aircraft", "AircraftDataset", "BANNER_PX"]

#: Every FGVC-Aircraft image carries a 20-pixel copyright banner along the bottom edge.
BANNER_PX = 20
_LISTS = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")


class AircraftDataset(RetrievalDataset):
    def load_image(self, i: int) -> Image.Image:
        """RGB image with the bottom copyright banner cropped off, as is customary for FGVC-Aircraft
        (the dataset README notes the 20-px banner; it carries text unrelated to the class)."""
        im = super().load_image(i)
        w, h = im.size
        if h > 2 * BANNER_PX:
            im = im.crop((0, 0, w, h - BANNER_PX))
        return im


def _find_data_dir(root: str) -> str:
    for cand in (root, os.path.join(root, "data"), os.path.join(root, "fgvc-aircraft-2013b", "data")):
        if os.path.isfile(os.path.join(cand, "variants.txt")):
            return cand
    if not os.path.isdir(root):
        raise DatasetError(f"Aircraft root {display_path(root)} does not exist; pass --root pointing at fgvc-aircraft-2013b.")
    raise DatasetError(
        f"Aircraft metadata file {display_path(os.path.join(root, 'data', 'variants.txt'))} is missing; "
        "pass --root pointing at fgvc-aircraft-2013b or its data/ folder."
    )


def build_aircraft(
    split: str,
    root: str | os.PathLike,
    transform: Callable | None = None,
) -> RetrievalDataset:
    """FGVC-Aircraft retrieval split: first half of variants.txt train, second half test."""
    check_split(split)
    data = _find_data_dir(os.fspath(root))
    variants = [line for _, line in read_lines(os.path.join(data, "variants.txt"), "Aircraft metadata file")]
    if len(variants) < 2 or len(set(variants)) != len(variants):
        raise DatasetError(f"{display_path(os.path.join(data, 'variants.txt'))} must list at least 2 distinct variants; restore the original file.")
    half = len(variants) // 2
    classes = variants[:half] if split == "train" else variants[half:]
    label_of = {v: k for k, v in enumerate(classes)}
    known = set(variants)

    ids: list[tuple[str, int]] = []
    for fname in _LISTS:
        path = os.path.join(data, fname)
        for lineno, line in read_lines(path, "Aircraft metadata file"):
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise bad_line(path, lineno, "<image_id> <variant>")
            image_id, variant = parts
            if variant not in known:
                raise DatasetError(
                    f"line {lineno} of {display_path(path)} names variant {variant!r}, which is not in "
                    "variants.txt; restore the original metadata files."
                )
            if variant in label_of:
                ids.append((image_id, label_of[variant]))

    boxes_raw: dict[str, Box] = {}
    p_box = os.path.join(data, "images_box.txt")
    if os.path.isfile(p_box):
        for lineno, line in read_lines(p_box, "Aircraft metadata file"):
            parts = line.split()
            try:
                x1, y1, x2, y2 = (float(v) for v in parts[1:5])
            except ValueError:
                raise bad_line(p_box, lineno, "<image_id> <xmin> <ymin> <xmax> <ymax>") from None
            if len(parts) != 5:
                raise bad_line(p_box, lineno, "<image_id> <xmin> <ymin> <xmax> <ymax>")
            boxes_raw[parts[0]] = (x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0)

    samples = [(os.path.join(data, "images", f"{image_id}.jpg"), label) for image_id, label in ids]
    boxes = [boxes_raw.get(image_id) for image_id, _ in ids] if boxes_raw else None
    check_classes_nonempty(classes, samples, "images_variant_*.txt")
    check_files((p for p, _ in samples), "images_variant_*.txt")
    return AircraftDataset("aircraft", split, classes, samples, transform, boxes, data)
