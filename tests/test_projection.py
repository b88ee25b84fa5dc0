"""UMAP maps, Procrustes alignment, silhouette and the on-disk cache beside the gallery."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frpt.evaluation import Embeddings
from frpt.gallery import Gallery
from frpt.projection import embedding_stats, gallery_umap, procrustes_align, silhouette, umap_2d, umap_file


def _clusters(n_per: int = 40, k: int = 4, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_procrustes_recovers_rotation_reflection_scale_and_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 2))
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([1, -1])
    b = 3.0 * a @ rot + np.array([5.0, -2.0])
    np.testing.assert_allclose(procrustes_align(b, a), a, atol=1e-5)
    np.testing.assert_allclose(procrustes_align(a, b), b, atol=1e-4)


def test_silhouette_separates_good_and_random_labels():
    x, y = _clusters()
    assert silhouette(x, y, metric="euclidean") > 0.5
    assert abs(silhouette(x, np.random.default_rng(0).permutation(y), metric="euclidean")) < 0.1
    assert np.isnan(silhouette(x, np.zeros(len(y), int)))


@pytest.mark.slow
def test_umap_keeps_clusters_apart_and_is_reproducible():
    x, y = _clusters()
    a = umap_2d(x, seed=3, n_epochs=50)
    assert a.shape == (len(x), 2) and a.dtype == np.float32
    assert silhouette(a, y, metric="euclidean") > 0.5
    np.testing.assert_allclose(umap_2d(x, seed=3, n_epochs=50), a, atol=1e-4)


@pytest.mark.slow
def test_gallery_umap_is_stored_beside_the_gallery_and_reused(tmp_path: Path):
    x, y = _clusters(n_per=30)
    path = tmp_path / "gallery" / "synthetic-test-abc.npz"
    path.parent.mkdir()
    g = Gallery(Embeddings(x, x[:, ::-1].copy(), y), [f"id{i}" for i in range(len(y))], list("abcd"), path)
    m = gallery_umap(g, max_points=100, seed=0)
    assert m.path == umap_file(g, 100, 0) and m.path.parent == path.parent and m.path.is_file()
    assert len(m.indices) == 100 and (np.diff(m.indices) > 0).all()
    assert m.before.shape == m.after.shape == (100, 2)
    mtime = m.path.stat().st_mtime_ns
    again = gallery_umap(g, max_points=100, seed=0)
    assert again.path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.after, m.after)
    stats = embedding_stats(x, y)
    assert stats["recall@1"] > 0.95 and stats["nmi"] > 0.9 and stats["silhouette"] > 0.3
