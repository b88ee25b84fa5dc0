"""Gallery embeddings of a checkpoint on a dataset split, computed once and stored beside the checkpoint.

``python -m frpt embed`` (or the app, on first use) writes ``<checkpoint>/gallery/<dataset>-<split>-<key>.npz``
holding the embeddings before and after the head, the labels and the sample ids. The key hashes the checkpoint's
weights sha256, the dataset and its root, so a retrained checkpoint or another dataset never reuses stale vectors.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.base import RetrievalDataset
from .evaluation import Embeddings, extract_embeddings
from .fileio import atomic_write
from .models import FRPT


@dataclass
class Gallery:
    embeddings: Embeddings
    ids: list[str]        # dataset sample ids (file paths, or synthetic ids)
    classes: list[str]    # class names; labels index into this
    path: Path


def gallery_file(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None) -> Path:
    ident = {"weights": card["files"].get("weights_sha256"), "dataset": dataset.name, "split": dataset.split,
             "root": str(Path(root).resolve()) if root else None, "n": len(dataset), "input": card["input_size"]}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return Path(card["path"]) / "gallery" / f"{dataset.name}-{dataset.split}-{key}.npz"


def load_gallery(path: Path) -> Gallery | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            emb = Embeddings(data["before"], data["after"], data["labels"])
            return Gallery(emb, [str(s) for s in data["ids"]], [str(c) for c in data["classes"]], path)
    except (OSError, KeyError, ValueError):
        return None  # damaged cache: recompute


def gallery_embeddings(model: FRPT, card: dict[str, Any], dataset: RetrievalDataset, *,
                       root: str | os.PathLike | None = None, batch_size: int = 64, precision: str = "fp32",
                       progress: bool = True, recompute: bool = False) -> Gallery:
    """Load the stored gallery embeddings, or compute and store them (atomically)."""
    path = gallery_file(card, dataset, root)
    cached = None if recompute else load_gallery(path)
    if cached is not None and len(cached.ids) == len(dataset):
        return cached
    emb = extract_embeddings(model, dataset, batch_size=batch_size, precision=precision, progress=progress,
                             desc=f"gallery {dataset.name}/{dataset.split}")
    ids = np.array([s for s, _ in dataset.samples])
    classes = np.array(dataset.classes)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, before=emb.before, after=emb.after, labels=emb.labels, ids=ids, classes=classes)

    atomic_write(path, write)
    return Gallery(emb, list(map(str, ids)), list(map(str, classes)), path)
