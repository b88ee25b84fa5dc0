"""Recall@K / MAP@R on hand-checkable sets, the loss and the learning-rate schedules."""
import math

import numpy as np
import pytest
import torch

from frpt.config import train_config
from frpt.index import RetrievalIndex
from frpt.losses import cross_entropy
from frpt.metrics import map_at_r, neighbours, recall_at_k, retrieval_metrics
from frpt.training import lr_at

# Six points on the unit circle at these angles (degrees); cosine ranking = angular distance.
ANGLES = np.array([0, 10, 100, 115, 200, 45])
LABELS = np.array([0, 0, 1, 1, 2, 1])


def _points() -> np.ndarray:
    rad = np.deg2rad(ANGLES)
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def test_neighbours_exclude_the_query_itself():
    _, idx = neighbours(_points(), 2)
    assert idx[:, 0].tolist() == [1, 0, 3, 2, 3, 1]  # item 4 (200 deg): nearest is 115 deg (85) not 0 (160)
    assert all(i not in row for i, row in enumerate(idx.tolist()))


def test_recall_at_k_counts_queries_with_a_same_class_item_in_the_top_k():
    r = recall_at_k(_points(), LABELS, ks=(1, 2, 4))
    # top-1 hits: 0->1 yes, 1->0 yes, 2->3 yes, 3->2 yes, 4->3 no, 5 (45) -> 10 deg(1) no
    assert r["recall@1"] == pytest.approx(4 / 6)
    # top-2: item 4's 2nd is 2 (100 deg): no; item 5's top-2 = {1 (35), 0 (45)} vs 100 (55): no
    assert r["recall@2"] == pytest.approx(4 / 6)
    # top-4: item 4 has no same-class item at all -> never a hit; item 5 reaches 100 deg at rank 3
    assert r["recall@4"] == pytest.approx(5 / 6)


def test_map_at_r_matches_a_hand_computation():
    # R = same-class others: items 0,1: R=1; items 2,3,5: R=2; item 4: R=0 (skipped).
    # 0: [1] -> 1; 1: [0] -> 1; 2 (100): [3 (15), 5 (55)] -> 1; 3 (115): [2 (15), 5 (70)] -> (1 + 2/2)/2 = 1;
    # 5 (45): [1 (35), 0 (45)] -> 0.
    assert map_at_r(_points(), LABELS) == pytest.approx((1 + 1 + 1 + 1 + 0) / 5)


def test_retrieval_metrics_reports_every_query():
    m = retrieval_metrics(_points(), LABELS, ks=(1, 2))
    assert m["queries"] == 6 and 0 <= m["nmi"] <= 1 and set(m) >= {"recall@1", "recall@2", "map@r"}


def test_recall_agrees_with_the_index_search():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    _, idx = RetrievalIndex(emb).search(emb, 4, exclude=np.arange(300))
    manual = np.mean([(labels[row] == labels[i]).any() for i, row in enumerate(idx)])
    assert recall_at_k(emb, labels, ks=(4,))["recall@4"] == pytest.approx(manual)


def test_label_smoothing_follows_fast_reid():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(0.7 * logp[0] + 0.15 * logp[1] + 0.15 * logp[2])  # eps/(C-1) on each non-target class
    assert cross_entropy(logits, torch.tensor([0]), 0.3).item() == pytest.approx(expected.item(), rel=1e-6)
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(-logp[0].item(), rel=1e-6)


def test_learning_rate_schedules():
    paper = train_config("paper")
    assert lr_at(paper, 0, 0, 10) == pytest.approx(1e-3)
    assert lr_at(paper, 49, 0, 10) == pytest.approx(1e-3)
    assert lr_at(paper, 50, 0, 10) == pytest.approx(0.9e-3)  # x0.9 every 50 epochs
    official = train_config("official")
    assert lr_at(official, 0, 0, 22) == pytest.approx(0.002)  # warm-up starts at 0.1 x 0.02
    assert lr_at(official, 22, 500, 22) == pytest.approx(0.02 * (0.1 * 0.5 + 0.5))
    warm_epochs = math.ceil(1000 / 22)
    assert lr_at(official, warm_epochs, 1000, 22) == pytest.approx(0.02)
    assert lr_at(official, 499, 499 * 22, 22) < 0.0001
