"""Exact cosine nearest-neighbour search over a gallery of embeddings.

One float32 matrix product + ``argpartition``. faiss' ``IndexFlatIP`` (exact inner product on L2-normalised
vectors = cosine) is available as ``backend="faiss"``, but bench/bench_speed.py found it slower than this path at
10k, 100k and 1M gallery vectors for a batch of 16 queries (bench/RESULTS.md, "Speed"), so ``auto`` only picks it
from ``FAISS_MIN_SIZE`` up.
"""
from __future__ import annotations

import numpy as np

FAISS_MIN_SIZE = 10_000_000  # bench/RESULTS.md "Speed": faiss never beat the numpy path up to 1M (16 queries)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class RetrievalIndex:
    """``RetrievalIndex(gallery).search(queries, k) -> (scores, indices)``, best first, cosine scores."""

    def __init__(self, embeddings: np.ndarray, backend: str = "auto"):
        self.vectors = l2_normalize(embeddings)
        if backend == "auto":
            backend = "faiss" if len(self.vectors) >= FAISS_MIN_SIZE and _has_faiss() else "numpy"
        self.backend = backend
        self._faiss = None
        if backend == "faiss":
            import faiss
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items per query. ``exclude[i]`` (a gallery index, or -1) is left out of query i's
        results: the query itself when it belongs to the gallery (leave-one-out)."""
        q = l2_normalize(np.atleast_2d(queries))
        extra = 1 if exclude is not None else 0
        kk = min(k + extra, len(self.vectors))
        if self._faiss is not None:
            scores, idx = self._faiss.search(q, kk)
        else:
            sims = q @ self.vectors.T
            idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            part = np.take_along_axis(sims, idx, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            idx, scores = np.take_along_axis(idx, order, 1), np.take_along_axis(part, order, 1)
        if exclude is None:
            return scores[:, :k], idx[:, :k]
        keep = idx != np.asarray(exclude)[:, None]
        rows_s, rows_i = [], []
        for s, i, m in zip(scores, idx, keep):
            rows_s.append(s[m][:k])
            rows_i.append(i[m][:k])
        return np.stack(rows_s), np.stack(rows_i)


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
