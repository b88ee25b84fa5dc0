"""UMAP maps, Procrustes alignment, silhouette and the on-disk cache beside the gallery."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frpt.evaluation import Embeddings
from frpt.gallery import Gallery
from frpt.projection import (embedding_stats, gallery_umap, pca_reduce, procrustes_align, silhouette, umap_2d,
                             umap_file)


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


def test_pca_reduce_keeps_cosine_neighbours_of_wide_embeddings():
    """UMAP runs on 50 principal components of the L2-normalised rows: cosine nearest neighbours must survive."""
    from frpt.metrics import recall_at_k

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(8, 1280))
    x = np.concatenate([c + 0.8 * rng.normal(size=(30, 1280)) for c in centres]).astype(np.float32)
    x *= rng.uniform(0.5, 20, size=(len(x), 1))  # norms vary: only directions may matter
    y = np.repeat(np.arange(8), 30)
    reduced = pca_reduce(x, 50)
    assert reduced.shape == (240, 50)
    assert recall_at_k(x, y, ks=(1,))["recall@1"] == 1.0
    assert recall_at_k(reduced, y, ks=(1,))["recall@1"] == 1.0
    small = pca_reduce(x[:, :20], 50)  # already narrower than the target: only normalised
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)


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


def _figure_inputs(k: int, n_per: int = 3):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), n_per)
    classes = [f"class{i:03d}" for i in range(k)]
    ids = [f"root/{classes[y]}/img{i}.jpg" for i, y in enumerate(labels)]
    rows = np.arange(len(labels))[::-1].copy()  # map point i is gallery row rows[i]
    return rng.normal(size=(len(rows), 2)), rows, labels, classes, ids


def _rows_of(trace) -> list[int]:
    return [int(c[0]) for c in trace.customdata]


def test_umap_figure_legend_only_for_few_classes_and_hover_names_class_index_and_id():
    from frpt.ui.logic import LEGEND_MAX_CLASSES, umap_figure

    few = umap_figure(*_figure_inputs(5), "few")
    assert len(few.data) == 5 and all(t.showlegend for t in few.data)
    many = umap_figure(*_figure_inputs(LEGEND_MAX_CLASSES + 10), "many")
    assert len(many.data) == LEGEND_MAX_CLASSES + 10 and not any(t.showlegend for t in many.data)
    coords, rows, labels, classes, ids = _figure_inputs(5)
    first = few.data[0]
    row = _rows_of(first)[0]
    assert first.customdata[0][1] == classes[labels[row]] and first.customdata[0][2] == f"img{row}.jpg"
    assert "customdata[1]" in first.hovertemplate and "customdata[4]" in first.hovertemplate
    assert int(first.customdata[0][4]) == row  # without indices the hover shows the row itself
    # after a skipped image, rows and test-image numbers part: hover shows the number, selection keeps the row
    shifted = umap_figure(coords, rows, labels, classes, ids, "shifted", indices=np.arange(len(ids)) + 1).data[0]
    assert int(shifted.customdata[0][0]) == row and int(shifted.customdata[0][4]) == row + 1
    # every point's coordinates follow its gallery row
    point = int(np.flatnonzero(rows == row)[0])
    assert (first.x[0], first.y[0]) == (coords[point, 0], coords[point, 1])


def test_umap_figure_focus_greys_the_rest_and_colours_are_shared_between_maps():
    from frpt.ui.logic import OTHER_GREY, class_colors, umap_figure

    coords, rows, labels, classes, ids = _figure_inputs(30)
    colors = class_colors(classes)
    assert len(set(colors.values())) == 30
    a = umap_figure(coords, rows, labels, classes, ids, "a", colors=colors, focus=["class004", "class017"])
    b = umap_figure(coords[::-1] * 2, rows, labels, classes, ids, "b", colors=colors, focus=["class004", "class017"])
    for fig in (a, b):
        grey, *picked = fig.data
        assert grey.marker.color == OTHER_GREY and len(grey.x) == 28 * 3
        assert {t.name: t.marker.color for t in picked} == {"class004": colors["class004"],
                                                           "class017": colors["class017"]}
        assert all(t.showlegend for t in picked)  # two highlighted classes: a legend again


def test_umap_figure_nearest_neighbour_colouring_and_selection_ring():
    from frpt.ui.logic import NN_COLORS, umap_figure

    coords, rows, labels, classes, ids = _figure_inputs(4)
    hits = np.asarray(rows) % 2 == 0  # per point: even gallery rows hit
    fig = umap_figure(coords, rows, labels, classes, ids, "nn", [3, 5], nn_hits=hits)
    with pytest.raises(ValueError, match="flags"):
        umap_figure(coords, rows, labels, classes, ids, "nn", nn_hits=hits[:-1])
    hit_trace, miss_trace, ring = fig.data
    assert hit_trace.marker.color == NN_COLORS[True] and miss_trace.marker.color == NN_COLORS[False]
    assert sorted(_rows_of(hit_trace)) == list(range(0, len(rows), 2))
    assert sorted(_rows_of(miss_trace)) == list(range(1, len(rows), 2))
    assert all("hit" in c[3] for c in hit_trace.customdata)
    assert ring.name == "selected" and sorted(_rows_of(ring)) == [3, 5]
