"""Embedding extraction and the zero-shot retrieval evaluation.

Under ``torchrun`` each process embeds its contiguous block of the dataset and the blocks are gathered in dataset
order (:mod:`frpt.distributed`); rank 0 computes the metrics. A single process runs the plain loop.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import distributed
from .errors import DatasetError, ImageError
from .metrics import retrieval_metrics
from .models import FRPT

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16 on the CPU
    and autocast is several times *slower* than fp32, so it must be detected, never assumed."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """"auto" -> bf16 on CUDA or on a CPU with native bf16, else fp32; explicit choices pass through."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" or native_bf16() else "fp32"


@dataclass
class Embeddings:
    """Per-image embeddings of a dataset split: before the head (pooled backbone features of the warped image)
    and after it (the retrieval embedding), with labels, in dataset order."""

    before: np.ndarray
    after: np.ndarray
    labels: np.ndarray


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing. Worth it on GPUs and on CPUs with native bf16 (avx512_bf16/AMX); on a CPU
    without it bf16 is emulated and slower than fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _inference(model: FRPT, device: torch.device) -> Iterator[None]:
    """``model`` in eval mode, channels-last on ``device`` for the duration; its training mode is restored."""
    was_training = model.training
    model.eval().to(device=device, memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            yield
    finally:
        model.to(memory_format=torch.contiguous_format).train(was_training)


def _forward(model: FRPT, images: torch.Tensor, device: torch.device, precision: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        out = model(images)
    return out.pre_head.float().cpu(), out.embedding.float().cpu()


def embed_images(model: FRPT, images: torch.Tensor, *, precision: str = "auto",
                 device: str | torch.device | None = None) -> np.ndarray:
    """Retrieval embeddings (N, D) of a batch of query images (N, 3, S, S) in [0, 1], computed exactly as a
    gallery's (:func:`frpt.gallery.gallery_embeddings`, same ``precision``), so a query matches its own gallery
    row at cosine ~1 whatever the CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    with _inference(model, device):
        return _forward(model, images, device, precision)[1].numpy()


def _extract(model: FRPT, dataset: Dataset, batch_size: int, device: torch.device, precision: str, workers: int,
             progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    before, after, labels = [], [], []
    with _inference(model, device):
        for images, targets, _ in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            b, a = _forward(model, images, device, precision)
            before.append(b)
            after.append(a)
            labels.append(torch.as_tensor(targets))
    return torch.cat(before), torch.cat(after), torch.cat(labels)


def extract_embeddings(model: FRPT, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       precision: str = "fp32", workers: int = 0, progress: bool = True,
                       desc: str = "embedding") -> Embeddings:
    """Run ``model`` over ``dataset`` (items ``(image, label, index)``) in eval mode, channels-last; an unreadable
    image is an error. Under torchrun every process embeds its block and all receive the whole, in order."""
    device = torch.device(device)
    progress = progress and distributed.is_main()
    if not distributed.is_distributed():
        parts = _extract(model, dataset, batch_size, device, precision, workers, progress, desc)
    else:
        if len(dataset) < distributed.world_size():
            raise DatasetError(f"The dataset has {len(dataset)} images, fewer than the {distributed.world_size()} "
                               "processes embedding it; run fewer processes.")
        block = Subset(dataset, distributed.shard_range(len(dataset)))
        parts = tuple(distributed.gather_in_order(t) for t in
                      _extract(model, block, batch_size, device, precision, workers, progress, desc))
    return Embeddings(*(t.numpy() for t in parts))


def evaluate(model: FRPT, dataset: Dataset, **kwargs) -> dict[str, float]:
    """Leave-one-out cosine retrieval on ``dataset`` (the test split): recall@1/2/4/8, map@r, nmi, queries.
    Under torchrun rank 0 computes them and every process returns rank 0's figures."""
    return score_embeddings(extract_embeddings(model, dataset, **kwargs))


def score_embeddings(emb: Embeddings) -> dict[str, float]:
    """:func:`evaluate`'s figures for embeddings already extracted (rank 0 computes, every process returns them)."""
    return distributed.broadcast_object(retrieval_metrics(emb.after, emb.labels) if distributed.is_main() else None)


# ------------------------------------------------------------------------------- skipping unreadable images

class _Readable(Dataset):
    """``dataset``'s items, with an image that cannot be decoded (:class:`ImageError`) turned into a marker
    ``(None, label, index, reason)`` instead of an exception: one bad file must not end a long embedding run."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except ImageError as exc:
            return None, -1, int(i), str(exc)


def _collate_readable(items: list) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    good = [it for it in items if it[0] is not None]
    bad = [(int(it[2]), it[3]) for it in items if it[0] is None]
    images = torch.stack([it[0] for it in good]) if good else None
    return (images, torch.as_tensor([it[1] for it in good], dtype=torch.int64),
            torch.as_tensor([it[2] for it in good], dtype=torch.int64), bad)


@dataclass
class ReadableEmbeddings:
    """Embeddings of the readable images among some dataset indices: ``indices`` says which rows they are, and
    ``unreadable`` lists (index, reason) of the images skipped."""

    embeddings: Embeddings
    indices: np.ndarray
    unreadable: list[tuple[int, str]]


def embed_readable(model: FRPT, dataset: Dataset, indices: Sequence[int], *, batch_size: int = 64,
                   device: str | torch.device = "cpu", precision: str = "fp32", workers: int = 0,
                   on_batch: Callable[[int], None] | None = None) -> ReadableEmbeddings:
    """Embed ``dataset[indices]`` in order, skipping (and listing) images that cannot be decoded.
    ``on_batch(n)`` is called after each batch with the number of items it covered (progress)."""
    device = torch.device(device)
    loader = DataLoader(Subset(_Readable(dataset), list(indices)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate_readable)
    before, after, labels, kept, unreadable = [], [], [], [], []
    with _inference(model, device):
        for images, targets, index, bad in loader:
            if images is not None:
                b, a = _forward(model, images, device, precision)
                before.append(b)
                after.append(a)
                labels.append(targets)
                kept.append(index)
            unreadable.extend(bad)
            if on_batch is not None:
                on_batch(len(index) + len(bad))
    if not kept:
        return ReadableEmbeddings(Embeddings(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
                                             np.zeros(0, np.int64)), np.zeros(0, np.int64), unreadable)
    emb = Embeddings(torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(labels).numpy())
    return ReadableEmbeddings(emb, torch.cat(kept).numpy(), unreadable)
