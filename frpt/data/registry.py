"""Dataset registry: ``build_dataset(name, split, root, transform, **kwargs)``."""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from frpt.data.aircraft import build_aircraft
from frpt.data.base import RetrievalDataset, check_split
from frpt.data.cars import build_cars
from frpt.data.cub import build_cub
from frpt.data.folder import build_folder
from frpt.data.synthetic import build_synthetic
from frpt.errors import DatasetError
from frpt.paths import user_folder

__all__ = ["DATASETS", "build_dataset", "NEEDS_ROOT"]

#: name -> builder(split, root, transform, **kwargs) -> RetrievalDataset
DATASETS: dict[str, Callable[..., RetrievalDataset]] = {
    "cub": build_cub,
    "cars": build_cars,
    "aircraft": build_aircraft,
    "folder": build_folder,
    "synthetic": build_synthetic,
}
#: Datasets read from disk (``root`` required).
NEEDS_ROOT = frozenset({"cub", "cars", "aircraft", "folder"})
_ROOT_HINT = {
    "cub": "the CUB_200_2011 folder (holding images.txt and images/)",
    "cars": "the folder holding cars_annos.mat and car_ims/",
    "aircraft": "fgvc-aircraft-2013b or its data/ folder",
    "folder": "a folder with one sub-folder of images per class",
}


def build_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    **kwargs,
) -> RetrievalDataset:
    """Build split ``split`` ("train" or "test") of dataset ``name`` (a key of :data:`DATASETS`)."""
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise DatasetError(f"dataset {name!r} is unknown; use one of: {', '.join(DATASETS)}.")
    check_split(split)
    builder = DATASETS[key]
    params = inspect.signature(builder).parameters
    allowed = [p for p in params if p not in ("split", "root", "transform")]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        opts = ", ".join(allowed) if allowed else "none"
        raise DatasetError(f"dataset {key!r} does not take option {unknown[0]!r}; its options are: {opts}.")
    if key in NEEDS_ROOT:
        if root is None or str(os.fspath(root)).strip() == "":
            raise DatasetError(f"dataset {key!r} needs its files; pass --root pointing at {_ROOT_HINT[key]}.")
        # Stat only: a symlink loop, a device, /proc or a folder of 100,000 files is judged without listing it.
        root = user_folder(root, "dataset root", f"pass --root pointing at {_ROOT_HINT[key]}", DatasetError)
    return builder(split, root, transform, **kwargs)
