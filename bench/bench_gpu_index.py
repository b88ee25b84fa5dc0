"""Exact search on a GPU at 1M and 10M random unit vectors: build (upload) time, memory, latency, recall@10.

Issue 10's goal at 1M (top-10 in at most 10 ms per query, recall@10 >= 0.95, at most 3 GB) is measured on random
unit vectors, where no approximate index on 2 CPU cores reached recall 0.95 without scanning everything
(bench/RESULTS.md, "Approximate index"). ``RetrievalIndex.build(gallery, budget, device="cuda")`` picks exact
search in device memory (``choose_spec``: fp32 if it fits the budget, else fp16 with float32 re-scoring).

The gallery is drawn on the GPU in blocks with a seeded generator (width 1280, float32, unit norm) and copied into
host memory (a float32 array, as ``frpt embed`` stores embeddings); the ground truth is computed from those same
float32 blocks on the GPU, in float32 with TF32 off, by this script's own brute force, not by the library. The
budget is ``--budget-gb-per-million`` times the gallery's millions (3 GB at 1M, 30 GB at 10M). Queries are
fresh draws. One JSON line per figure; GPU memory is ``torch.cuda.max_memory_allocated`` (what the index and its
search allocate; the CUDA context is not in it), the allocator's reserved peak, and the card's used memory
after the search (context and cache included); host memory the process' anonymous RSS.

  python bench/bench_gpu_index.py --n 1000000 10000000 --out "$OUT"
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_index import latencies  # noqa: E402
from frpt.index import RetrievalIndex, recall_at_k  # noqa: E402

BLOCK = 1 << 18


def emit(out: Path | None, **kw) -> None:
    line = json.dumps(kw)
    print(line, flush=True)
    if out is not None:
        with open(out / "gpu_index.jsonl", "a") as f:
            f.write(line + "\n")


def rss_anon_gb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) * 1024 / 2**30, 2)
    return float("nan")


def device_used_gb() -> float:
    """Device memory in use on the whole card (this process: its CUDA context and allocator cache included)."""
    free, total = torch.cuda.mem_get_info()
    return round((total - free) / 2**30, 3)


def unit(gen: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    x = torch.randn((rows, dim), generator=gen, device="cuda")
    return torch.nn.functional.normalize(x, dim=1)


def gallery_and_truth(n: int, dim: int, queries: torch.Tensor, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The host gallery and the exact float32 top-``k`` of each query over it (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(seed)
    host = np.empty((n, dim), np.float32)
    best_s = torch.empty((len(queries), 0), device="cuda")
    best_i = torch.empty((len(queries), 0), dtype=torch.int64, device="cuda")
    for s in range(0, n, BLOCK):
        block = unit(gen, min(BLOCK, n - s), dim)
        top_s, top_i = (queries @ block.T).topk(min(k, len(block)), dim=1)
        best_s, pick = torch.cat([best_s, top_s], 1).topk(min(k, best_s.shape[1] + top_s.shape[1]), 1)
        best_i = torch.cat([best_i, top_i + s], 1).gather(1, pick)
        host[s:s + len(block)] = block.cpu().numpy()
    return host, best_i.cpu().numpy()


def bench(args: argparse.Namespace, n: int, out: Path | None) -> None:
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    q_dev = unit(gen, args.queries, args.dim)
    t = time.perf_counter()
    gallery, truth = gallery_and_truth(n, args.dim, q_dev, args.k, args.seed)
    q = q_dev.cpu().numpy()
    del q_dev
    emit(out, bench="generate", n=n, dim=args.dim, seconds=round(time.perf_counter() - t, 1),
         host_rss_anon_gb=rss_anon_gb())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    budget = int(args.budget_gb_per_million * n / 1e6 * 2**30)
    index = RetrievalIndex.build(gallery, budget, device="cuda")
    build_peak = torch.cuda.max_memory_allocated()
    found, lat = latencies(index, q, args.k, args.singles, warmup=True)
    emit(out, bench="gpu_exact", n=n, dim=args.dim, kind=index.spec.kind, storage=index.spec.storage,
         device=torch.cuda.get_device_name(), memory_budget_gb=round(budget / 2**30, 2),
         build_seconds=index.spec.build_seconds, index_bytes=index.spec.index_bytes,
         gpu_peak_build_gb=round(build_peak / 2**30, 3),
         gpu_peak_search_gb=round(torch.cuda.max_memory_allocated() / 2**30, 3),
         gpu_peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 2**30, 3),
         gpu_used_after_search_gb=device_used_gb(), alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
         host_rss_anon_gb=rss_anon_gb(), queries=len(q), recall_at_10=round(recall_at_k(found, truth), 4), **lat)
    del index
    torch.cuda.empty_cache()
    if n <= args.host_exact_max_n:  # the same gallery searched by the host path, all CPU cores
        host = RetrievalIndex(gallery)
        found, lat = latencies(host, q[:args.host_queries], args.k, args.host_singles, warmup=True)
        emit(out, bench="host_exact", n=n, threads=torch.get_num_threads(), cpus=os.cpu_count(),
             queries=args.host_queries, recall_at_10=round(recall_at_k(found, truth[:args.host_queries]), 4), **lat)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=1280, help="efficientnet_lite0's feature width")
    p.add_argument("--budget-gb-per-million", type=float, default=3.0, help="issue 10: 3 GB at 1M")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--singles", type=int, default=100)
    p.add_argument("--host-exact-max-n", type=int, default=1_000_000)
    p.add_argument("--host-queries", type=int, default=200)
    p.add_argument("--host-singles", type=int, default=10)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for gpu_index.jsonl")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_index.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    out = Path(args.out) if args.out else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    emit(out, bench="setup", commit=commit, torch=torch.__version__, gpu=torch.cuda.get_device_name(),
         cpus=os.cpu_count(), argv=sys.argv[1:])
    for n in args.n:
        bench(args, n, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
