"""CUB-200-2011 (Wah et al. 2011) with the zero-shot retrieval split used by FRPT (paper §3).

Layout: ``<root>/images.txt``, ``classes.txt``, ``image_class_labels.txt``, optional
``bounding_boxes.txt`` and ``images/<class folder>/<file>.jpg``. ``root`` may also be the parent
folder holding ``CUB_200_2011/``. Classes 1-100 train (5,864 images), 101-200 test (5,924), as in the
released code (label = folder index - 1; train if < 100). The official train_test_split.txt is not
used: it splits images, not classes. Class names are the full folder names (e.g. "001.Black_footed_Albatross").
"""
from __future__ import annotations

import os
from collections.abc import Callable

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

__all__ = ["build_cub", "find_cub_root"]


def find_cub_root(root: str | os.PathLike) -> str:
    """Return the folder holding images.txt: ``root`` itself or ``root/CUB_200_2011``."""
    root = os.fspath(root)
    for cand in (root, os.path.join(root, "CUB_200_2011")):
        if os.path.isfile(os.path.join(cand, "images.txt")):
            return cand
    if not os.path.isdir(root):
        raise DatasetError(f"CUB root {display_path(root)} does not exist; pass --root pointing at the CUB_200_2011 folder.")
    raise DatasetError(
        f"CUB metadata file {display_path(os.path.join(root, 'images.txt'))} is missing; "
        "pass --root pointing at the CUB_200_2011 folder that holds images.txt and images/."
    )


def _id_table(path: str, ncols: int, expected: str, convert: Callable = str) -> dict[int, list]:
    """Parse ``<image_id> <col>...`` lines; the last column may contain spaces when ncols == 1."""
    table: dict[int, list] = {}
    for lineno, line in read_lines(path, "CUB metadata file"):
        parts = line.split(maxsplit=ncols) if ncols == 1 else line.split()
        if len(parts) != ncols + 1:
            raise bad_line(path, lineno, expected)
        try:
            table[int(parts[0])] = [convert(v) for v in parts[1:]]
        except ValueError:
            raise bad_line(path, lineno, expected) from None
    return table


def build_cub(
    split: str,
    root: str | os.PathLike,
    transform: Callable | None = None,
) -> RetrievalDataset:
    """CUB-200-2011 retrieval split: first half of classes.txt train, second half test."""
    check_split(split)
    base = find_cub_root(root)
    p_images = os.path.join(base, "images.txt")
    p_labels = os.path.join(base, "image_class_labels.txt")
    p_classes = os.path.join(base, "classes.txt")
    p_boxes = os.path.join(base, "bounding_boxes.txt")

    images = {i: v[0] for i, v in _id_table(p_images, 1, "<image_id> <path>").items()}
    labels_raw = {i: v[0] for i, v in _id_table(p_labels, 1, "<image_id> <class_id>", int).items()}
    classes_raw = {i: v[0] for i, v in _id_table(p_classes, 1, "<class_id> <name>").items()}
    class_ids = sorted(classes_raw)
    if len(class_ids) < 2:
        raise DatasetError(f"{display_path(p_classes)} lists {len(class_ids)} classes; restore the original 200-class file.")
    half = len(class_ids) // 2
    split_ids = class_ids[:half] if split == "train" else class_ids[half:]
    label_of = {cid: k for k, cid in enumerate(split_ids)}

    boxes_raw: dict[int, list] | None = None
    if os.path.isfile(p_boxes):
        boxes_raw = _id_table(p_boxes, 4, "<image_id> <x> <y> <w> <h>", float)

    samples: list[tuple[str, int]] = []
    boxes: list[Box | None] = []
    unlabelled: list[str] = []
    for image_id in sorted(images):
        rel = images[image_id]
        cid = labels_raw.get(image_id)
        if cid is None or cid not in classes_raw:
            unlabelled.append(rel)
            continue
        if cid not in label_of:
            continue
        samples.append((os.path.join(base, "images", rel), label_of[cid]))
        if boxes_raw is not None:
            b = boxes_raw.get(image_id)
            boxes.append((b[0], b[1], b[2], b[3]) if b else None)
    if unlabelled:
        more = f" (and {len(unlabelled) - 1} more)" if len(unlabelled) > 1 else ""
        raise DatasetError(
            f"image {display_path(unlabelled[0])}{more} in images.txt has no valid class in "
            "image_class_labels.txt; restore the original metadata files."
        )
    if not samples:
        raise DatasetError(f"the CUB {split} split under {display_path(base)} is empty; restore the original metadata files.")
    check_files((p for p, _ in samples), "images.txt")
    classes = [classes_raw[c] for c in split_ids]
    check_classes_nonempty(classes, samples, "image_class_labels.txt")
    return RetrievalDataset("cub", split, classes, samples, transform, boxes if boxes_raw is not None else None, base)
