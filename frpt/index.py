"""Cosine nearest-neighbour search over a gallery of embeddings: exact, or approximate for 1M+ galleries.

Exact search is blocked float32 matrix products + a top-k selection over the gallery *as given* (an array or a
read-only memmap of a .npy), divided by precomputed row norms, so a gallery is never copied whole: only one
block (``GALLERY_BLOCK`` rows) is converted at a time and each block is read once per call, for all queries.
faiss' ``IndexFlatIP`` is not used for it: bench/bench_speed.py found it slower than this path at 10k, 100k
and 1M vectors (bench/RESULTS.md, "Speed").

Approximate search (faiss IVF or HNSW over fp32, fp16, 8-bit SQ or PQ codes) is for galleries where exact
search is too slow or too big; ``choose_spec`` picks it by gallery size and a memory budget
(bench/bench_index.py, bench/RESULTS.md "Approximate index"), and ``build`` calibrates nprobe/efSearch to a
target recall@10 on held-out gallery rows. ``save``/``load`` keep the choice in ``index.json`` beside
``vectors.npy`` (L2-normalised, memory-mapped on load) and ``faiss.index``.

On a GPU (``device="cuda"``) exact search is a scan of the normalised vectors held in device memory (fp16 unless
the budget allows fp32; fp16 scores pick ``RERANK`` x k candidates that are re-scored in float32): an H100 reads
1M x 1280 fp16 rows in about a millisecond, so exact search wins at every size that fits the card, including
random vectors, where no approximate index reaches recall@10 0.95 without scanning everything
(bench/bench_gpu_index.py, bench/RESULTS.md "Exact search on a GPU").
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .fileio import atomic_write, atomic_write_text

GALLERY_BLOCK = 65_536   # gallery rows per exact-search block (~320 MB of float32 at width 1280)
ADD_BLOCK = 16_384       # rows per faiss add: bounds the block copy and faiss' (rows x nlist) assignment scores
QUERY_BLOCK = 256        # queries per block: bounds the (queries x block) score matrix and the rerank gather
EXACT_MAX_N = 100_000    # above: approximate; exact is ~65 ms per single query here (RESULTS "Approximate index")
HNSW_MAX_N = 1_000_000   # above: IVF. At 1M clustered rows HNSW32-SQ8 met the 1M goal (recall@10 0.99 at 3.4 ms a
                         # query, 1.8 GB owned) where IVF did not, but took 19 min to build on 2 cores (IVF: 1-6 min)
DEVICE_SCORES = 1 << 26  # scores per block on a torch device (128 MB of fp16): 256 queries x 262,144 rows, or
                         # one query against 64M rows, so a single query is one read of the gallery
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
STAGE_MIN_QUERIES = 16   # exact search of an unaligned gallery: from this many queries, blocks are copied first
RERANK = 4               # sq8/pq codes: re-score RERANK * k candidates from vectors.npy
STORAGES = ("fp32", "fp16", "sq8", "pq")  # most precise first
KINDS = ("exact", "ivf", "hnsw")
INDEX_JSON, VECTORS_NPY, FAISS_INDEX = "index.json", "vectors.npy", "faiss.index"
FORMAT = 1


@dataclass
class IndexSpec:
    """What kind of index, with which parameters; written to index.json. ``storage`` is what a search scans:
    vectors.npy's dtype for exact search (fp32/fp16), the faiss codes otherwise."""

    kind: str = "exact"
    storage: str = "fp32"
    nlist: int = 0              # IVF lists
    nprobe: int = 0             # IVF lists scanned per query
    M: int = 0                  # HNSW graph degree
    ef_construction: int = 0
    ef_search: int = 0
    pq_m: int = 0               # PQ bytes per vector
    rerank: int = 0             # re-score rerank * k candidates exactly (0: off)
    n: int = 0
    dim: int = 0
    build_seconds: float = 0.0
    index_bytes: int = 0        # estimate of what a search keeps resident
    recall_at_10: float | None = None  # calibration estimate: held-out gallery rows vs exact search
    note: str = ""              # why the choice differs from choose_spec's, if it does
    device: str = ""            # torch device holding the vectors of an exact search ("": host numpy)

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.storage not in STORAGES:
            raise ValueError(f"unknown index kind/storage {self.kind}/{self.storage}")
        if self.kind == "exact" and self.storage not in ("fp32", "fp16"):
            raise ValueError("exact search stores fp32 or fp16 vectors")
        if self.device and self.kind != "exact":
            raise ValueError(f"only exact search runs on a torch device (faiss-cpu builds {self.kind} indexes)")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A normalised float32 copy, made in place (no second temporary of the input's size)."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]
    return x


def _bytes_per_vector(storage: str, dim: int, pq_m: int) -> int:
    return {"fp32": 4 * dim, "fp16": 2 * dim, "sq8": dim, "pq": pq_m}[storage]


def estimate_bytes(spec: IndexSpec) -> int:
    """Resident bytes of a search: codes, plus IVF ids and centroids or the HNSW graph (2M links on level 0,
    ~M/(M-1) above, offsets and levels)."""
    codes = spec.n * _bytes_per_vector(spec.storage, spec.dim, spec.pq_m)
    if spec.kind == "ivf":
        return codes + 8 * spec.n + 4 * spec.nlist * spec.dim
    if spec.kind == "hnsw":
        return codes + spec.n * (4 * (2 * spec.M + 2) + 12)
    return codes


def _pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` up to dim/16 (80 bytes at width 1280): faiss' PQ needs dim % m == 0."""
    return max(m for m in range(1, max(1, dim // 16) + 1) if dim % m == 0)


def make_spec(kind: str, storage: str, n: int, dim: int, **overrides) -> IndexSpec:
    """``kind``/``storage`` with this module's default parameters for ``n`` x ``dim`` vectors (``overrides``
    win): ~sqrt(n) IVF lists, so k-means and assignment stay minutes at 10M; nprobe nlist/32 and efSearch 64
    as calibration's starting points; rerank for the lossy codes."""
    nlist = 2 ** max(4, round(math.log2(math.sqrt(max(n, 1)))))
    params = {"exact": {}, "ivf": {"nlist": nlist, "nprobe": max(1, nlist // 32)},
              "hnsw": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": 64}}[kind]
    spec = IndexSpec(kind=kind, storage=storage, n=n, dim=dim, pq_m=_pq_m(dim) if storage == "pq" else 0,
                     rerank=RERANK if storage in ("sq8", "pq") else 0, **{**params, **overrides})
    spec.index_bytes = estimate_bytes(spec)
    return spec


def choose_spec(n: int, dim: int, memory_budget: int | None = None, device: str = "") -> IndexSpec:
    """Exact up to ``EXACT_MAX_N`` vectors, HNSW up to ``HNSW_MAX_N``, IVF beyond; within that kind the most
    precise storage whose resident size fits ``memory_budget`` bytes (None: no limit). When nothing of the
    preferred kind fits, the other approximate kinds are tried (IVF first: its codes carry the least overhead).
    On a GPU ``device`` (``memory_budget`` then counts device memory) exact search comes first at every size."""
    if device and device != "cpu":
        exact = _exact_within(n, dim, memory_budget)
        if exact is not None:
            exact.device = device
            return exact
    order = ["exact", "hnsw", "ivf"] if n <= EXACT_MAX_N else ["hnsw", "ivf"] if n <= HNSW_MAX_N else ["ivf"]
    order += [k for k in ("ivf", "hnsw") if k not in order]
    for kind in order:
        for storage in STORAGES[:2] if kind == "exact" else STORAGES:
            spec = make_spec(kind, storage, n, dim)
            if memory_budget is None or spec.index_bytes <= memory_budget:
                return spec
    raise ValueError(f"No index of {n:,} x {dim} vectors fits {memory_budget:,} bytes (the smallest, IVF-PQ, "
                     f"needs {make_spec('ivf', 'pq', n, dim).index_bytes:,})")


def _exact_within(n: int, dim: int, memory_budget: int | None) -> IndexSpec | None:
    for storage in ("fp32", "fp16"):
        spec = make_spec("exact", storage, n, dim)
        if memory_budget is None or spec.index_bytes <= memory_budget:
            return spec
    return None


def _factory(spec: IndexSpec) -> str:
    # "np": no polysemous training, which only serves Hamming filtering and costs minutes
    codes = {"fp32": "Flat", "fp16": "SQfp16", "sq8": "SQ8", "pq": f"PQ{spec.pq_m}np"}[spec.storage]
    if spec.kind == "ivf":
        return f"IVF{spec.nlist},{codes}"
    return f"HNSW{spec.M}_{codes}" if spec.storage == "pq" else f"HNSW{spec.M},{codes}"


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of every row of ``x`` (floored at 1e-12), a block at a time: one pass over a mapped gallery."""
    out = np.empty(len(x), np.float32)
    for s in range(0, len(x), GALLERY_BLOCK):
        b = np.asarray(x[s:s + GALLERY_BLOCK], np.float32)
        out[s:s + len(b)] = np.sqrt(np.einsum("ij,ij->i", b, b))
    return np.maximum(out, 1e-12)


def cosine_scores(query: np.ndarray, gallery: np.ndarray, norms: np.ndarray | None = None,
                  block: int = GALLERY_BLOCK) -> np.ndarray:
    """Cosine similarity of ``query`` (D,) to every row of ``gallery`` (N, D), a block of rows at a time: a
    memory-mapped gallery of a million rows is read through, never copied or normalised whole. ``norms``: the
    rows' :func:`row_norms`, computed once per gallery (otherwise each call computes them, a second pass). The
    full score vector (not a top-k) is what a page needs for average precision over the whole ranking."""
    q = np.asarray(query, np.float32).reshape(-1)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    out = np.empty(len(gallery), np.float32)
    for start in range(0, len(gallery), block):
        rows = np.asarray(gallery[start:start + block], np.float32)
        scale = norms[start:start + block] if norms is not None else row_norms(rows)
        # einsum, not rows @ q: OpenBLAS' sgemv read a mapped 1M x 1280 gallery at a third of the speed here
        out[start:start + len(rows)] = np.einsum("ij,j->i", rows, q) / scale
    return out


def _merge_top(scores: np.ndarray, idx: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``kk`` per row of (scores, idx), sorted best first (stable, so ties keep gallery order)."""
    if scores.shape[1] > kk:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        scores, idx = np.take_along_axis(scores, part, 1), np.take_along_axis(idx, part, 1)
    order = np.lexsort((idx, -scores), axis=1) if scores.size else np.zeros_like(idx)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


class RetrievalIndex:
    """``RetrievalIndex(gallery).search(queries, k) -> (scores, indices)``, best first, cosine scores.

    The constructor gives exact search over ``gallery`` as given (no copy); ``build`` and ``load`` give the
    chosen kind. Indices are -1 (score -inf) where an approximate search found fewer than ``k`` items."""

    def __init__(self, embeddings: np.ndarray, backend: str = "numpy"):
        embeddings = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings, np.float32)
        if backend not in ("numpy", "auto"):  # the faiss IndexFlatIP backend lost at every size: see the docstring
            raise ValueError(f"exact search has one backend, numpy (got {backend!r}); approximate: build()")
        self._setup(embeddings, IndexSpec(n=len(embeddings), dim=int(embeddings.shape[1])), None, None)

    def _setup(self, vectors: np.ndarray, spec: IndexSpec, faiss_index, norms: np.ndarray | None | str) -> None:
        self.vectors = vectors
        self.spec = spec
        self._faiss = faiss_index
        self._on_device = None  # torch tensor of the normalised vectors when spec.device is set
        if spec.device:
            self._norms = None
            self._on_device = _upload(vectors, spec)  # normalised there: no host pass for the norms
        else:
            # row norms divide exact scores (no normalised copy); "unit": stored normalised (saved indexes)
            self._norms = None if isinstance(norms, str) else row_norms(vectors) if norms is None else norms
        if spec.index_bytes == 0:
            spec.index_bytes = estimate_bytes(spec)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def __len__(self) -> int:
        return len(self.vectors)

    # ------------------------------------------------------------ build / save / load
    @classmethod
    def build(cls, embeddings: np.ndarray, memory_budget: int | None = None, spec: IndexSpec | None = None, *,
              target_recall: float | None = 0.95, calibration_queries: int = 200, seed: int = 0,
              device: str = "") -> RetrievalIndex:
        """Index ``embeddings`` (an array or memmap, not copied) with ``spec`` or ``choose_spec``'s choice.
        Approximate kinds are trained on a seeded sample and filled block by block; with ``target_recall``
        their nprobe/efSearch is raised until recall@10 on held-out gallery rows reaches it. An automatic choice
        that only reaches it by searching exhaustively becomes exact search when that fits ``memory_budget``.
        ``storage`` shapes what ``save`` writes and ``load`` maps; in memory an exact index scans ``embeddings``,
        or, with ``device`` (a torch device such as "cuda"), a normalised copy in that device's memory."""
        n, dim = int(embeddings.shape[0]), int(embeddings.shape[1])
        auto = spec is None
        if auto:
            spec = choose_spec(n, dim, memory_budget, device)
            device = device if spec.kind == "exact" else ""  # a choice that did not fit the device stays on the host
        spec = replace(spec, n=n, dim=dim, device=device or spec.device)  # IndexSpec refuses approximate on a device
        if (spec.kind != "exact" and not (spec.nlist or spec.M)) or (spec.storage == "pq" and not spec.pq_m):
            raise ValueError(f"incomplete {spec.kind} spec {spec}: use make_spec()")
        t0 = time.perf_counter()
        index = cls.__new__(cls)
        if spec.kind == "exact":
            index._setup(embeddings, spec, None, None)
        else:
            index._setup(embeddings, spec, _train_and_fill(embeddings, spec, seed), None)
        spec.build_seconds = round(time.perf_counter() - t0, 2)
        spec.index_bytes = estimate_bytes(spec)
        if spec.kind != "exact" and target_recall is not None:
            recall = index.calibrate(target_recall, calibration_queries, seed=seed)
            exact = _exact_within(n, dim, memory_budget)
            if auto and index._exhausted(target_recall) and exact is not None:
                # no cluster/graph structure to exploit (random-like vectors): an approximate index that must
                # scan everything is slower than exact BLAS (bench/RESULTS.md "Approximate index", 1M random)
                exact.note = (f"{spec.kind} {spec.storage} reached recall@10 {recall:.3f} only with an exhaustive "
                              f"search (nprobe {spec.nprobe}/{spec.nlist}, efSearch {spec.ef_search}): exact instead")
                return cls.build(embeddings, spec=exact)
        return index

    def _exhausted(self, target_recall: float) -> bool:
        """Calibration missed the target, or IVF needed every list."""
        s = self.spec
        return (s.recall_at_10 or 0.0) < target_recall or (s.kind == "ivf" and s.nprobe >= s.nlist)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write vectors.npy (L2-normalised; float16 unless storage is fp32), faiss.index and index.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = np.float32 if self.spec.storage == "fp32" else np.float16

        def write_vectors(tmp: str) -> None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(self), self.spec.dim))
            for s in range(0, len(self), GALLERY_BLOCK):
                out[s:s + GALLERY_BLOCK] = self._block(s, s + GALLERY_BLOCK)
            out.flush()
            del out

        atomic_write(folder / VECTORS_NPY, write_vectors)
        if self._faiss is not None:
            import faiss
            atomic_write(folder / FAISS_INDEX, lambda tmp: faiss.write_index(self._faiss, tmp))
        record = {"format": FORMAT, **asdict(self.spec), "vectors": VECTORS_NPY, "vectors_dtype": np.dtype(dtype).name,
                  "faiss_index": FAISS_INDEX if self._faiss is not None else None}
        atomic_write_text(folder / INDEX_JSON, json.dumps(record, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True, device: str = "") -> RetrievalIndex:
        """Read what ``save`` wrote; ``mmap`` maps vectors.npy (and IVF lists) instead of reading them; ``device``:
        an exact index searches from a copy in that torch device's memory, whatever device built it (approximate
        ones stay with faiss on the host)."""
        folder = Path(folder)
        record = json.loads((folder / INDEX_JSON).read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"{folder / INDEX_JSON}: unknown format {record.get('format')}")
        stored = {f.name: record[f.name] for f in fields(IndexSpec) if f.name in record and f.name != "device"}
        # where it searches now, not where it was built
        spec = IndexSpec(**stored, device=device if stored.get("kind", "exact") == "exact" else "")
        vectors = np.load(folder / record["vectors"], mmap_mode="r" if mmap else None)
        if vectors.shape != (spec.n, spec.dim):
            raise ValueError(f"{folder}: vectors {vectors.shape} but index.json says {(spec.n, spec.dim)}")
        faiss_index = None
        if record.get("faiss_index"):
            import faiss
            flags = faiss.IO_FLAG_MMAP if mmap and spec.kind == "ivf" else 0
            faiss_index = faiss.read_index(str(folder / record["faiss_index"]), flags)
            if faiss_index.ntotal != spec.n:
                raise ValueError(f"{folder}: faiss index holds {faiss_index.ntotal} vectors, expected {spec.n}")
        index = cls.__new__(cls)
        index._setup(vectors, spec, faiss_index, "unit")
        index._apply_search_params()
        return index

    # ------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items per query (a (D,) vector or (Q, D) batch, searched in blocks so memory stays
        bounded). ``exclude[i]`` (a gallery index, or -1) is left out of query i's results: the query itself when
        it belongs to the gallery (leave-one-out)."""
        q = l2_normalize(np.atleast_2d(queries))
        if q.shape[1] != self.spec.dim:
            raise ValueError(f"queries have width {q.shape[1]}, the gallery {self.spec.dim}")
        kk = min(k + (exclude is not None), len(self))
        if self._faiss is None:
            scores, idx = self._exact(q, kk)
        else:
            blocks = [self._approximate(q[s:s + QUERY_BLOCK], kk) for s in range(0, len(q), QUERY_BLOCK)]
            scores = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros((0, kk), np.float32)
            idx = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros((0, kk), np.int64)
        if exclude is None:
            return scores[:, :k], idx[:, :k]
        keep = idx != np.asarray(exclude).reshape(-1)[:, None]
        # stable sort on "dropped" moves excluded items last while keeping the ranking of the rest
        width = min(k, kk - 1) if kk == len(self) else k  # a gallery of <= k rows has k - 1 others
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)

    def _block(self, start: int, stop: int) -> np.ndarray:
        """Gallery rows [start, stop) as L2-normalised float32."""
        if self._on_device is not None:
            return self._on_device[start:stop].float().cpu().numpy()
        b = np.asarray(self.vectors[start:stop], dtype=np.float32)
        return b if self._norms is None else b / self._norms[start:stop, None]

    def _exact(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        if self._on_device is not None:
            return self._exact_on_device(q, kk)
        import torch

        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        # numpy multiplies an array that is not aligned to its item size without BLAS, 3.5-5x slower (0.84 vs
        # 0.17-0.24 s for 256 queries x 65,536 rows; the copy takes 0.08 s; bench/probes/bench_exact_blocks.py):
        # galleries written before write_npz_blocks aligned
        # its members are mapped at any byte, so a batch copies each of their blocks into one aligned buffer first
        staged = not self.vectors.flags.aligned and len(q) >= STAGE_MIN_QUERIES
        buffer = None
        for s in range(0, len(self), GALLERY_BLOCK):
            g = np.asarray(self.vectors[s:s + GALLERY_BLOCK], dtype=np.float32)  # a view of float32 galleries
            if staged:
                buffer = np.empty_like(g) if buffer is None else buffer
                block = buffer[:len(g)]
                np.copyto(block, g)
                g = block
            inv = None if self._norms is None else 1.0 / self._norms[s:s + GALLERY_BLOCK]
            new_s, new_i = [], []
            for qs in range(0, len(q), QUERY_BLOCK):
                sims = q[qs:qs + QUERY_BLOCK] @ g.T
                if inv is not None:
                    sims *= inv  # cosine without a normalised copy of the block
                # torch's topk, not np.argpartition: 3.5x faster on a 256 x 65,536 block here (0.02 vs 0.07 s,
                # bench/probes/bench_exact_blocks.py)
                top = torch.from_numpy(sims).topk(min(kk, sims.shape[1]), dim=1, sorted=False)
                new_s.append(top.values.numpy())
                new_i.append(top.indices.numpy() + s)
            best_s, best_i = _merge_top(np.concatenate([best_s, np.concatenate(new_s)], 1),
                                        np.concatenate([best_i, np.concatenate(new_i)], 1), kk)
        return best_s, best_i

    def _exact_on_device(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocked scan of the device copy: the top ``fetch`` of each block by scores in the storage dtype, merged;
        with fp16 storage the ``RERANK * kk`` candidates are re-scored in float32 (fp16 scores near 0.1 are only
        resolved to ~1e-4, the size of the gaps between neighbours among a million random vectors)."""
        import torch

        g = self._on_device
        fp16 = g.dtype != torch.float32
        fetch = min(len(g), RERANK * kk if fp16 else kk)
        scores_out, idx_out = [], []
        with torch.inference_mode():
            queries = torch.from_numpy(q).to(g.device)
            for qs in range(0, len(queries), QUERY_BLOCK):
                qb = queries[qs:qs + QUERY_BLOCK]
                best_s = torch.empty((len(qb), 0), dtype=g.dtype, device=g.device)
                best_i = torch.empty((len(qb), 0), dtype=torch.int64, device=g.device)
                rows = max(1, DEVICE_SCORES // len(qb))
                for s in range(0, len(g), rows):
                    sims = qb.to(g.dtype) @ g[s:s + rows].T
                    top_s, top_i = sims.topk(min(fetch, sims.shape[1]), dim=1)
                    best_s, pick = torch.cat([best_s, top_s], 1).topk(min(fetch, best_s.shape[1] + top_s.shape[1]), 1)
                    best_i = torch.cat([best_i, top_i + s], 1).gather(1, pick)
                if fp16:  # float32 scores of the candidates, from the same stored rows
                    best_s = torch.einsum("qd,qcd->qc", qb, g[best_i].float())
                scores_out.append(best_s.float().cpu().numpy())
                idx_out.append(best_i.cpu().numpy())
        return _merge_top(np.concatenate(scores_out), np.concatenate(idx_out), kk)  # ties: gallery order, as on host

    def _approximate(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(max(kk, self.spec.rerank * kk), len(self))
        scores, idx = self._faiss.search(q, fetch)
        if self.spec.rerank:
            valid = idx >= 0
            rows = np.where(valid, idx, 0)
            flat, inverse = np.unique(rows, return_inverse=True)  # sorted reads from a memmap
            g = self._rows(flat)[inverse.reshape(rows.shape)]
            scores = np.where(valid, np.einsum("qd,qcd->qc", q, g), -np.inf).astype(np.float32)
        scores = np.where(idx >= 0, scores, -np.inf).astype(np.float32)
        return _merge_top(scores, idx.astype(np.int64), kk)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        if self._on_device is not None:
            import torch
            return self._on_device[torch.as_tensor(rows, device=self._on_device.device)].float().cpu().numpy()
        g = np.asarray(self.vectors[rows], dtype=np.float32)
        return g if self._norms is None else g / self._norms[rows, None]

    # ------------------------------------------------------------ calibration
    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set IVF's nprobe or HNSW's efSearch (recorded in ``spec``, so ``save`` keeps it)."""
        if nprobe is not None:
            self.spec.nprobe = nprobe
        if ef_search is not None:
            self.spec.ef_search = ef_search
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._faiss is None:
            return
        import faiss
        ps = faiss.ParameterSpace()
        if self.spec.kind == "ivf":
            ps.set_index_parameter(self._faiss, "nprobe", self.spec.nprobe)
        else:
            ps.set_index_parameter(self._faiss, "efSearch", self.spec.ef_search)

    def calibrate(self, target_recall: float = 0.95, queries: int = 200, k: int = 10, seed: int = 0) -> float:
        """Double nprobe (IVF) or efSearch (HNSW) until recall@``k`` of held-out gallery rows (themselves
        excluded) against exact search reaches ``target_recall``, or the parameter is at its useful maximum
        (all lists; efSearch 4096). Records and returns the recall reached."""
        if self._faiss is None:
            return 1.0
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(self), size=min(queries, len(self)), replace=False))
        q = self._rows(rows)
        truth = self.exact_topk(q, k, exclude=rows)
        ivf = self.spec.kind == "ivf"
        top = self.spec.nlist if ivf else 4096
        value = max(1, self.spec.nprobe if ivf else max(self.spec.ef_search, k))
        while True:
            self.set_search_params(**({"nprobe": value} if ivf else {"ef_search": value}))
            recall = recall_at_k(self.search(q, k, exclude=rows)[1], truth)
            if recall >= target_recall or value >= top:
                break
            value = min(2 * value, top)
        self.spec.recall_at_10 = round(recall, 4) if k == 10 else self.spec.recall_at_10
        return recall

    def exact_topk(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Exact top-``k`` indices whatever this index's kind (ground truth for recall)."""
        if self._on_device is not None:
            return self.search(queries, k, exclude=exclude)[1]
        exact = RetrievalIndex.__new__(RetrievalIndex)
        exact._setup(self.vectors, replace(self.spec, kind="exact", storage="fp32", rerank=0), None,
                     self._norms if self._norms is not None else "unit")
        return exact.search(queries, k, exclude=exclude)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k (rows of ``truth``) that ``found`` recovered, averaged over queries."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f[:k], t)) / k for f, t in zip(found, truth)]))


def _upload(x: np.ndarray, spec: IndexSpec):
    """The rows of ``x`` L2-normalised into a tensor on ``spec.device`` in ``spec.storage``'s dtype, a block at a
    time: the host reads each block once and never holds a normalised copy."""
    import torch

    dtype = torch.float32 if spec.storage == "fp32" else torch.float16
    out = torch.empty((len(x), x.shape[1]), dtype=dtype, device=spec.device)
    for s in range(0, len(x), ADD_BLOCK):  # small blocks: 84 MB beside the copy at width 1280 (a budget of 3 GB)
        with warnings.catch_warnings():  # a read-only memmap: the tensor is only read, so no copy is needed
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            block = torch.from_numpy(np.ascontiguousarray(x[s:s + ADD_BLOCK]))
        block = block.to(spec.device).float()
        block /= torch.linalg.vector_norm(block, dim=1, keepdim=True).clamp_min_(1e-12)
        out[s:s + len(block)] = block
    return out


def _train_and_fill(x: np.ndarray, spec: IndexSpec, seed: int):
    """A faiss index of ``spec`` over the rows of ``x``, trained on a seeded sample of them and filled in
    blocks of normalised rows, so ``x`` is read once and never copied whole."""
    import faiss

    index = faiss.index_factory(spec.dim, _factory(spec), faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = spec.ef_construction
    if not index.is_trained:
        want = max(40 * spec.nlist, 256 * 40 if spec.storage == "pq" else 0, 20_000)
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size=min(want, len(x)), replace=False))
        if spec.kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter, ivf.cp.seed = 10, seed
        index.train(l2_normalize(x[rows]))
    for s in range(0, len(x), ADD_BLOCK):
        index.add(l2_normalize(x[s:s + ADD_BLOCK]))
    return index
