"""2-D maps of an embedding space: UMAP before and after the head, aligned, stored beside the gallery.

``umap`` is imported lazily (its first import builds a numba cache, about 20 s), and its first fit in a process
JIT-compiles numba kernels (most of the 53-78 s bench/RESULTS.md measured for a first 5,924-point map against
~10 s for the second): :func:`warm_umap` pays that on a tiny set, so a server can do it before anyone asks. ``gallery_umap`` writes
``<gallery>.umap-<n>-s<seed>.npz`` next to the gallery embeddings (``frpt.gallery``), so ``python -m frpt embed``
or the app computes the map once per checkpoint + dataset and every later view reuses it. Two independent UMAPs
differ by an arbitrary rotation/reflection, so the after-head map is aligned to the before-head map with an
orthogonal Procrustes fit (rotation, reflection, uniform scale and shift; distances within the map are kept).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fileio import atomic_write
from .gallery import Gallery

UMAP_VERSION = 2  # bump when the parameters below change, so stale maps are recomputed (2: PCA to 50 dims first)
DEFAULT_MAP_POINTS = 2000  # the Embedding space page opens on this subsample; `frpt embed` precomputes it
# `frpt embed` also maps the whole split up to this size; a million-image gallery would take hours on 2 cores.
FULL_MAP_MAX_POINTS = 50_000
PCA_DIMS = 50  # standard practice before UMAP (e.g. scanpy): keeps the neighbour graph, cuts its cost ~25x at 1280-d


def pca_reduce(x: np.ndarray, dims: int = PCA_DIMS, seed: int = 0) -> np.ndarray:
    """L2-normalise the rows (retrieval compares embeddings by cosine, and on unit vectors Euclidean distance is a
    monotone function of cosine), then project onto the top ``dims`` principal components (randomised SVD)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(dims, x.shape[0], x.shape[1])
    if k >= x.shape[1]:
        return x
    return PCA(n_components=k, svd_solver="randomized", random_state=seed).fit_transform(x).astype(np.float32)


def umap_2d(x: np.ndarray, seed: int = 0, *, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int | None = None, pca_dims: int | None = PCA_DIMS) -> np.ndarray:
    """UMAP (McInnes et al. 2018) of ``x`` (N, D) to (N, 2) float32; a fixed ``seed`` makes it reproducible
    (and single-threaded, umap-learn's rule). The rows are L2-normalised and reduced by :func:`pca_reduce`
    (``pca_dims=None`` keeps all dimensions); UMAP then runs Euclidean on them, i.e. cosine on the embeddings."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {n}")
    x = pca_reduce(x, pca_dims or x.shape[1], seed)
    import umap  # lazy: heavy import

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), min_dist=min_dist, metric="euclidean",
                            n_epochs=n_epochs, random_state=seed, init="spectral" if n > n_neighbors + 1 else "random")
        return reducer.fit_transform(x).astype(np.float32)


def warm_umap(large: bool = True) -> None:
    """Fit a tiny UMAP once so numba compiles its kernels now, not on a user's first map (see module docstring).
    Above 4,096 points umap-learn switches to pynndescent, whose kernels compile separately (24 s more on 2 cores):
    ``large`` warms that path too."""
    rng = np.random.default_rng(0)
    for n in (64, 4200) if large else (64,):
        umap_2d(rng.standard_normal((n, 8)).astype(np.float32), n_epochs=10, pca_dims=None)


def procrustes_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotate/reflect, scale and shift ``source`` (N, 2) onto ``target`` (N, 2), point i onto point i.

    Orthogonal Procrustes (Schönemann 1966) via ``scipy.linalg.orthogonal_procrustes`` on centred, unit-norm
    copies; the result lives in ``target``'s frame and scale and is an isometry of ``source`` up to scale.
    """
    from scipy.linalg import orthogonal_procrustes

    src, tgt = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_t = src.mean(0), tgt.mean(0)
    a, b = src - mu_s, tgt - mu_t
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return np.broadcast_to(mu_t, src.shape).astype(np.float32)
    rot, scale = orthogonal_procrustes(a / na, b / nb)
    return ((a / na) @ rot * scale * nb + mu_t).astype(np.float32)


def silhouette(x: np.ndarray, labels: np.ndarray, metric: str = "cosine", max_points: int = 5000,
               seed: int = 0) -> float:
    """Mean silhouette coefficient (sklearn) of the classes in ``x``; NaN when it is undefined
    (fewer than 2 classes, or every point its own class). Large sets are subsampled to ``max_points``."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if k < 2 or k >= len(labels):
        return float("nan")
    return float(silhouette_score(np.asarray(x, np.float32), labels, metric=metric,
                                  sample_size=min(max_points, len(labels)), random_state=seed))


def embedding_stats(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """R@1 (leave-one-out cosine), NMI (k-means) and cosine silhouette of one embedding set."""
    from .metrics import nmi, recall_at_k

    return {"recall@1": recall_at_k(x, labels, ks=(1,))["recall@1"], "nmi": nmi(x, labels),
            "silhouette": silhouette(x, labels)}


@dataclass
class GalleryMap:
    """UMAP coordinates of (a subsample of) a gallery: rows ``indices`` of the gallery, before and after the head
    (the latter aligned to the former)."""

    indices: np.ndarray  # (n,) int, rows of the gallery
    before: np.ndarray   # (n, 2)
    after: np.ndarray    # (n, 2)
    path: Path


def subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a reproducible random subsample of ``range(n)`` (all of it when it fits)."""
    if max_points is None or max_points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def umap_file(gallery: Gallery, max_points: int | None = None, seed: int = 0) -> Path:
    n = len(gallery.ids) if max_points is None else min(max_points, len(gallery.ids))
    return gallery.path.with_name(f"{gallery.path.stem}.umap-v{UMAP_VERSION}-{n}-s{seed}.npz")


def load_gallery_map(path: Path, n_gallery: int) -> GalleryMap | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            found = GalleryMap(data["indices"], data["before"], data["after"], path)
    except (OSError, KeyError, ValueError):
        return None  # damaged cache: recompute
    if len(found.indices) and int(found.indices.max()) >= n_gallery:
        return None
    return found


def gallery_umap(gallery: Gallery, *, max_points: int | None = None, seed: int = 0, recompute: bool = False,
                 progress: Callable[[float, str], None] | None = None,
                 fit: Callable[[np.ndarray, int], np.ndarray] | None = None) -> GalleryMap:
    """Load or compute (and store atomically) the UMAP of ``gallery`` before and after the head. A partial gallery's
    map (:func:`frpt.gallery.partial_gallery`, still being embedded) is computed and returned, never stored: it is
    not the checkpoint's. ``fit(x, seed)``: :func:`umap_2d` unless given (the app fits in a worker process,
    :func:`frpt.workers.umap_2d`)."""
    fit = fit or umap_2d
    path = umap_file(gallery, max_points, seed)
    cached = None if recompute or not gallery.complete else load_gallery_map(path, len(gallery.ids))
    if cached is not None:
        return cached
    report = progress or (lambda fraction, text: None)
    idx = subsample(len(gallery.ids), max_points, seed)
    report(0.05, f"UMAP of {len(idx)} embeddings before the head")
    before = fit(gallery.embeddings.before[idx], seed)
    report(0.5, f"UMAP of {len(idx)} embeddings after the head")
    after = procrustes_align(fit(gallery.embeddings.after[idx], seed), before)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, indices=idx, before=before, after=after)

    if gallery.complete:
        atomic_write(path, write)
    report(1.0, "done")
    return GalleryMap(idx, before, after, path)


__all__ = ["DEFAULT_MAP_POINTS", "FULL_MAP_MAX_POINTS", "pca_reduce", "warm_umap", "umap_2d", "procrustes_align", "silhouette", "embedding_stats", "GalleryMap", "gallery_umap",
           "subsample", "umap_file", "load_gallery_map"]
