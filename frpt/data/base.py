"""The dataset type every loader returns, plus shared validation helpers.

Retrieval follows the zero-shot protocol of FRPT (paper §3, after Song et al. 2016): the train and
test splits hold disjoint classes, and labels are re-indexed from 0 within each split.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image

from frpt.data.images import display_path, open_image
from frpt.errors import DatasetError
from frpt.paths import plain_file

__all__ = [
    "RetrievalDataset", "Box", "SPLITS", "check_split", "require_file", "missing_error",
    "check_files", "check_classes_nonempty", "read_lines", "bad_line",
]

Box = tuple[float, float, float, float]
SPLITS = ("train", "test")


class RetrievalDataset(torch.utils.data.Dataset):
    """A list of ``(path, label)`` samples of one split, with optional ground-truth boxes.

    ``__getitem__`` returns ``(transform(image), label, index)``; with no transform the RGB
    ``PIL.Image`` itself is returned. ``box(i)`` is the (x, y, w, h) ground-truth box in
    ``load_image(i)`` pixels, or None when the dataset has none.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: list[str],
        samples: list[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        boxes: Sequence[Box | None] | None = None,
        root: str | None = None,
    ) -> None:
        self.name = name
        self.split = check_split(split)
        self.classes = list(classes)
        self.samples = list(samples)
        self.transform = transform
        self.root = root
        self._boxes = list(boxes) if boxes is not None else None
        if self._boxes is not None and len(self._boxes) != len(self.samples):
            raise ValueError("boxes must have one entry per sample")

    def __len__(self) -> int:
        return len(self.samples)

    def _index(self, i: int) -> int:
        n = len(self.samples)
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise DatasetError(f"sample index {i!r} is not an integer; use 0..{n - 1}.") from None
        if not -n <= i < n:
            raise DatasetError(f"sample index {i} is out of range for the {n}-image {self.name} {self.split} split; use 0..{n - 1}.")
        return i % n

    def load_image(self, i: int) -> Image.Image:
        """Return sample ``i`` as a fully loaded RGB image (raises ImageError if unreadable)."""
        path, _ = self.samples[self._index(i)]
        return open_image(path)

    def box(self, i: int) -> Box | None:
        """Ground-truth (x, y, w, h) of sample ``i`` in ``load_image`` pixels, or None."""
        i = self._index(i)
        return None if self._boxes is None else self._boxes[i]

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor | Image.Image, int, int]:
        i = self._index(i)
        image = self.load_image(i)
        out = self.transform(image) if self.transform is not None else image
        return out, self.samples[i][1], i

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"images={len(self)}, classes={len(self.classes)})"
        )


def check_split(split: str) -> str:
    """Validate a split name ("train" or "test")."""
    if split not in SPLITS:
        raise DatasetError(f"split {split!r} is not valid; use 'train' or 'test'.")
    return split


def require_file(path: str, what: str) -> str:
    """Return ``path`` if it is a file, else raise a DatasetError naming it."""
    if not plain_file(path):  # a FIFO would block, a /proc or /dev file is endless: neither is metadata
        raise DatasetError(f"{what} {display_path(path)} is missing; check that --root points at the dataset and that it was extracted completely.")
    return path


def missing_error(what: str, bad: Sequence[str], fix: str) -> DatasetError:
    """One sentence naming the first offending path and counting the rest."""
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return DatasetError(f"{what} {display_path(bad[0])}{more}; {fix}.")


def check_files(paths: Iterable[str], listed_in: str) -> None:
    """Raise one DatasetError if any listed image file is absent (os.path only, no decoding)."""
    bad = [p for p in paths if not os.path.isfile(p)]
    if bad:
        raise missing_error(
            f"image listed in {listed_in} is missing:",
            bad,
            "re-extract the dataset or point --root at the complete copy",
        )


def read_lines(path: str, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as (1-based line number, stripped text)."""
    require_file(path, what)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [(n, line.strip()) for n, line in enumerate(fh, 1) if line.strip()]
    except OSError as exc:
        raise DatasetError(f"{what} {display_path(path)} cannot be read ({exc.strerror or exc}); check its permissions.") from None


def bad_line(path: str, lineno: int, expected: str) -> DatasetError:
    return DatasetError(f"line {lineno} of {display_path(path)} is malformed (expected '{expected}'); restore the original file.")


def check_classes_nonempty(classes: Sequence[str], samples: Sequence[tuple[str, int]], where: str) -> None:
    """Raise one DatasetError if a class of the split has no images."""
    seen = {label for _, label in samples}
    empty = [name for k, name in enumerate(classes) if k not in seen]
    if empty:
        raise missing_error(f"class has no images in {where}:", empty, "restore its images or remove the class")
