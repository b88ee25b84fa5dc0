"""Embedding extraction and the zero-shot retrieval evaluation.

Under ``torchrun`` each process embeds its contiguous block of the dataset and the blocks are gathered in dataset
order (:mod:`frpt.distributed`); rank 0 computes the metrics. A single process runs the plain loop.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from . import distributed
from .engine import Plan, forward_images, inference, plan
from .errors import DatasetError, ImageError
from .metrics import retrieval_metrics
from .models import FRPT

PREFETCH_BATCHES = 4  # decoded batches a background thread keeps ready ahead of the engine


@dataclass
class Embeddings:
    """Per-image embeddings of a dataset split: before the head (pooled backbone features of the warped image)
    and after it (the retrieval embedding), with labels, in dataset order."""

    before: np.ndarray
    after: np.ndarray
    labels: np.ndarray
    plan: Plan | None = None  # the engine and precision that computed them (None: not recorded)


def loader(dataset: Dataset, batch_size: int, workers: int | None = None, collate_fn=None) -> Iterable:
    """Batches of ``dataset`` in order for a pass without gradients.

    ``workers`` None (the default): decoded by one background *thread* of this process, :data:`PREFETCH_BATCHES`
    ahead, so JPEG decoding and resizing (which release the GIL) overlap with the engine's pass. A thread, not a
    forked process: forking a process whose compiled runtime (OpenVINO's TBB pool, ONNX Runtime's threads) is
    already running copies their locks mid-use, the likely cause of the segfault that ended a CI run of the whole
    suite in the first gallery test to fork so. ``workers`` N > 0: N DataLoader processes, as asked; 0: decoded in
    the loop itself.
    """
    if workers is None:
        return _Prefetched(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


class _Prefetched:
    """Iterates ``batches`` in a daemon thread, :data:`PREFETCH_BATCHES` ahead; the thread's exceptions are raised
    in the consumer, and a consumer that stops early (an error, a break) stops the thread."""

    _DONE = object()

    def __init__(self, batches: Iterable):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)  # tqdm's total

    def __iter__(self) -> Iterator:
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in self.batches:
                    if not put(batch):
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(exc)
                return
            put(self._DONE)

        thread = threading.Thread(target=produce, name="frpt-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()


def _forward(model: FRPT, images: torch.Tensor, plan_: Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    out = forward_images(model, images, plan_, device)
    return out.pre_head.float().cpu(), out.embedding.float().cpu()


def embed_images(model: FRPT, images: torch.Tensor, *, precision: str = "auto", engine: str | None = None,
                 device: str | torch.device | None = None, **forward: object) -> np.ndarray:
    """Retrieval embeddings (N, D) of a batch of query images (N, 3, S, S) in [0, 1], computed exactly as a
    gallery's (:func:`frpt.gallery.gallery_embeddings`, same ``engine`` and ``precision``), so a query matches its
    own gallery row at cosine ~1 whatever the CPU. ``forward``: passed to the model (a prompt edit, known maps)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan_ = plan(engine, precision, device, model)
    with inference(model, plan_, device):
        return forward_images(model, images, plan_, device, **forward).embedding.float().cpu().numpy()


def _extract(model: FRPT, dataset: Dataset, batch_size: int, device: torch.device, plan_: Plan, workers: int,
             progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    before, after, labels = [], [], []
    with inference(model, plan_, device):
        for images, targets, _ in tqdm(loader(dataset, batch_size, workers), desc=desc, disable=not progress,
                                       unit="batch"):
            b, a = _forward(model, images, plan_, device)
            before.append(b)
            after.append(a)
            labels.append(torch.as_tensor(targets))
    return torch.cat(before), torch.cat(after), torch.cat(labels)


def extract_embeddings(model: FRPT, dataset: Dataset, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       precision: str = "fp32", engine: str | None = None, workers: int | None = None,
                       progress: bool = True, desc: str = "embedding") -> Embeddings:
    """Run ``model`` over ``dataset`` (items ``(image, label, index)``) without gradients on ``engine``
    (:mod:`frpt.engine`); an unreadable image is an error. Under torchrun every process embeds its block and all
    receive the whole, in order."""
    device = torch.device(device)
    progress = progress and distributed.is_main()
    plan_ = plan(engine, precision, device, model)
    if not distributed.is_distributed():
        parts = _extract(model, dataset, batch_size, device, plan_, workers, progress, desc)
    else:
        if len(dataset) < distributed.world_size():
            raise DatasetError(f"The dataset has {len(dataset)} images, fewer than the {distributed.world_size()} "
                               "processes embedding it; run fewer processes.")
        block = Subset(dataset, distributed.shard_range(len(dataset)))
        parts = tuple(distributed.gather_in_order(t) for t in
                      _extract(model, block, batch_size, device, plan_, workers, progress, desc))
    return Embeddings(*(t.numpy() for t in parts), plan=plan_)


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
                   device: str | torch.device = "cpu", precision: str = "fp32", engine: str | None = None,
                   workers: int | None = None, on_batch: Callable[[int], None] | None = None) -> ReadableEmbeddings:
    """Embed ``dataset[indices]`` in order on ``engine``, skipping (and listing) images that cannot be decoded.
    ``on_batch(n)`` is called after each batch with the number of items it covered (progress)."""
    device = torch.device(device)
    batches = loader(Subset(_Readable(dataset), list(indices)), batch_size, workers, collate_fn=_collate_readable)
    before, after, labels, kept, unreadable = [], [], [], [], []
    plan_ = plan(engine, precision, device, model)
    with inference(model, plan_, device):
        for images, targets, index, bad in batches:
            if images is not None:
                b, a = _forward(model, images, plan_, device)
                before.append(b)
                after.append(a)
                labels.append(targets)
                kept.append(index)
            unreadable.extend(bad)
            if on_batch is not None:
                on_batch(len(index) + len(bad))
    if not kept:
        return ReadableEmbeddings(Embeddings(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
                                             np.zeros(0, np.int64), plan_), np.zeros(0, np.int64), unreadable)
    emb = Embeddings(torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(labels).numpy(), plan_)
    return ReadableEmbeddings(emb, torch.cat(kept).numpy(), unreadable)
