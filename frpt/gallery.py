"""Gallery embeddings of a checkpoint on a dataset split, computed once and stored beside the checkpoint.

``python -m frpt embed`` (or the app, on first use) writes ``<checkpoint>/gallery/<dataset>-<split>-<key>.npz``
holding the embeddings before and after the head, the labels, the sample ids and the ids of images skipped because
they could not be decoded. The key hashes the checkpoint's weights sha256, the dataset and its root, so a retrained
checkpoint or another dataset never reuses stale vectors.

A large folder takes hours, so the work is cut into shards: each finished shard is written atomically into
``<gallery>.parts/`` and recorded in ``<gallery>.manifest.json`` (the commit point, keyed by the weights, the
precision and the dataset listing), and a killed run continues with the shards it had not finished. Once all are
done the gallery file is assembled from them in dataset order, the parts are removed, and the manifest stays as the
record of the skipped images. Under ``torchrun`` the processes embed one shard each per round and rank 0 writes.

The split is embedded in a class-stratified order (:func:`embedding_order`: any prefix holds every class in
proportion) with a small first shard that doubles up to the shard size (:func:`shard_bounds`), so the committed
shards are a usable gallery early: :func:`partial_gallery` reads them while the run goes on (the app's pages work on
it, issue 27).

Two runs on one gallery (two app sessions, or the app beside ``frpt embed``) never interleave: the first holds a
file lock beside the gallery while it works, and the second waits for it and then reads what it wrote.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from . import distributed
from .data.base import RetrievalDataset
from .errors import DatasetError
from .engine import Plan, plan
from .evaluation import Embeddings, ReadableEmbeddings, embed_readable
from .fileio import atomic_write, atomic_write_text, npz_memmap, write_npz_blocks
from .index import IndexSpec, RetrievalIndex, row_norms
from .models import FRPT, file_sha256

SHARD_SIZE = 1024
FIRST_SHARD = 200  # the first shard: two images of each of CUB's 100 test classes, a usable gallery in seconds
ORDER = "class-stratified-v2"  # recorded in the manifest key: another order is another run (v2: class heads first)
MANIFEST_FORMAT = "frpt-gallery-parts"
MANIFEST_VERSION = 1


@dataclass
class Gallery:
    embeddings: Embeddings
    ids: list[str]        # dataset sample ids (file paths, or synthetic ids) of the rows
    classes: list[str]    # class names; labels index into this
    path: Path
    skipped: list[str] = field(default_factory=list)  # ids of images that could not be decoded (no row)
    # dataset index of each row, ascending (shards are assembled in order); differs from the row number after the
    # first skipped image
    indices: np.ndarray | None = None
    # the resolved precision the rows were computed at ("fp32" or "bf16") and the engine that ran the frozen
    # backbone (frpt.engine); embed a query the same way so it matches its own row at cosine ~1 (None: a gallery
    # from before this was recorded; the engine then was torch)
    precision: str | None = None
    engine: str | None = None
    # images in the split; None: this gallery covers the whole split. A partial gallery (:func:`partial_gallery`)
    # holds the rows embedded so far, and its figures are never the checkpoint's
    total: int | None = None

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.ids), dtype=np.int64)

    @property
    def complete(self) -> bool:
        return self.total is None or len(self.ids) + len(self.skipped) >= self.total

    @property
    def done(self) -> int:
        """Images of the split accounted for: embedded rows and skipped images."""
        return len(self.ids) + len(self.skipped)

    def subset(self, indices: np.ndarray) -> Gallery:
        """The rows holding dataset images ``indices`` (each must have a row), in ascending dataset order: two
        partial galleries restricted to the images both hold compare row by row."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        rows = np.searchsorted(self.indices, indices)
        emb = Embeddings(np.asarray(self.embeddings.before)[rows], np.asarray(self.embeddings.after)[rows],
                         np.asarray(self.embeddings.labels)[rows], self.embeddings.plan)
        return Gallery(emb, [self.ids[r] for r in rows], self.classes, self.path, self.skipped, indices,
                       self.precision, self.engine, self.total if self.total is not None else len(self.ids))

    @cached_property
    def after_norms(self) -> np.ndarray:
        """Row norms of the retrieval embeddings, computed once (one pass over a mapped gallery) and kept with the
        gallery: a query then costs one pass, not two (:func:`frpt.index.cosine_scores`)."""
        return row_norms(self.embeddings.after)

    def row_of(self, index: int) -> int | None:
        """The row holding dataset image ``index``, or None where that image was skipped."""
        row = int(np.searchsorted(self.indices, index))
        return row if row < len(self.indices) and self.indices[row] == index else None


def gallery_file(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None) -> Path:
    ident = {"weights": card["files"].get("weights_sha256"), "dataset": dataset.name, "split": dataset.split,
             "root": str(Path(root).resolve()) if root else None, "n": len(dataset), "input": card["input_size"]}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return Path(card["path"]) / "gallery" / f"{dataset.name}-{dataset.split}-{key}.npz"


def manifest_file(path: Path) -> Path:
    """The shard manifest of gallery ``path``: progress while embedding, the list of skipped images after."""
    return path.with_name(f"{path.stem}.manifest.json")


def _parts_dir(path: Path) -> Path:
    return path.with_name(f"{path.stem}.parts")


def load_gallery(path: Path) -> Gallery | None:
    if not path.is_file():
        return None
    try:
        # The vectors are mapped, not read: pages and sessions share the page cache's one copy (issue 10).
        vectors = npz_memmap(path, ("before", "after"))
        with np.load(path, allow_pickle=False) as data:
            emb = Embeddings(vectors["before"], vectors["after"], data["labels"])
            skipped = [str(s) for s in data["skipped"]] if "skipped" in data.files else []
            indices = data["indices"] if "indices" in data.files else None
            if indices is None and skipped:
                return None  # rows cannot be matched to dataset images: recompute
            precision = str(data["precision"]) if "precision" in data.files else None
            engine = str(data["engine"]) if "engine" in data.files else ("torch" if precision else None)
            return Gallery(emb, [str(s) for s in data["ids"]], [str(c) for c in data["classes"]], path, skipped,
                           indices, precision, engine)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # damaged cache: recompute


def _committed(card: dict[str, Any], dataset: RetrievalDataset, path: Path) -> dict[str, Any] | None:
    """The manifest of an unfinished run on these weights and this split, or None."""
    data = _read_json(manifest_file(path))
    if not data or data.get("format") != MANIFEST_FORMAT or data.get("complete"):
        return None
    key = data.get("key") or {}
    if key.get("weights_sha256") != card["files"].get("weights_sha256") or key.get("images") != len(dataset):
        return None
    return data


def gallery_progress(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None) -> int:
    """Images of the split a page can use now (:func:`partial_gallery`'s ``ready``): all of them once the gallery is
    stored, else the images of the leading shards a run has committed. Only the manifest is read: cheap to poll."""
    path = gallery_file(card, dataset, root)
    if path.is_file():
        return len(dataset)
    data = _committed(card, dataset, path)
    if data is None:
        return 0
    bounds = _run_bounds(data, len(dataset))
    leading = _leading_shards(data, bounds)
    return bounds[leading - 1][1] if leading else 0


def _run_bounds(data: dict[str, Any], n: int) -> list[tuple[int, int]]:
    """The shard bounds of the run a manifest records (its shard size and first shard)."""
    return shard_bounds(n, data["key"]["shard_size"], data["key"].get("first_shard", FIRST_SHARD))


def _leading_shards(data: dict[str, Any], bounds: list[tuple[int, int]], ready: int | None = None) -> int:
    """How many shards from the first on a manifest has committed without a gap (only those ending by ``ready``):
    the rows a partial gallery may use, a prefix of the embedding order."""
    leading = 0
    while (leading < len(bounds) and str(leading) in data["shards"]
           and (ready is None or bounds[leading][1] <= ready)):
        leading += 1
    return leading


def _prefix(dataset: RetrievalDataset, ready: int) -> np.ndarray:
    """Dataset indices of the first ``ready`` images of the embedding order, ascending."""
    return np.sort(embedding_order([y for _, y in dataset.samples])[:ready])


def partial_gallery(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None,
                    ready: int | None = None) -> Gallery | None:
    """The split's gallery as far as it is embedded: the stored file once complete, else the rows of the leading
    shards a run has committed (ascending dataset order, ``total`` set: a partial gallery, whose figures are never
    the checkpoint's), or None when no row is ready.

    ``ready`` pins a snapshot: the first ``ready`` images of the embedding order (a shard boundary, a partial
    gallery's :attr:`Gallery.done`), the same rows whether the run has gone further or finished since, so that every
    figure of one page is computed on one set of rows. Read without the run's lock: a shard file is whole before
    the manifest names it, and a shard removed by the run's assembly meanwhile means the complete file is there on
    the second look."""
    path = gallery_file(card, dataset, root)
    for _ in range(2):
        stored = load_gallery(path)
        if stored is not None and stored.done == len(dataset):
            if ready is None or ready >= len(dataset):
                return stored
            prefix = _prefix(dataset, ready)
            part = stored.subset(np.intersect1d(prefix, stored.indices))
            ids = {dataset.samples[i][0] for i in prefix}
            part.skipped, part.total = [s for s in stored.skipped if s in ids], len(dataset)
            return part
        data = _committed(card, dataset, path)
        if data is None:
            continue
        key = data["key"]
        records = [data["shards"][str(k)] for k in range(_leading_shards(data, _run_bounds(data, len(dataset)), ready))]
        try:
            blocks = []
            for k, rec in enumerate(records):
                if rec.get("rows"):
                    with np.load(_parts_dir(path) / _shard_name(k), allow_pickle=False) as shard:
                        blocks.append({name: shard[name] for name in ("before", "after", "labels", "indices")})
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue  # assembled (or restarted) between the two reads
        if not blocks:
            return None
        skipped = sorted((s for r in records for s in r.get("skipped", [])), key=lambda s: s["index"])
        indices = np.concatenate([b["indices"] for b in blocks])
        order = np.argsort(indices, kind="stable")
        cat = {name: np.concatenate([b[name] for b in blocks])[order] for name in ("before", "after", "labels")}
        plan_ = Plan(key["engine"], key["precision"])
        return Gallery(Embeddings(cat["before"], cat["after"], cat["labels"], plan_),
                       [dataset.samples[i][0] for i in indices[order]], list(dataset.classes), path,
                       [s["id"] for s in skipped], indices[order], plan_.precision, plan_.engine, len(dataset))
    return None


def _run_key(card: dict[str, Any], dataset: RetrievalDataset, plan_: Plan, shard_size: int) -> dict[str, Any]:
    """What the shards of a run depend on; a manifest with another key is a different run and starts over."""
    listing = json.dumps({"classes": list(dataset.classes), "samples": [[s, int(y)] for s, y in dataset.samples]},
                         ensure_ascii=True)
    return {"weights_sha256": card["files"].get("weights_sha256"), "input_size": card["input_size"],
            "dataset": dataset.name, "split": dataset.split, "images": len(dataset), "shard_size": shard_size,
            "first_shard": FIRST_SHARD, "order": ORDER, **plan_.as_dict(), "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def embedding_order(labels: np.ndarray | list[int], seed: int = 0) -> np.ndarray:
    """Dataset indices in a class-stratified order: each class's images interleaved so that any prefix holds every
    class in proportion to its size (image j of a class of n sits at (j + u) / n, u a per-class offset in [0, 1)).
    A partial gallery is then a fair sample of the split, not its first classes. Within a class the first image (in
    dataset order) comes first and the rest follow in a seeded shuffle: the image a page opens a class on is in
    the first shard, so the default query of every class is ready as soon as that shard lands."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        offset = rng.random()
        ranked = np.concatenate([members[:1], rng.permutation(members[1:])])
        keys[ranked] = (np.arange(len(members)) + offset) / len(members)
    return np.lexsort((np.arange(len(labels)), keys))


def shard_bounds(n: int, shard_size: int = SHARD_SIZE, first: int = FIRST_SHARD) -> list[tuple[int, int]]:
    """Positions (start, end) in :func:`embedding_order` of each shard: the first ``min(first, shard_size)``
    images, then doubling up to ``shard_size``. The first rows land in seconds; later shards amortise the
    commit."""
    bounds, start, size = [], 0, max(1, min(first, shard_size))
    while start < n:
        bounds.append((start, min(n, start + size)))
        start, size = start + size, min(shard_size, 2 * size)
    return bounds


class _Manifest:
    """The manifest of one gallery run (rank 0 only): which shards are committed, and the images skipped."""

    def __init__(self, gallery: Path, key: dict[str, Any], restart: bool):
        self.path, self.parts = manifest_file(gallery), _parts_dir(gallery)
        data = None if restart else _read_json(self.path)
        if not data or data.get("format") != MANIFEST_FORMAT or data.get("key") != key or data.get("complete"):
            shutil.rmtree(self.parts, ignore_errors=True)
            data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "key": key, "complete": False,
                    "shards": {}}
        self.data = data

    def finished(self) -> set[int]:
        """Shards whose file is present and intact (a damaged or missing one is recomputed)."""
        done = set()
        for k, rec in self.data["shards"].items():
            file = self.parts / str(rec.get("file"))
            try:
                if file.is_file() and file_sha256(file) == rec.get("sha256"):
                    done.add(int(k))
            except (OSError, ValueError):
                pass
        return done

    def commit(self, k: int, result: ReadableEmbeddings, dataset: RetrievalDataset) -> None:
        """Write shard ``k`` atomically, then record it: a shard is finished only once the manifest says so."""
        file = self.parts / _shard_name(k)
        emb = result.embeddings

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, before=emb.before, after=emb.after, labels=emb.labels, indices=result.indices)

        atomic_write(file, write)
        self.data["shards"][str(k)] = {
            "file": file.name, "sha256": file_sha256(file), "rows": int(len(result.indices)),
            "skipped": [{"index": i, "id": dataset.samples[i][0], "reason": reason} for i, reason in result.unreadable]}
        atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def assemble(self, dataset: RetrievalDataset, gallery: Path, count: int) -> None:
        """The gallery file from the shards, rows in dataset order, then the manifest marked complete and the parts
        removed. Shards are mapped and their rows scattered into a mapped scratch array one shard at a time: a
        million-row gallery never sits in memory (issue 10)."""
        blocks, skipped = [], []
        for k in range(count):
            if self.data["shards"][str(k)]["rows"]:
                blocks.append(npz_memmap(self.parts / _shard_name(k), ("before", "after", "labels", "indices")))
            skipped.extend(self.data["shards"][str(k)]["skipped"])
        if not blocks:
            first = skipped[0]["reason"] if skipped else ""
            raise DatasetError(f"None of the {len(dataset)} images of the {dataset.name} {dataset.split} split could "
                               f"be read ({first.rstrip('.')}); check the dataset folder.")
        key = self.data["key"]
        skipped.sort(key=lambda s: s["index"])
        _write_gallery(gallery, dataset, [self._in_dataset_order(blocks)], [s["id"] for s in skipped],
                       Plan(key["engine"], key["precision"]))
        del blocks  # unmap the shards before removing them
        self.data.update(complete=True, skipped=skipped, shards={})
        atomic_write_text(self.path, json.dumps(self.data, indent=1))
        shutil.rmtree(self.parts, ignore_errors=True)

    def _in_dataset_order(self, blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The shards' rows (embedding order) as one block in ascending dataset index, in mapped scratch files."""
        indices = np.concatenate([np.asarray(b["indices"]) for b in blocks])
        position = np.empty(len(indices), dtype=np.int64)
        position[np.argsort(indices, kind="stable")] = np.arange(len(indices))
        out = {}
        for name in ("before", "after", "labels", "indices"):
            first = blocks[0][name]
            out[name] = np.lib.format.open_memmap(self.parts / f"sorted-{name}.npy", mode="w+", dtype=first.dtype,
                                                  shape=(len(indices), *first.shape[1:]))
            start = 0
            for b in blocks:
                out[name][position[start:start + len(b[name])]] = np.asarray(b[name])
                start += len(b[name])
        return out


def _write_gallery(path: Path, dataset: RetrievalDataset, blocks: list[dict[str, np.ndarray]],
                   skipped_ids: list[str], plan_: Plan) -> None:
    """The gallery file (the format :func:`load_gallery` reads) from row blocks in dataset order (each with
    before, after, labels and indices), written atomically and a block at a time."""
    indices = np.concatenate([np.asarray(b["indices"]) for b in blocks])
    members = {name: [b[name] for b in blocks] for name in ("before", "after", "labels")}
    members.update(ids=[np.array([dataset.samples[i][0] for i in indices])], classes=[np.array(dataset.classes)],
                   skipped=[np.array(skipped_ids, dtype=str)], indices=[indices], precision=[np.array(plan_.precision)],
                   engine=[np.array(plan_.engine)])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write_npz_blocks(fh, members)

    atomic_write(path, write)


def store_gallery(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None,
                  embeddings: Embeddings) -> Gallery:
    """Store embeddings already computed for every image of ``dataset`` (training's final test evaluation) as
    the checkpoint's gallery, so the app's first visit and ``frpt embed`` read them instead of embedding the split
    again. Rows must be in dataset order, one per image, and record the plan (engine and precision) that computed
    them (queries are embedded the same way)."""
    if embeddings.plan is None:
        raise ValueError("embeddings without the plan that computed them cannot be stored as a gallery")
    if len(embeddings.labels) != len(dataset) or not np.array_equal(
            np.asarray(embeddings.labels), np.array([y for _, y in dataset.samples])):
        raise ValueError(f"{len(embeddings.labels)} embeddings do not match the {len(dataset)} images of "
                         f"{dataset.name}/{dataset.split} in order")
    path = gallery_file(card, dataset, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f"{path.stem}.lock"))):
        block = {"before": embeddings.before, "after": embeddings.after, "labels": embeddings.labels,
                 "indices": np.arange(len(dataset), dtype=np.int64)}
        _write_gallery(path, dataset, [block], [], embeddings.plan)
        # Shards of an earlier interrupted `frpt embed` run on these weights are superseded.
        shutil.rmtree(_parts_dir(path), ignore_errors=True)
        manifest_file(path).unlink(missing_ok=True)
    gallery = load_gallery(path)
    if gallery is None:
        raise DatasetError(f"The gallery file {path} could not be read back after writing; check the disk.")
    return gallery


def index_dir(path: Path) -> Path:
    """Where the retrieval index of gallery ``path`` is kept: ``<gallery>.index/`` beside it (frpt.index's
    index.json, vectors.npy, faiss.index, and gallery.json naming the gallery file it was built from)."""
    return path.with_name(f"{path.stem}.index")


def _gallery_stamp(gallery: Gallery) -> dict[str, Any]:
    stat = gallery.path.stat()
    return {"gallery": gallery.path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "rows": len(gallery.ids)}


def store_index(gallery: Gallery, memory_budget: int | None = None, spec: IndexSpec | None = None,
                device: str = "") -> RetrievalIndex:
    """Build the index :func:`frpt.index.choose_spec` picks for the gallery's retrieval embeddings (size and
    ``memory_budget`` bytes; ``spec`` to force one) and save it beside the gallery with the choice and its
    parameters. gallery.json is written last: an interrupted build leaves no index that :func:`stored_index` uses,
    and a gallery rewritten since (``frpt embed --recompute``) no longer matches its stamp."""
    folder = index_dir(gallery.path)
    (folder / "gallery.json").unlink(missing_ok=True)
    index = RetrievalIndex.build(gallery.embeddings.after, memory_budget, spec, device=device)
    index.save(folder)
    atomic_write_text(folder / "gallery.json", json.dumps(_gallery_stamp(gallery), indent=1) + "\n")
    return index


def stored_index(gallery: Gallery, device: str = "") -> RetrievalIndex | None:
    """The index :func:`store_index` saved for this very gallery file, or None (none, interrupted, or stale);
    ``device`` (a torch device) holds an exact index's vectors there (:meth:`RetrievalIndex.load`)."""
    folder = index_dir(gallery.path)
    if _read_json(folder / "gallery.json") != _gallery_stamp(gallery):
        return None
    try:
        return RetrievalIndex.load(folder, device=device)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # damaged: search exactly instead


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # missing or damaged: start over
    return data if isinstance(data, dict) else None


def _model_device(model: FRPT) -> torch.device:
    return next(model.parameters()).device


def gallery_embeddings(model: FRPT, card: dict[str, Any], dataset: RetrievalDataset, *,
                       root: str | os.PathLike | None = None, batch_size: int = 64, precision: str = "auto",
                       engine: str | None = None, progress: bool = True, recompute: bool = False,
                       device: str | torch.device | None = None, shard_size: int = SHARD_SIZE,
                       on_shard: Callable[[int], None] | None = None, on_images: Callable[[int], None] | None = None,
                       workers: int | None = None) -> Gallery:
    """Load the stored gallery embeddings, or compute them shard by shard (resuming a killed run) and store them.

    Images that cannot be decoded are skipped and listed (``Gallery.skipped`` and the manifest), never fatal.
    ``precision`` "auto" (the app's and ``frpt embed``'s): bf16 only where the CPU has it natively; ``engine``
    (None: ``$FRPT_ENGINE`` or auto) runs the frozen backbone (:mod:`frpt.engine`). A stored gallery is read
    whatever the engine asked for: it records its own, and queries follow it.
    ``on_shard(k)`` is called on rank 0 once shard ``k`` is committed, ``on_images(n)`` in this process after each
    batch with the images done so far (progress hooks, tests). ``workers``: decoding processes
    (:func:`frpt.evaluation.loader`; None: a decoding thread, 0: decoded in the loop)."""
    path = gallery_file(card, dataset, root)
    main = distributed.is_main()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rank 0 holds the lock for the whole run (the other ranks of a torchrun job follow its decisions below).
    with FileLock(str(path.with_name(f"{path.stem}.lock"))) if main else nullcontext():
        return _gallery_locked(model, card, dataset, path, batch_size=batch_size, precision=precision,
                               engine=engine, progress=progress, recompute=recompute, device=device,
                               shard_size=shard_size, on_shard=on_shard, on_images=on_images, workers=workers)


def _gallery_locked(model: FRPT, card: dict[str, Any], dataset: RetrievalDataset, path: Path, *, batch_size: int,
                    precision: str, engine: str | None, progress: bool, recompute: bool,
                    device: str | torch.device | None, shard_size: int, on_shard: Callable[[int], None] | None,
                    on_images: Callable[[int], None] | None, workers: int | None) -> Gallery:
    main = distributed.is_main()
    cached = None if recompute or not main else load_gallery(path)
    complete = cached is not None and len(cached.ids) + len(cached.skipped) == len(dataset)
    if distributed.broadcast_object(complete if main else None):  # rank 0 read it under the lock
        if main and _parts_dir(path).exists():  # left by a run killed after assembling the gallery
            shutil.rmtree(_parts_dir(path), ignore_errors=True)
        return cached if main else load_gallery(path)
    if shard_size < 1:
        raise DatasetError(f"Shard size {shard_size} is not usable; use a positive number of images.")
    device = torch.device(device) if device is not None else _model_device(model)
    plan_ = plan(engine, precision, device, model)
    key = _run_key(card, dataset, plan_, shard_size)
    manifest = _Manifest(path, key, restart=recompute) if main else None
    done = distributed.broadcast_object(manifest.finished() if manifest else None)
    order = embedding_order([y for _, y in dataset.samples])
    bounds = shard_bounds(len(dataset), shard_size)
    count = len(bounds)
    pending = [k for k in range(count) if k not in done]

    def rows(k: int) -> list[int]:
        return order[bounds[k][0]:bounds[k][1]].tolist()

    bar = tqdm(total=sum(len(rows(k)) for k in pending), unit="img", disable=not (progress and main),
               desc=f"gallery {dataset.name}/{dataset.split}")
    if done and pending and progress and main:
        tqdm.write(f"resuming: {len(done)} of {count} shards were embedded by an earlier run", file=sys.stderr)
    world, rank = distributed.world_size(), distributed.rank()
    done_images = len(dataset) - sum(len(rows(k)) for k in pending)

    def advance(n: int) -> None:
        nonlocal done_images
        done_images += n
        bar.update(n)
        if on_images is not None:
            on_images(done_images)

    try:
        for start in range(0, len(pending), world):
            group = pending[start:start + world]  # one shard per process in this round
            mine = group[rank] if rank < len(group) else None
            result = None if mine is None else embed_readable(
                model, dataset, rows(mine), batch_size=batch_size, device=device, precision=plan_.precision,
                engine=plan_.engine, workers=workers, on_batch=lambda n, scale=len(group): advance(n * scale))
            results = distributed.gather_objects(result)
            if manifest is not None:
                for k, res in zip(group, results):
                    manifest.commit(k, res, dataset)
                bar.n = sum(len(rows(k)) for k in pending[:start + len(group)])
                bar.refresh()
                for k in group:
                    if on_shard is not None:
                        on_shard(k)
        if manifest is not None:
            manifest.assemble(dataset, path, count)
    finally:
        bar.close()
    distributed.barrier()  # the other processes read what rank 0 has just written
    gallery = load_gallery(path)
    if gallery is None:
        raise DatasetError(f"The gallery file {path} could not be read back after writing; check the disk.")
    return gallery
