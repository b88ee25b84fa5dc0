"""Approximate vs exact retrieval at 100k-10M gallery vectors: build time, memory, latency, recall@10.

For each data set (``random``: unit vectors with no structure, the worst case for IVF/HNSW; ``clustered``: unit
vectors drawn around n/100 random centres, closer to real embeddings of many classes) the gallery is generated
in chunks with a seeded generator into ``<workdir>/<data>-<n>/vectors.npy`` and memory-mapped, queries are fresh
draws from the same distribution, and exact search (``RetrievalIndex`` over the memmap) gives the ground truth
and the exact latencies. Then for each index spec (``auto`` = ``choose_spec`` under ``--memory-budget-gb``, or
``kind:storage`` such as ``ivf:sq8``): build with calibration to ``--target-recall``, save, load memory-mapped,
and time a batch of queries (one call) and single queries; recall@10 is against the exact top-10. ``--sweep``
adds the recall/latency curve over nprobe (IVF) or efSearch (HNSW).
One JSON line per measurement. Memory is sampled from /proc/self/status every 0.1 s: anonymous RSS (what the
process owns) and file-backed RSS (memmapped pages, reclaimable page cache) separately.

  python bench/bench_index.py --n 100000 --data random clustered --specs auto hnsw:fp32 ivf:sq8
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frpt.index import RetrievalIndex, choose_spec, make_spec, recall_at_k  # noqa: E402

CHUNK = 50_000
POINTS_PER_CENTRE = 100


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def rss() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
            key, value = line.split()[:2]
            out[key[:-1]] = int(value) * 1024
    return out


class MemoryPeak:
    """Peak anonymous and file-backed RSS while the block runs (sampled)."""

    def __enter__(self) -> MemoryPeak:
        self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            now = rss()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = rss()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def gb(self) -> dict[str, float]:
        return {"peak_rss_anon_gb": round(self.peak["RssAnon"] / 2**30, 3),
                "peak_rss_file_gb": round(self.peak["RssFile"] / 2**30, 3)}


def draw(rng: np.random.Generator, rows: int, dim: int, centres: np.ndarray | None, sigma: float) -> np.ndarray:
    """Unit vectors: isotropic, or ``centre + sigma * noise`` with noise of norm ~1 (cosine ~0.7 to the centre,
    ~0.5 between two draws of one centre, ~0 across centres)."""
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    if centres is not None:
        x *= sigma / np.sqrt(dim)
        x += centres[rng.integers(0, len(centres), rows)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(workdir: Path, data: str, n: int, dim: int, queries: int, sigma: float, seed: int,
              dtype: str) -> tuple[np.ndarray, np.ndarray]:
    path = workdir / f"{data}-{n}-{dim}-{dtype}" / "vectors.npy"
    rng = np.random.default_rng(seed)
    centres = None
    if data == "clustered":
        centres = rng.standard_normal((max(1, n // POINTS_PER_CENTRE), dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    q = draw(np.random.default_rng(seed + 1), queries, dim, centres, sigma)
    if not path.is_file():
        t = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=dtype, shape=(n, dim))
        for s in range(0, n, CHUNK):
            out[s:s + CHUNK] = draw(rng, min(CHUNK, n - s), dim, centres, sigma)
        out.flush()
        del out
        os.replace(path.with_suffix(".tmp.npy"), path)
        emit(bench="generate", data=data, n=n, dim=dim, dtype=dtype, seconds=round(time.perf_counter() - t, 1))
    return np.load(path, mmap_mode="r"), q


def latencies(index: RetrievalIndex, q: np.ndarray, k: int, singles: int,
              warmup: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """The top-k of the batch ``q`` (one call) and its time per query, then ``singles`` one-query calls;
    ``warmup``: one small search first (a GPU's first call sets up its libraries)."""
    if warmup:
        index.search(q[:2], k)
    t = time.perf_counter()
    _, found = index.search(q, k)
    batch_ms = (time.perf_counter() - t) * 1000 / len(q)
    times = []
    for row in q[:singles]:
        t = time.perf_counter()
        index.search(row, k)
        times.append(time.perf_counter() - t)
    return found, {"batch_ms_per_query": round(batch_ms, 3), "single_ms_median": round(statistics.median(times) * 1000, 3),
                   "single_ms_max": round(max(times) * 1000, 3),
                   "single_ms_p95": round(float(np.percentile(times, 95)) * 1000, 3)}


def parse_spec(text: str, n: int, dim: int, budget: int | None):
    if text == "auto":
        return choose_spec(n, dim, budget)
    kind, storage = text.split(":")
    return make_spec(kind, storage, n, dim)


def bench(args: argparse.Namespace, data: str) -> None:
    budget = int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None
    gallery, q = make_data(Path(args.workdir), data, args.n, args.dim, args.queries, args.sigma, args.seed,
                           args.gallery_dtype)
    with MemoryPeak() as mem:
        exact = RetrievalIndex(gallery)
        truth, lat = latencies(exact, q, args.k, args.exact_singles)
    emit(bench="index", data=data, n=args.n, dim=args.dim, kind="exact", storage=args.gallery_dtype, memmap=True,
         queries=len(q), recall_at_10=1.0, index_bytes=int(gallery.nbytes), **lat, **mem.gb())
    del exact
    for text in args.specs:
        spec = parse_spec(text, args.n, args.dim, budget)
        if spec.kind == "exact":
            emit(bench="index", data=data, n=args.n, spec=text, chosen=spec.kind, note="exact: see the exact row")
            continue
        gc.collect()
        with MemoryPeak() as build_mem:
            index = RetrievalIndex.build(gallery, spec=spec, target_recall=args.target_recall or None, seed=args.seed)
        folder = Path(args.workdir) / f"index-{data}-{args.n}-{spec.kind}-{spec.storage}"
        index.save(folder)
        del index
        gc.collect()
        with MemoryPeak() as search_mem:
            index = RetrievalIndex.load(folder)
            found, lat = latencies(index, q, args.k, args.singles)
        disk = sum(f.stat().st_size for f in folder.iterdir() if f.name != "vectors.npy")
        emit(bench="index", data=data, spec=text, **{k: v for k, v in vars(index.spec).items()},
             faiss_file_bytes=disk, queries=len(q), recall_at_10_queries=round(recall_at_k(found, truth), 4),
             **lat, build={**build_mem.gb()}, search=search_mem.gb(),
             memory_budget_gb=args.memory_budget_gb)
        for value in args.sweep:  # recall/latency curve of the one search parameter
            param = "nprobe" if index.kind == "ivf" else "ef_search"
            if index.kind == "ivf" and value > index.spec.nlist:
                continue
            index.set_search_params(**{param: value})
            found, lat = latencies(index, q, args.k, args.singles)
            emit(bench="sweep", data=data, spec=text, kind=index.kind, storage=index.spec.storage, n=args.n,
                 **{param: value}, recall_at_10_queries=round(recall_at_k(found, truth), 4), **lat)
        del index
        if not args.keep:
            shutil.rmtree(folder)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280, help="efficientnet_lite0's feature width")
    p.add_argument("--data", nargs="+", choices=("random", "clustered"), default=["random", "clustered"])
    p.add_argument("--specs", nargs="+", default=["auto"], help="auto, or kind:storage (ivf:sq8, hnsw:fp16, ...)")
    p.add_argument("--memory-budget-gb", type=float, default=3.0)
    p.add_argument("--target-recall", type=float, default=0.95, help="calibration target (0: no calibration)")
    p.add_argument("--sweep", type=int, nargs="*", default=[], help="nprobe / efSearch values to time after it")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--singles", type=int, default=50, help="single-query timings per approximate index")
    p.add_argument("--exact-singles", type=int, default=3)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--sigma", type=float, default=1.0, help="clustered: noise norm relative to the centre")
    p.add_argument("--gallery-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/frpt-bench-index")
    p.add_argument("--keep", action="store_true", help="keep the saved indexes")
    args = p.parse_args(argv)
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    emit(bench="setup", commit=commit, machine=machine(), threads=args.threads, faiss=faiss.__version__,
         load_average=os.getloadavg(), argv=sys.argv[1:])
    for data in args.data:
        bench(args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
