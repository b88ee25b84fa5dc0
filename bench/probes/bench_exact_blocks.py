"""What one block of exact search costs on this CPU: the choices inside ``RetrievalIndex._exact`` (issue 10).

For a block of ``--rows`` gallery rows of width ``--dim`` and a batch of ``--queries``:
  product   ``queries @ block.T`` on an aligned block and on one that starts 3 bytes off (a gallery member that
            np.savez left at an odd offset): numpy skips BLAS on unaligned data;
  copy      copying the unaligned block into an aligned buffer (what a batched search of such a gallery does);
  select    the top-k of the scores by ``np.argpartition`` and by ``torch.topk``.
Median seconds of ``--repeats`` runs; one JSON line.

    python bench/probes/bench_exact_blocks.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import frpt.index as ix  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=ix.GALLERY_BLOCK)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=ix.QUERY_BLOCK)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    nbytes = args.rows * args.dim * 4
    raw = np.empty(nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64
    aligned = np.ndarray((args.rows, args.dim), np.float32, buffer=raw, offset=start)
    aligned[:] = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    raw_off = np.empty(nbytes + 128, np.uint8)
    unaligned = np.ndarray((args.rows, args.dim), np.float32, buffer=raw_off, offset=(-raw_off.ctypes.data % 64) + 3)
    unaligned[:] = aligned
    scores = q @ aligned.T
    out = {"bench": "exact_blocks", "rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k,
           "torch_threads": torch.get_num_threads(), "unaligned_flag": bool(unaligned.flags.aligned),
           "product_aligned_s": median_seconds(lambda: q @ aligned.T, args.repeats),
           "product_unaligned_s": median_seconds(lambda: q @ unaligned.T, args.repeats),
           "copy_unaligned_s": median_seconds(lambda: np.array(unaligned), args.repeats),
           "argpartition_s": median_seconds(lambda: np.argpartition(-scores, args.k - 1, axis=1), args.repeats),
           "torch_topk_s": median_seconds(lambda: torch.from_numpy(scores).topk(args.k, dim=1, sorted=False),
                                          args.repeats)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
