"""A/B comparison of two checkpoints' retrieval on the same test split (no Streamlit: the app's A/B page and any
script use it alike).

Both checkpoints rank the same gallery under leave-one-out cosine retrieval. For one query, the two top-K lists
show which images *entered* B's top K and which *left* A's. Over the whole split, the per-query AP difference
(B minus A, :func:`frpt.metrics.average_precision`) names the queries B helps and hurts most.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .index import RetrievalIndex
from .metrics import average_precision


def split_mismatch(ids_a: Sequence[str], ids_b: Sequence[str]) -> str | None:
    """One sentence saying why two galleries cannot be compared query by query, or None when they hold the same
    ids in the same order (row i is the same image under both checkpoints)."""
    if len(ids_a) != len(ids_b):
        return (f"The two checkpoints were evaluated on different splits ({len(ids_a)} against {len(ids_b)} "
                "images), so they cannot be compared image by image.")
    if list(ids_a) != list(ids_b):
        return ("The two checkpoints were evaluated on different images (or in another order), so they cannot be "
                "compared image by image.")
    return None


@dataclass(frozen=True)
class TopK:
    """One checkpoint's top-K gallery rows for a query, best first, with cosine scores and hits."""

    rows: np.ndarray    # (K,) int
    scores: np.ndarray  # (K,) float
    hits: np.ndarray    # (K,) bool: same class as the query


def top_k(embeddings: np.ndarray, labels: np.ndarray, query: int, k: int) -> TopK:
    """Leave-one-out cosine top-``k`` of gallery row ``query`` among the other rows."""
    scores, rows = RetrievalIndex(embeddings).search(embeddings[query], k, exclude=np.array([query]))
    rows = rows[0].astype(int)
    return TopK(rows, scores[0], np.asarray(labels)[rows] == np.asarray(labels)[query])


@dataclass(frozen=True)
class SideBySide:
    """The same query under checkpoints A and B."""

    query: int
    a: TopK
    b: TopK
    ap_a: float
    ap_b: float

    @property
    def entered(self) -> set[int]:
        """Rows in B's top K that were not in A's."""
        return set(self.b.rows.tolist()) - set(self.a.rows.tolist())

    @property
    def left(self) -> set[int]:
        """Rows in A's top K that are not in B's."""
        return set(self.a.rows.tolist()) - set(self.b.rows.tolist())

    @property
    def ap_delta(self) -> float:
        return self.ap_b - self.ap_a


def side_by_side(emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray, query: int, k: int,
                 ap_a: np.ndarray, ap_b: np.ndarray) -> SideBySide:
    """Top-``k`` of ``query`` under both embeddings of the same gallery, with its per-query AP from ``ap_a/ap_b``
    (precomputed once over the split by :func:`frpt.metrics.average_precision`)."""
    return SideBySide(query, top_k(emb_a, labels, query, k), top_k(emb_b, labels, query, k),
                      float(ap_a[query]), float(ap_b[query]))


def side_by_side_embedded(query_a: np.ndarray, query_b: np.ndarray, emb_a: np.ndarray, emb_b: np.ndarray,
                          labels: np.ndarray, label: int, k: int) -> SideBySide:
    """:func:`side_by_side` for a query that has no row in the gallery (a test image a partial gallery does not
    hold yet), embedded under each checkpoint: ranked against all rows, AP over the full ranking."""
    from .whatif import rank_query

    a, b = (rank_query(q, emb, labels, k, label) for q, emb in ((query_a, emb_a), (query_b, emb_b)))
    return SideBySide(-1, TopK(a.rows.astype(int), a.scores, a.hits), TopK(b.rows.astype(int), b.scores, b.hits),
                      float("nan") if a.average_precision is None else a.average_precision,
                      float("nan") if b.average_precision is None else b.average_precision)


@dataclass(frozen=True)
class SplitComparison:
    """Per-query AP of every test image under A and B."""

    ap_a: np.ndarray  # (N,), NaN where the query's class has no other member
    ap_b: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        return self.ap_b - self.ap_a

    def helps(self, n: int) -> np.ndarray:
        """Up to ``n`` queries whose AP rose most under B (largest gain first; only gains)."""
        d = self.delta
        rows = np.flatnonzero(np.nan_to_num(d, nan=0.0) > 0)
        return rows[np.argsort(-d[rows], kind="stable")][:n]

    def hurts(self, n: int) -> np.ndarray:
        """Up to ``n`` queries whose AP fell most under B (largest loss first; only losses)."""
        d = self.delta
        rows = np.flatnonzero(np.nan_to_num(d, nan=0.0) < 0)
        return rows[np.argsort(d[rows], kind="stable")][:n]

    @property
    def mean_ap(self) -> tuple[float, float]:
        """Mean AP of A and B over the queries that have one."""
        return float(np.nanmean(self.ap_a)), float(np.nanmean(self.ap_b))


def compare_split(emb_a: np.ndarray, emb_b: np.ndarray, labels: np.ndarray) -> SplitComparison:
    """Per-query AP of both embeddings of the same gallery (rows paired; see :func:`split_mismatch`)."""
    if len(emb_a) != len(emb_b) or len(emb_a) != len(labels):
        raise ValueError(f"unpaired galleries: {len(emb_a)} and {len(emb_b)} rows, {len(labels)} labels")
    return SplitComparison(average_precision(emb_a, labels), average_precision(emb_b, labels))


def trained_on(card: dict) -> str | None:
    """The dataset name a checkpoint card was trained on (None when the card does not say)."""
    dataset = card.get("dataset")
    return dataset.get("name") if isinstance(dataset, dict) else None


__all__ = ["split_mismatch", "TopK", "top_k", "SideBySide", "side_by_side", "side_by_side_embedded", "SplitComparison", "compare_split",
           "trained_on"]
