"""DPP: the discriminative perturbation prompt (paper Sec. 3.2).

Content parsing (Eqs. 1-2) turns frozen backbone features of the original image into a spatial softmax
("discriminative projection map" A); content-aware inhomogeneous sampling (Eqs. 3-6, :mod:`.sampler`) warps
the image with it so discriminative parts are magnified before the same frozen backbone sees the image again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .edit import PromptEdit, focus_saliency
from .sampler import SaliencySampler


@dataclass
class PromptOutput:
    warped: torch.Tensor    # (N, 3, H, W) the perturbed image I_P, same value range as the input
    saliency: torch.Tensor  # (N, 1, g, g) A, sums to 1 over space
    grid: torch.Tensor      # (N, H, W, 2) where each output pixel reads the input, in [-1, 1]


class LargeKernelConv2d(nn.Conv2d):
    """A "same"-padded, stride-1 ``nn.Conv2d`` (same parameters, same result) computed with FFTs when the kernel is
    large. The paper's 31x31 saliency kernel over C_S channels costs ~20x more as a direct convolution on a CPU,
    where it dominated the whole training step (bench/RESULTS.md); FFT correlation is exact up to float rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if k <= 7:
            return super().forward(x)
        p = k // 2
        h, w = x.shape[-2:]
        padded = F.pad(x.float(), [p] * 4)
        size = padded.shape[-2:]
        spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(self.weight.float(), s=size).conj()
        out = torch.fft.irfft2(spectrum.sum(1, keepdim=True), s=size)[..., :h, :w]
        return out + self.bias.view(1, -1, 1, 1) if self.bias is not None else out


class DiscriminativePerturbationPrompt(nn.Module):
    """Saliency head + sampler.

    paper preset: one ``kernel x kernel`` conv (sigma = 31, Eq. 1) on stride-4 features, no bias (a bias is
    meaningless before a softmax). official preset: ReLU then a 1x1 conv with bias on stride-16 features.
    Either way the logits are resized to the sampler's ``grid_size`` and softmaxed over the grid (Eq. 2).
    ``saliency_bound`` B > 0 (ours, off in both presets) squashes the logits to (-B, B) first: the largest cell
    of the 961 then holds at most exp(2B) / (exp(2B) + 960) of the mass (5.4 % for B = 2), so the warp stays a
    smooth magnification however large the conv's weights grow.
    """

    def __init__(self, in_channels: int, kernel_size: int = 31, relu: bool = False, bias: bool = False,
                 grid_size: int = 31, grid_padding: int = 30, gaussian_fwhm: float = 13.0,
                 saliency_bound: float = 0.0):
        super().__init__()
        self.relu = relu
        self.saliency_bound = saliency_bound
        self.conv = LargeKernelConv2d(in_channels, 1, kernel_size, padding=kernel_size // 2, bias=bias)
        # Zero init: uniform saliency, i.e. the identity warp, so an untrained prompt leaves the frozen baseline
        # (PT) untouched and training grows the warp from there. With PyTorch's default init the 31x31xC_S kernel
        # sums ~23k terms and its softmax starts already peaked (max cell ~0.3-0.5 of the mass).
        nn.init.zeros_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.sampler = SaliencySampler(grid_size, grid_padding, gaussian_fwhm)
        self.grid_size = grid_size

    def saliency(self, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A (Eq. 2): softmax over the g x g grid. ``temperature`` < 1 sharpens it (a stronger zoom)."""
        x = F.relu(features) if self.relu else features
        logits = self.conv(x)
        if logits.shape[-1] != self.grid_size or logits.shape[-2] != self.grid_size:
            logits = F.interpolate(logits, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=True)
        logits = logits.float()
        if self.saliency_bound > 0:
            logits = self.saliency_bound * torch.tanh(logits / self.saliency_bound)
        n = logits.shape[0]
        return F.softmax(logits.view(n, -1) / temperature, dim=1).view(n, 1, self.grid_size, self.grid_size)

    def forward(self, image: torch.Tensor, features: torch.Tensor, temperature: float = 1.0,
                edit: PromptEdit | None = None) -> PromptOutput:
        """``edit`` (a what-if, :class:`PromptEdit`) brings its own temperature; its identity is uniform saliency
        (exactly the identity warp), its focus point a Gaussian saliency there, through the same sampler."""
        n = image.shape[0]
        if edit is not None and edit.identity:
            saliency = image.new_full((n, 1, self.grid_size, self.grid_size), 1.0 / self.grid_size ** 2).float()
        elif edit is not None and edit.focus is not None:
            saliency = focus_saliency(edit, n, self.grid_size, image.device)
        else:
            saliency = self.saliency(features, edit.temperature if edit is not None else temperature)
        warped, grid = self.sampler(image, saliency)
        return PromptOutput(warped=warped, saliency=saliency, grid=grid)
