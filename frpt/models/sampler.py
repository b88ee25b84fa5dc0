"""Saliency-driven inhomogeneous resampling (the DPP warp, paper Eqs. 3-6).

This is the sampler of Recasens et al., "Learning to Zoom" (ECCV 2018), as the released FRPT code uses it
(``saliency_sampler.py``: grid 31, padding 30, Gaussian FWHM 13). Each output location reads the input at the
saliency- and Gaussian-weighted mean of the grid coordinates, so salient regions get more samples (magnified)
while the Gaussian keeps all samples from collapsing onto one point. Two deliberate departures from the code:
the Gaussian is a fixed buffer (the paper's fixed D; the code leaves it an optimiser-visible parameter), and
the 31x31 grid is upsampled with ``align_corners=True`` so that uniform saliency is exactly the identity warp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SaliencySampler(nn.Module):
    """Turn a saliency map (N, 1, g, g) that sums to 1 into a sampling grid and a warped image."""

    def __init__(self, grid_size: int = 31, padding: int = 30, fwhm: float = 13.0):
        super().__init__()
        self.grid_size = grid_size
        self.padding = padding
        k = 2 * padding + 1
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        r = torch.arange(k, dtype=torch.float32) - padding
        g1 = torch.exp(-(r**2) / (2 * sigma**2))
        self.register_buffer("gaussian", torch.outer(g1, g1)[None, None], persistent=False)
        # The k x k Gaussian is separable, so the released code's "valid" conv2d equals band @ S @ band.T with
        # band[i, i:i+k] = g1: two small matrix products instead of a 61x61 convolution (about 30x cheaper).
        n = grid_size + 2 * padding
        band = torch.zeros(grid_size, n)
        for i in range(grid_size):
            band[i, i:i + k] = g1
        self.register_buffer("band", band, persistent=False)
        # Coordinates of the padded grid: real cells span [0, 1], padded cells extend linearly beyond, which
        # keeps the mapping unbiased at the borders (the symmetric extension of the released code).
        lin = (torch.arange(n, dtype=torch.float32) - padding) / (grid_size - 1)
        self.register_buffer("coords_x", lin.view(1, 1, 1, n).expand(1, 1, n, n).clone(), persistent=False)
        self.register_buffer("coords_y", lin.view(1, 1, n, 1).expand(1, 1, n, n).clone(), persistent=False)

    def coarse_grid(self, saliency: torch.Tensor) -> torch.Tensor:
        """Eqs. 4-5: source coordinates in [-1, 1] for each of the g x g grid cells, shape (N, g, g, 2), (x, y).

        Always fp32, also under autocast: for a peaked saliency the Gaussian-weighted mass far from the peak is
        ~1e-13, which fp16 flushes to 0, and x / weight becomes 0 / 0 (NaN; seen training the paper preset on a
        GPU with fp16 autocast)."""
        with torch.autocast(saliency.device.type, enabled=False):
            s = F.pad(saliency.float(), [self.padding] * 4, mode="replicate")
            weight = self._smooth(s)
            x = self._smooth(s * self.coords_x) / weight
            y = self._smooth(s * self.coords_y) / weight
        grid = torch.cat([x, y], dim=1).mul(2).sub(1).clamp(-1, 1)
        return grid.permute(0, 2, 3, 1)

    def _smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """"Valid" correlation of (N, 1, n, n) maps with the Gaussian, as separable matrix products."""
        return self.band @ maps @ self.band.T

    def grid(self, saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Full-resolution sampling grid (N, H, W, 2) for ``F.grid_sample(..., align_corners=True)``."""
        coarse = self.coarse_grid(saliency).permute(0, 3, 1, 2)
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)

    def forward(self, image: torch.Tensor, saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp ``image`` (N, C, H, W) by ``saliency``; returns (warped image, sampling grid)."""
        grid = self.grid(saliency, image.shape[-2:])
        warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
        return warped, grid


def sampling_density(grid: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """How many samples of the warp land in each cell of the *input* image, relative to the identity warp.

    1 everywhere for the identity; > 1 where the DPP magnifies, < 1 where it compresses. ``grid`` is
    (N, H, W, 2) in [-1, 1]; the result is (N, bins, bins), rows = y.
    """
    n = grid.shape[0]
    cells = ((grid.detach().float() + 1) / 2 * bins).floor().clamp(0, bins - 1).long()
    flat = cells[..., 1] * bins + cells[..., 0]
    counts = torch.zeros(n, bins * bins, device=grid.device)
    counts.scatter_add_(1, flat.view(n, -1), torch.ones_like(flat.view(n, -1), dtype=torch.float32))
    uniform = grid.shape[1] * grid.shape[2] / (bins * bins)
    return (counts / uniform).view(n, bins, bins)


def identity_grid(size: int, align_corners: bool = True) -> torch.Tensor:
    """The sampling grid (1, S, S, 2) that changes nothing, in the prompt's convention: the warp DPP's grid spans
    [-1, 1] corner to corner (``align_corners=True``), the crop prompt's ``affine_grid`` reads pixel centres
    (``False``). Its focus score is the box's share of the image."""
    lin = torch.linspace(-1, 1, size) if align_corners else (torch.arange(size) * 2 + 1) / size - 1
    return torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1)[None]


def focus_score(grid: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Share of the warped image's samples read from inside ``box`` = (x0, y0, x1, y1) in [-1, 1] coordinates.

    The identity warp scores the box's area share; a DPP that magnifies the box scores more. Returns (N,).
    """
    x0, y0, x1, y1 = box
    gx, gy = grid[..., 0], grid[..., 1]
    inside = (gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)
    return inside.flatten(1).float().mean(1)
