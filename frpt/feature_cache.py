"""Frozen feature maps computed once and kept on disk (fp16), so heads and prompts train in seconds per epoch.

The compact preset trains on these instead of running the frozen backbone every step: on a 2-core CPU a forward
pass of efficientnet_lite0 at 224 px costs ~30 ms an image, and the backbone never changes. A cache folder holds
one sub-folder per (split, view): ``<split>/<view>/chunk-NNNNNN.npy``, each chunk written atomically when done,
so a killed run resumes at the first missing chunk. ``key.json`` records what the maps depend on (backbone
weights, input size, the images, the prompt's weights for crop and zoom views, the zoom's half-side); a cache
built for anything else is refused rather than silently reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from .engine import Plan, autocast, inference, plan
from .errors import CheckpointError
from .evaluation import loader
from .fileio import atomic_write, atomic_write_text
from .config import PROMPT_VIEWS, ZOOM_VIEWS
from .models import FRPT
from .models.crop import PEAK_TEMPERATURE

CHUNK = 512  # images per chunk file: a kill loses at most this many images of work


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a temp path
            np.save(fh, array)
    atomic_write(path, write)


@dataclass
class CachedSplit:
    """Per-view feature maps (N, C, h, w) float16, memory-mapped, and the labels, in dataset order."""

    maps: dict[str, np.ndarray]
    labels: np.ndarray
    seconds: float = 0.0  # spent computing missing maps in this call (0 when all were cached)
    plan: Plan | None = None  # the engine and precision that computed the maps (None: not recorded)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Short sha256 of named tensors (the prompt's weights that crop views depend on)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _dataset_digest(dataset: Dataset) -> str:
    samples = getattr(dataset, "samples", None)
    text = json.dumps([[os.path.basename(str(p)), int(y)] for p, y in samples] if samples else len(dataset))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(model: FRPT, dataset: Dataset, view: str) -> dict[str, object]:
    key: dict[str, object] = {"backbone": model.config.backbone, "weights_sha256": model.backbone.weights_sha256,
                              "input_size": model.config.input_size, "images": len(dataset),
                              "dataset": _dataset_digest(dataset), "view": view}
    if view in PROMPT_VIEWS:
        key["prompt"] = tensor_digest(dict(model.prompt.state_dict()))
        key["crop"] = [model.config.crop_std_scale, model.config.crop_margin, model.config.crop_min_half,
                       model.config.crop_max_half]
        key["crop_geometry"] = "fp32"  # crops cached before the box and grid were fp32 under autocast differ
    if view in ZOOM_VIEWS:
        key["zoom"] = [model.config.zoom_half, PEAK_TEMPERATURE]
    return key


def _view_folder(root: Path, split: str, view: str, key: dict[str, object]) -> Path:
    # Prompt views live apart per prompt, zoom views also per half-side, so a grid of them shares one cache.
    suffix = f"-{key['prompt']}" if "prompt" in key else ""
    suffix += f"-{key['zoom'][0]:g}" if "zoom" in key else ""
    folder = root / split / f"{view}{suffix}"
    key_file = folder / "key.json"
    if key_file.is_file():
        try:
            stored = json.loads(key_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if stored != key:
            raise CheckpointError(f"Feature cache {folder} was built for another backbone, input size, image list "
                                  "or crop prompt version; delete it or pass another --feature-cache folder.")
    else:
        atomic_write_text(key_file, json.dumps(key, indent=1))
    return folder


@torch.no_grad()
def cache_split(model: FRPT, dataset: Dataset, views: tuple[str, ...], root: str | os.PathLike, split: str, *,
                batch_size: int = 32, workers: int | None = None, precision: str = "fp32", engine: str | None = None,
                progress: bool = True) -> CachedSplit:
    """Final frozen maps of ``views`` for every image of ``dataset``, computed where missing (on ``engine``,
    :mod:`frpt.engine`), then memory-mapped.

    Views come from :meth:`FRPT.view_maps` (the model's own forward), so cached training sees exactly what
    inference computes. The plan that computed the maps is kept in ``<split>/plan.json``."""
    root = Path(root)
    folders = {v: _view_folder(root, split, v, cache_key(model, dataset, v)) for v in views}
    n = len(dataset)
    starts = list(range(0, n, CHUNK))
    todo = {s: tuple(v for v in views if not (folders[v] / f"chunk-{s:06d}.npy").is_file()) for s in starts}
    missing = [s for s in starts if todo[s]]
    labels_file = root / split / "labels.npy"
    plan_file = root / split / "plan.json"
    started = time.perf_counter()
    if missing:
        saved = model.config
        device = model.pixel_mean.device
        ran = plan(engine, precision, device, model)
        with inference(model, ran, device):
            try:
                bar = tqdm(total=sum(min(CHUNK, n - s) for s in missing), unit="img", disable=not progress,
                           desc=f"caching {split} {'+'.join(views)} ({ran.engine} {ran.precision})")
                for start in missing:
                    chunk = Subset(dataset, range(start, min(n, start + CHUNK)))
                    wanted = todo[start]  # only the views this chunk lacks (the original is still run for a crop)
                    model.config = replace(saved, views=",".join(wanted))
                    outputs: dict[str, list[np.ndarray]] = {v: [] for v in wanted}
                    for images, _, _ in loader(chunk, batch_size, workers):
                        images = images.to(device).contiguous(memory_format=torch.channels_last)
                        with autocast(device, ran.precision):
                            maps, _ = model.view_maps(images)
                        for v in wanted:
                            outputs[v].append(maps[v].float().cpu().numpy().astype(np.float16))
                        bar.update(len(images))
                    for v in wanted:
                        _save_npy(folders[v] / f"chunk-{start:06d}.npy", np.concatenate(outputs[v]))
                bar.close()
            finally:
                model.config = saved
        atomic_write_text(plan_file, json.dumps(ran.as_dict()))
    if not labels_file.is_file():
        labels = np.asarray(getattr(dataset, "targets", None) or [dataset[i][1] for i in range(n)], dtype=np.int64)
        _save_npy(labels_file, labels)
    maps = {v: np.concatenate([np.load(folders[v] / f"chunk-{s:06d}.npy", mmap_mode="r") for s in starts])
            for v in views}
    try:
        stored = Plan(**json.loads(plan_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        stored = None  # a cache from before engines were recorded
    return CachedSplit(maps=maps, labels=np.load(labels_file), plan=stored,
                       seconds=time.perf_counter() - started if missing else 0.0)
