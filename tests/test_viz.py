"""Overlays and drawings: real pixels, real geometry."""
from __future__ import annotations

import numpy as np
import torch

from frpt import viz
from frpt.models import SaliencySampler, focus_score


def test_to_uint8_accepts_tensor_pil_and_float_array():
    t = torch.zeros(3, 8, 10)
    t[0] = 1.0
    arr = viz.to_uint8(t)
    assert arr.shape == (8, 10, 3) and arr.dtype == np.uint8
    assert (arr[..., 0] == 255).all() and (arr[..., 1:] == 0).all()
    from PIL import Image
    assert (viz.to_uint8(Image.fromarray(arr)) == arr).all()
    assert viz.to_uint8(np.full((4, 4), 0.5)).shape == (4, 4, 3)


def test_heatmap_overlay_is_hot_where_the_map_is_high():
    image = np.full((32, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = viz.heatmap_overlay(image, heat, alpha=0.8)
    assert out.shape == image.shape
    # top-left is bright yellow-ish (high), bottom-right stays close to the grey photo
    assert out[1, 1].astype(int).sum() > out[30, 30].astype(int).sum() + 100
    assert np.abs(out[30, 30].astype(int) - 128).max() < 90


def test_identity_grid_draws_a_regular_lattice():
    n = 33
    ident = torch.stack(torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="xy"), -1)
    out = viz.draw_grid(np.zeros((n, n, 3), np.uint8), ident, lines=5, color=(255, 0, 0))
    red = out[..., 0] == 255
    rows = np.flatnonzero(red.all(axis=1))
    assert list(rows) == [0, 8, 16, 24, 32]  # five straight, evenly spaced rows


def test_draw_box_outline_and_box_to_unit_match_focus_score():
    out = viz.draw_box(np.zeros((20, 20, 3), np.uint8), (5, 5, 10, 10), color=(0, 255, 0), width=1)
    assert out[5, 5, 1] == 255 and out[14, 14, 1] == 255 and out[10, 10, 1] == 0
    unit = viz.box_to_unit((0, 0, 32, 16), (32, 32))  # top half of the image
    n = 32
    ident = torch.stack(torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="xy"), -1)
    assert abs(float(focus_score(ident[None], unit)[0]) - 0.5) < 1e-6


def test_magnification_colours_red_where_the_warp_magnifies():
    sal = torch.zeros(1, 1, 31, 31)
    sal[..., 10:14, 10:14] = 1.0
    sal = sal + 1e-3
    sal = sal / sal.sum()
    from frpt.models import sampling_density
    grid = SaliencySampler().grid(sal, (64, 64))
    d = sampling_density(grid, 16)[0]
    rgb = viz.magnification_image(d, size=64)
    hot = np.unravel_index(int(d.argmax()), d.shape)
    cell = rgb[hot[0] * 4 + 2, hot[1] * 4 + 2].astype(int)
    assert cell[0] > cell[2] + 50  # red
    uniform = viz.magnification_image(np.ones((4, 4)))
    assert (np.abs(uniform.astype(int) - 247) <= 1).all()  # white = unchanged


def test_image_grid_and_frame_and_png():
    tiles = [np.full((8, 8, 3), v, np.uint8) for v in (0, 100, 200)]
    g = viz.image_grid(tiles, cols=2, pad=2)
    assert g.shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2, 3)
    assert (g[2:10, 12:20] == 100).all()
    f = viz.frame(tiles[2], viz.HIT, width=2)
    assert tuple(f[0, 0]) == viz.HIT and tuple(f[4, 4]) == (200, 200, 200)
    assert viz.png_bytes(f)[:8] == b"\x89PNG\r\n\x1a\n"
