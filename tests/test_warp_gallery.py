"""The warp gallery's library (frpt.warp_gallery): records, sorting, zoom, sampling, and the pictures."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from frpt import viz
from frpt import warp_gallery as wg
from frpt.checkpoint import load_checkpoint
from frpt.data import build_dataset, build_transform
from frpt.demo import INPUT_SIZE as S
from frpt.demo import available_demos
from frpt.models.crop import CropPrompt
from frpt.ui.logic import prompt_panels

DEMOS = available_demos()
pytestmark = pytest.mark.skipif(not {"frpt", "pt"} <= set(DEMOS), reason="demo checkpoints missing")


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMOS["frpt"])[0]


@pytest.fixture(scope="module")
def test_set():
    return build_dataset("synthetic", "test", transform=build_transform(S, train=False))


@pytest.fixture(scope="module")
def records(demo, test_set):
    return wg.warp_records(demo, test_set, wg.pick_indices(test_set, 12, seed=3))


def test_records_of_the_demo_checkpoint(records, test_set):
    indices = wg.pick_indices(test_set, 12, seed=3)
    assert [r.index for r in records] == indices
    for r in records:
        assert r.label == test_set.samples[r.index][1] and r.class_name == test_set.classes[r.label]
        assert r.original.shape == r.warped.shape == (S, S, 3) and r.original.dtype == np.uint8
        assert r.grid.shape == (S, S, 2) and np.abs(r.grid).max() <= 1.0
        assert r.box is not None and r.box[2] > 0  # every synthetic image has its marker's box
        assert 0.0 <= r.focus <= 1.0 and 0.0 < r.area_share < 0.1
        assert r.peak_zoom == pytest.approx(r.mean_zoom, rel=1e-3) and r.mean_zoom >= 1.0 - 1e-3  # a rigid crop
    zoomed = [r for r in records if r.mean_zoom > 1.5]
    # the demo's learned crop zooms in on most images, and then reads more of the marker than the whole image does
    assert len(zoomed) >= len(records) // 2 and max(r.peak_zoom for r in records) > 3.0
    assert np.mean([r.focus / r.area_share for r in zoomed]) > 2.0
    for r in zoomed:
        assert np.abs(r.warped.astype(int) - r.original.astype(int)).mean() > 5


def test_focus_is_the_prompt_explorers_focus_score(demo, test_set, records):
    r = records[0]
    image = test_set[r.index][0]
    assert prompt_panels(demo, image, r.box).focus == pytest.approx(r.focus, abs=1e-3)
    assert prompt_panels(demo, image, r.box).area_share == pytest.approx(r.area_share, abs=1e-6)


def test_one_batched_pass_for_the_page(demo, test_set, records):
    calls: list[int] = []
    net = copy.deepcopy(demo)
    original = net.run_prompt
    net.run_prompt = lambda images, *a: calls.append(len(images)) or original(images, *a)
    indices = [r.index for r in records]
    again = wg.warp_records(net, test_set, indices)
    assert calls == [12]
    calls.clear()
    chunked = wg.warp_records(net, test_set, indices, batch_size=5)
    assert calls == [5, 5, 2]
    for a, b, c in zip(records, again, chunked):
        assert a.focus == pytest.approx(c.focus, abs=1e-4) and b.peak_zoom == pytest.approx(c.peak_zoom, rel=1e-3)


def test_sorting_by_focus_orders_by_focus(records):
    ordered = wg.sort_records(records, "focus score")
    focus = [r.focus for r in ordered]
    assert focus == sorted(focus, reverse=True)
    assert sorted(r.index for r in ordered) == sorted(r.index for r in records)
    assert [r.index for r in ordered] != [r.index for r in records]  # the sample was not already in focus order
    no_box = replace(records[0], box=None, focus=None, area_share=None)
    assert wg.sort_records([no_box, *records[1:]], "focus score")[-1] is no_box


def test_sorting_by_zoom_and_class(records):
    for key, attr in (("peak zoom", "peak_zoom"), ("mean zoom", "mean_zoom")):
        values = [getattr(r, attr) for r in wg.sort_records(records, key)]
        assert values == sorted(values, reverse=True)
    by_class = wg.sort_records(records, "class")
    assert [(r.class_name, r.index) for r in by_class] == sorted((r.class_name, r.index) for r in records)
    with pytest.raises(ValueError):
        wg.sort_records(records, "colour")


def test_untrained_prompt_is_the_identity(demo, test_set):
    net = copy.deepcopy(demo)
    torch.nn.init.zeros_(net.prompt.conv.weight)  # uniform saliency: a whole-image crop
    records = wg.warp_records(net, test_set, range(6))
    for r in records:
        assert r.peak_zoom == pytest.approx(1.0, abs=1e-3) and r.mean_zoom == pytest.approx(1.0, abs=1e-3)
        assert r.focus == pytest.approx(r.area_share, abs=1e-6)
        assert np.abs(r.warped.astype(int) - r.original.astype(int)).max() <= 1


def test_local_zoom_of_a_crop():
    box = torch.tensor([[0.4, 0.6, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]])  # half the side, and the whole image
    zoom = wg.local_zoom(CropPrompt.grid(box, (64, 64)), align_corners=False)
    assert zoom[0].min() == pytest.approx(4.0, rel=1e-4) and zoom[0].max() == pytest.approx(4.0, rel=1e-4)
    assert zoom[1].max() == pytest.approx(1.0, rel=1e-4)


def test_crop_prompt_records_one_zoom_and_its_rectangle(demo, test_set):
    net = copy.deepcopy(demo)
    net.prompt = CropPrompt(net.backbone.num_features, max_half=0.3)
    (r,) = wg.warp_records(net, test_set, [5])
    assert r.peak_zoom == pytest.approx(r.mean_zoom, rel=1e-3) and r.peak_zoom >= 1 / (4 * 0.3 * 0.3) - 1e-3
    assert "peak" not in wg.caption(r)  # a rigid crop has one zoom
    yellow = np.all(wg.grid_view(r) == (255, 255, 0), axis=-1)
    rows, cols = np.flatnonzero(yellow.any(1)), np.flatnonzero(yellow.any(0))
    area = (rows[-1] - rows[0]) * (cols[-1] - cols[0]) / (S - 1) ** 2  # the drawn crop rectangle, as a share
    assert area == pytest.approx(1 / r.peak_zoom, rel=0.05)


def test_checkpoint_without_prompt(test_set):
    pt = load_checkpoint(DEMOS["pt"])[0]
    assert pt.prompt is None
    records = wg.warp_records(pt, test_set, [0, 1, 2])
    for r in records:
        assert r.warped is None and r.grid is None and r.focus is None and r.peak_zoom is None
        assert r.box is not None and r.original.shape == (S, S, 3)
        assert wg.pair_image(r).shape == (S + 4, S + 4, 3)  # the original alone
        assert "focus" not in wg.caption(r) and "zoom" not in wg.caption(r)
    assert [r.index for r in wg.sort_records(records, "focus score")] == [0, 1, 2]
    assert wg.gallery_image(records).shape[1] == 3 * S + 4 * 4


def test_pick_indices(test_set):
    a = wg.pick_indices(test_set, 16, seed=1)
    assert a == wg.pick_indices(test_set, 16, seed=1) != wg.pick_indices(test_set, 16, seed=2)
    assert len(set(a)) == 16 and all(0 <= i < len(test_set) for i in a)
    assert len(wg.pick_indices(test_set, 10**4)) == len(test_set)
    two = test_set.classes[3:5]
    k0, k1 = 3, 4
    rows = wg.pick_indices(test_set, 9, classes=two)
    labels = [test_set.samples[i][1] for i in rows]
    assert labels == [k0, k1] * 4 + [k0]  # the classes in turn
    first = [i for i, (_, y) in enumerate(test_set.samples) if y == k0][:5]
    assert [i for i, y in zip(rows, labels) if y == k0] == first  # each class's first images
    assert wg.pick_indices(test_set, 8, classes=["no such class"]) == []


def test_gallery_picture(records):
    picture = wg.gallery_image(records[:8], pairs_per_row=4)
    assert picture.shape == (2 * S + 3 * 4, 8 * S + 9 * 4, 3)
    pair = wg.pair_image(records[0])
    assert pair.shape == (S + 4, 2 * S + 6, 3)
    assert np.array_equal(pair[2:S + 2, S + 4:2 * S + 4], records[0].warped)  # right half: the warped image as it is
    drawn = pair[2:S + 2, 2:S + 2]
    assert np.all(drawn == viz.BOX, axis=-1).any() and np.all(drawn == (255, 255, 0), axis=-1).sum() > 300


def test_label_writes_only_the_bottom_band():
    image = np.full((64, 64, 3), 200, np.uint8)
    out = viz.label(image, "#12 focus 40%")
    assert np.array_equal(out[:50], image[:50]) and not np.array_equal(out[50:], image[50:])
    assert np.array_equal(viz.label(image, ""), image)
