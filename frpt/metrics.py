"""Retrieval metrics on the zero-shot protocol: every test image queries all other test images (cosine).

Recall@K follows the fine-grained retrieval literature (Song et al. 2016; FRPT Sec. 4.1): the share of queries
with at least one same-class image among their K nearest neighbours. This is *not* IR recall, nor
pytorch-metric-learning's ``precision_at_k``. MAP@R is from Musgrave et al., "A Metric Learning Reality Check".
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():  # a mapped gallery is read-only; nothing here writes to it, and a copy could be GBs
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(x))


def neighbours(embeddings: torch.Tensor | np.ndarray, k: int, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out cosine kNN of a set against itself: (scores, indices), each (N, k), self excluded."""
    emb = F.normalize(_as_tensor(embeddings).float(), dim=1)
    n = emb.shape[0]
    k = min(k, n - 1)
    scores, indices = [], []
    for start in range(0, n, chunk):
        sim = emb[start:start + chunk] @ emb.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = float("-inf")
        s, i = sim.topk(k, dim=1)
        scores.append(s)
        indices.append(i)
    return torch.cat(scores), torch.cat(indices)


def recall_at_k(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor,
                ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """``{"recall@1": ..., ...}`` in [0, 1] under leave-one-out cosine retrieval."""
    labels_t = _as_tensor(np.asarray(labels)).long()
    _, idx = neighbours(embeddings, max(ks))
    hits = labels_t[idx] == labels_t[:, None]
    return {f"recall@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def map_at_r(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor) -> float:
    """MAP@R: for each query with R other same-class items, the mean of precision@i over the hits among the
    first R neighbours, divided by R. Queries whose class has no other member are skipped."""
    labels_t = _as_tensor(np.asarray(labels)).long()
    counts = torch.bincount(labels_t)
    r = counts[labels_t] - 1
    _, idx = neighbours(embeddings, int(r.max().item()))
    hits = (labels_t[idx] == labels_t[:, None]).float()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32)
    within_r = ranks[None, :] <= r[:, None]
    hits = hits * within_r
    precision = hits.cumsum(1) / ranks
    valid = r > 0
    ap = (precision * hits).sum(1)[valid] / r[valid]
    return ap.mean().item()


def nmi(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray, seed: int = 0) -> float:
    """Normalised mutual information between the labels and k-means (k = number of classes) on the
    L2-normalised embeddings."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    emb = F.normalize(_as_tensor(embeddings).float(), dim=1).numpy()
    labels_np = np.asarray(labels)
    k = len(np.unique(labels_np))
    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(emb)
    return float(normalized_mutual_info_score(labels_np, clusters))


def ranking_metrics(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                    ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """recall@K, map@r and the number of queries: the ranking figures, without NMI's k-means (on CUB's test split
    ~2 s against ~14 s with it on 2 cores, so a page can show them)."""
    out = recall_at_k(embeddings, labels, ks)
    out["map@r"] = map_at_r(embeddings, labels)
    out["queries"] = int(len(labels))
    return out


def retrieval_metrics(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                      ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """The evaluation summary ``frpt evaluate`` prints: recall@K, map@r, nmi and the number of queries."""
    out = ranking_metrics(embeddings, labels, ks)
    out["nmi"] = nmi(embeddings, labels)
    out["queries"] = out.pop("queries")  # last, as cards have always listed it
    return out


def average_precision(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                      chunk: int = 1024) -> np.ndarray:
    """Per-query AP under leave-one-out cosine retrieval over the *full* ranking (the Retrieval page's AP):
    the mean of precision@i at the rank of every other same-class item. Ties keep gallery order. NaN for a
    query whose class has no other member. Per-query values, so two embeddings can be compared query by query."""
    emb = F.normalize(torch.as_tensor(np.array(embeddings, np.float32)), dim=1)  # a copy: galleries are read-only
    labels_np = np.asarray(labels)
    n = emb.shape[0]
    out = np.full(n, np.nan)
    ranks = np.arange(1, n, dtype=np.float64)
    for start in range(0, n, chunk):
        sim = (emb[start:start + chunk] @ emb.T).numpy()
        rows = np.arange(sim.shape[0])
        sim[rows, rows + start] = -np.inf  # the query itself ranks last and is dropped
        order = np.argsort(-sim, axis=1, kind="stable")[:, :n - 1]
        relevant = labels_np[order] == labels_np[start:start + sim.shape[0], None]
        count = relevant.sum(1)
        precision = np.cumsum(relevant, 1) / ranks
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + sim.shape[0]] = np.where(count > 0, (precision * relevant).sum(1) / count, np.nan)
    return out


def nearest_neighbour_hits(embeddings: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                           rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Whether the leave-one-out cosine nearest neighbour of each of ``rows`` (default: every item) has its class;
    over every item their mean is R@1. Each row is searched against all items, a gallery block at a time
    (:class:`frpt.index.RetrievalIndex`), so a map's 2,000 points cost 2,000 queries, not the n x n of the split,
    and a memory-mapped gallery is never copied."""
    from .index import RetrievalIndex

    labels_np = np.asarray(labels)
    rows_np = np.arange(len(labels_np)) if rows is None else np.asarray(rows, dtype=np.int64)
    vectors = embeddings.numpy() if isinstance(embeddings, torch.Tensor) else embeddings
    _, idx = RetrievalIndex(vectors).search(np.asarray(vectors[rows_np], np.float32), 1, exclude=rows_np)
    return labels_np[idx[:, 0]] == labels_np[rows_np]
