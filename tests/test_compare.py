"""A/B comparison (frpt.compare) and per-query AP (frpt.metrics) on small hand-made embeddings with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from frpt.compare import SplitComparison, compare_split, side_by_side, split_mismatch, top_k
from frpt.metrics import average_precision, nearest_neighbour_hits, recall_at_k

LABELS = np.array([0, 0, 1, 1])


def _at(*degrees: float) -> np.ndarray:
    """Unit vectors at these angles: cosine similarity = cos(angle difference), so rankings are read off a circle."""
    t = np.radians(degrees)
    return np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)


# A: 0, 70, 30, 100 degrees. Query 0 ranks [2, 1, 3] (its classmate 1 at rank 2: AP 1/2); query 1 ranks [3, 2, 0]
# (AP 1/3); query 2 ranks [0, 1, 3] (AP 1/3); query 3 ranks [1, 2, 0] (AP 1/2).
A = _at(0, 70, 30, 100)
# B: 0, 20, 90, 5 degrees. Query 0 ranks [3, 1, 2] (AP 1/2), 1: [3, 0, 2] (1/2), 2: [1, 3, 0] (1/2), 3: [0, 1, 2] (1/3).
B = _at(0, 20, 90, 5)


def test_average_precision_matches_the_hand_computed_rankings():
    np.testing.assert_allclose(average_precision(A, LABELS), [1 / 2, 1 / 3, 1 / 3, 1 / 2], atol=1e-6)
    np.testing.assert_allclose(average_precision(B, LABELS), [1 / 2, 1 / 2, 1 / 2, 1 / 3], atol=1e-6)
    # chunking does not change the answer
    np.testing.assert_allclose(average_precision(A, LABELS, chunk=1), average_precision(A, LABELS))


def test_average_precision_full_ranking_with_two_relevant_items_and_a_singleton_class():
    # query 0 at 0 deg; classmates at 10 and 60 deg, the other class at 40 deg: ranks 1 and 3 -> (1/1 + 2/3) / 2
    x = _at(0, 10, 60, 40, 180)
    labels = np.array([0, 0, 0, 1, 2])
    ap = average_precision(x, labels)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(ap[4])  # class 2 has no other member


def test_average_precision_agrees_with_the_retrieval_page():
    from frpt.ui.logic import rank_gallery

    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 5, 40)
    ap = average_precision(x, labels)
    for q in range(40):
        expected = rank_gallery(x[q], x, labels, 5, int(labels[q]), exclude=q).average_precision
        assert ap[q] == pytest.approx(expected if expected is not None else np.nan, nan_ok=True)


def test_nearest_neighbour_hits_average_to_recall_at_1():
    hits = nearest_neighbour_hits(A, LABELS)
    np.testing.assert_array_equal(hits, [False, False, False, False])  # every first neighbour is of the other class
    np.testing.assert_array_equal(nearest_neighbour_hits(B, LABELS), [False, False, False, False])
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(50, 6)), rng.integers(0, 4, 50)
    assert nearest_neighbour_hits(x, labels).mean() == pytest.approx(recall_at_k(x, labels, ks=(1,))["recall@1"])
    # a map's points only: each still searched among all items, itself left out
    rows = np.array([7, 0, 31, 49])
    np.testing.assert_array_equal(nearest_neighbour_hits(x, labels, rows), nearest_neighbour_hits(x, labels)[rows])


def test_top_k_leaves_the_query_out():
    t = top_k(A, LABELS, 0, 3)
    np.testing.assert_array_equal(t.rows, [2, 1, 3])
    np.testing.assert_array_equal(t.hits, [False, True, False])
    np.testing.assert_allclose(t.scores, np.cos(np.radians([30, 70, 100])), atol=1e-6)


def test_entered_and_left_sets_and_ap_delta():
    ap_a, ap_b = average_precision(A, LABELS), average_precision(B, LABELS)
    # query 1: A's top 2 is [3, 2], B's is [3, 0]: 0 entered, 2 left; AP 1/3 -> 1/2
    view = side_by_side(A, B, LABELS, 1, 2, ap_a, ap_b)
    np.testing.assert_array_equal(view.a.rows, [3, 2])
    np.testing.assert_array_equal(view.b.rows, [3, 0])
    assert view.entered == {0} and view.left == {2}
    assert view.ap_delta == pytest.approx(1 / 2 - 1 / 3)
    # the full list (K = N - 1) never changes membership, only order
    full = side_by_side(A, B, LABELS, 1, 3, ap_a, ap_b)
    assert full.entered == set() and full.left == set()


def test_helps_and_hurts_over_the_split():
    split = compare_split(A, B, LABELS)
    np.testing.assert_allclose(split.delta, [0, 1 / 6, 1 / 6, -1 / 6], atol=1e-6)
    assert set(split.helps(5).tolist()) == {1, 2}  # query 0 is unchanged: in neither list
    assert split.hurts(5).tolist() == [3]
    swapped = compare_split(B, A, LABELS)
    assert swapped.helps(5).tolist() == [3] and set(swapped.hurts(5).tolist()) == {1, 2}


def test_helps_and_hurts_ordering_limits_and_nan():
    split = SplitComparison(np.array([0.5, 0.2, 0.9, np.nan, 0.4, 0.1]), np.array([0.9, 0.3, 0.1, 0.8, 0.4, 0.7]))
    assert split.helps(10).tolist() == [5, 0, 1]  # +0.6, +0.4, +0.1; NaN and unchanged left out
    assert split.helps(2).tolist() == [5, 0]
    assert split.hurts(10).tolist() == [2]
    assert split.mean_ap == pytest.approx((np.mean([0.5, 0.2, 0.9, 0.4, 0.1]), np.mean([0.9, 0.3, 0.1, 0.8, 0.4, 0.7])))


def test_split_mismatch_is_one_sentence_or_none():
    ids = ["a", "b", "c"]
    assert split_mismatch(ids, list(ids)) is None
    for other in (["a", "b"], ["a", "c", "b"]):
        msg = split_mismatch(ids, other)
        assert msg and msg.endswith(".") and msg.count(". ") == 0
    with pytest.raises(ValueError):
        compare_split(A, B[:3], LABELS)


def test_a_query_outside_the_gallery_ranks_as_its_own_row_left_out():
    """A test image a partial gallery does not hold yet is embedded and ranked against every row: the same top K
    and AP as the leave-one-out ranking of that image's row once it is in the gallery."""
    from frpt.compare import side_by_side_embedded

    keep = np.array([0, 1, 3])  # the gallery without image 2 (label 1)
    view = side_by_side_embedded(A[2], B[2], A[keep], B[keep], LABELS[keep], 1, 3)
    full = side_by_side(A, B, LABELS, 2, 3, average_precision(A, LABELS), average_precision(B, LABELS))
    np.testing.assert_array_equal(keep[view.a.rows], full.a.rows)
    np.testing.assert_array_equal(keep[view.b.rows], full.b.rows)
    assert view.ap_a == pytest.approx(full.ap_a) and view.ap_b == pytest.approx(full.ap_b)
    np.testing.assert_array_equal(view.b.hits, full.b.hits)
