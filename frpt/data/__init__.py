"""Datasets, safe image loading and transforms for FRPT zero-shot fine-grained retrieval.

>>> from frpt.data import build_dataset, build_transform
>>> ds = build_dataset("synthetic", "test", transform=build_transform(224, train=False))
>>> image, label, index = ds[0]
"""
from frpt.data.aircraft import AircraftDataset, build_aircraft
from frpt.data.base import RetrievalDataset
from frpt.data.cars import build_cars
from frpt.data.cub import build_cub
from frpt.data.folder import IMAGE_EXTENSIONS, build_folder
from frpt.data.images import display_path, open_image
from frpt.data.registry import DATASETS, NEEDS_ROOT, build_dataset
from frpt.data.synthetic import SyntheticDataset, build_synthetic, class_table
from frpt.data.transforms import RECIPES, build_transform, resize_size, transform_box

__all__ = [
    "AircraftDataset",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "NEEDS_ROOT",
    "RECIPES",
    "RetrievalDataset",
    "SyntheticDataset",
    "build_aircraft",
    "build_cars",
    "build_cub",
    "build_dataset",
    "build_folder",
    "build_synthetic",
    "build_transform",
    "class_table",
    "display_path",
    "open_image",
    "resize_size",
    "transform_box",
]
