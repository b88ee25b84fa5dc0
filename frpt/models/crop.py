"""The compact preset's prompt: a rigid, object-tight zoom predicted from the frozen backbone's own saliency.

The paper's DPP (:mod:`.prompt`) resamples the image inhomogeneously, which bends the object; a frozen backbone
pays for that (../shared/research/cpu-recipe-notes.md: a saliency that knows where the bird is gains +0.7 R@1
through the warp and +2.6 through a rigid crop). This prompt keeps the DPP's two steps, content parsing and
sampling, and changes the sampler: the saliency's first and second moments give a box (mean +- k std per axis,
plus a margin, each half-width clamped), and ``F.affine_grid`` + ``F.grid_sample`` zoom into it. Every step is
differentiable in the saliency, so the prompt can be trained end to end from class labels like the DPP.

:meth:`CropPrompt.zoom_box` is a departure from the paper (issue 30): a second, tighter square on the saliency's
peak, the compact preset's "zoom" views beside the object crop. The paper's warp magnifies several parts at once,
a rigid crop one; issue 30's probe of this zoom (half-side 0.3 on CUB at 288 px) scored R@1 69.04 / MAP@R 25.09
against 68.86 / 24.49 for the four views (bench/RESULTS.md, issue 30).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .edit import MIN_HALF, PromptEdit
from .prompt import PromptOutput

PEAK_TEMPERATURE = 0.25  # the zoom's centre: the saliency's mean at this temperature, a soft argmax (issue 30)


class CropPrompt(nn.Module):
    """Saliency ``A = relu(w . M) / sum`` over the frozen final map M, then a rigid zoom on A's box.

    ``w`` starts at 1 / C, so an untrained prompt crops on the channel-summed activation energy of the frozen
    backbone (SCDA's localisation cue, Wei et al. 2017); training reweights the channels. Box rule (per axis, in
    image fractions): centre = mean of A, half-width = clamp(std_scale * std * (1 + margin), min_half, max_half),
    centre clamped so the box stays inside the image. ``max_half`` = 0.5 is the whole image.
    """

    def __init__(self, in_channels: int, std_scale: float = 2.0, margin: float = 0.1, min_half: float = 0.2,
                 max_half: float = 0.5):
        super().__init__()
        if not 0 < min_half <= max_half <= 0.5:
            raise ValueError("crop half-widths need 0 < min_half <= max_half <= 0.5")
        self.std_scale, self.margin, self.min_half, self.max_half = std_scale, margin, min_half, max_half
        self.conv = nn.Conv2d(in_channels, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / in_channels)

    def saliency(self, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A, (N, 1, h, w), sums to 1. ``temperature`` < 1 sharpens it (A^(1/T)), which tightens the box."""
        energy = F.relu(self.conv(features.float())) + 1e-6
        if temperature != 1.0:
            energy = energy ** (1.0 / temperature)
        return energy / energy.sum(dim=(2, 3), keepdim=True)

    @staticmethod
    def _moments(saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the saliency along x and along y, in image fractions: (mx, my, sx, sy)."""
        p = saliency[:, 0]
        h, w = p.shape[-2:]
        xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5) / w
        ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5) / h
        px, py = p.sum(1), p.sum(2)
        mx, my = (px * xs).sum(1), (py * ys).sum(1)
        sx = (px * (xs - mx[:, None]) ** 2).sum(1).clamp(min=1e-12).sqrt()
        sy = (py * (ys - my[:, None]) ** 2).sum(1).clamp(min=1e-12).sqrt()
        return mx, my, sx, sy

    def centre(self, saliency: torch.Tensor) -> torch.Tensor:
        """(N, 2): the saliency's mean (x, y) in image fractions, before the box is kept inside the image (so its
        gradient never vanishes, unlike the clamped box centre of a whole-image crop)."""
        mx, my, _, _ = self._moments(saliency)
        return torch.stack([mx, my], dim=1)

    def box(self, saliency: torch.Tensor, edit: PromptEdit | None = None) -> torch.Tensor:
        """(N, 4): centre x, centre y, half-width, half-height, in fractions of the image side. ``edit`` (a what-if)
        scales the half-sides and moves the centre before the box is kept inside the image; its identity is the
        whole image."""
        if edit is not None and edit.identity:
            return saliency.new_full((saliency.shape[0], 4), 0.5)
        mx, my, sx, sy = self._moments(saliency)
        half_x = (self.std_scale * sx * (1 + self.margin)).clamp(self.min_half, self.max_half)
        half_y = (self.std_scale * sy * (1 + self.margin)).clamp(self.min_half, self.max_half)
        if edit is not None and edit.scale != 1.0:  # past the learned clamps: the what-if may zoom further
            half_x, half_y = (half_x * edit.scale).clamp(MIN_HALF, 0.5), (half_y * edit.scale).clamp(MIN_HALF, 0.5)
        if edit is not None and edit.shift != (0.0, 0.0):
            mx, my = mx + edit.shift[0], my + edit.shift[1]
        # torch.clamp with tensor bounds keeps the gradient to the centre while the box is inside the image.
        cx = torch.minimum(torch.maximum(mx, half_x), 1 - half_x)
        cy = torch.minimum(torch.maximum(my, half_y), 1 - half_y)
        return torch.stack([cx, cy, half_x, half_y], dim=1)

    def zoom_box(self, saliency: torch.Tensor, half: float) -> torch.Tensor:
        """(N, 4): the part zoom's square of half-side ``half`` (image fractions) centred on the saliency's soft peak
        (its mean once sharpened to :data:`PEAK_TEMPERATURE`; a global maximum would jump between cells), kept
        inside the image. Where the object box follows the whole bird, this follows its most salient part."""
        sharp = saliency.float() ** (1.0 / PEAK_TEMPERATURE)
        mx, my, _, _ = self._moments(sharp / sharp.sum(dim=(2, 3), keepdim=True))
        half_t = torch.full_like(mx, half)
        return torch.stack([mx.clamp(half, 1 - half), my.clamp(half, 1 - half), half_t, half_t], dim=1)

    @staticmethod
    def grid(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Sampling grid (N, H, W, 2) in [-1, 1] that maps the output onto ``box`` (``align_corners=False``)."""
        cx, cy, half_x, half_y = box.unbind(1)
        theta = torch.zeros(box.shape[0], 2, 3, device=box.device, dtype=box.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = 2 * half_x, 2 * cx - 1
        theta[:, 1, 1], theta[:, 1, 2] = 2 * half_y, 2 * cy - 1
        return F.affine_grid(theta, [box.shape[0], 1, *size], align_corners=False)

    @classmethod
    def sample(cls, image: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(zoomed image, grid): ``image`` resampled onto ``box`` at its own size, in fp32 (see :meth:`forward`)."""
        with torch.autocast(image.device.type, enabled=False):
            grid = cls.grid(box.float(), image.shape[-2:])
            zoomed = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return zoomed, grid

    def forward(self, image: torch.Tensor, features: torch.Tensor, temperature: float = 1.0,
                edit: PromptEdit | None = None) -> PromptOutput:
        """``edit`` (a what-if, :class:`PromptEdit`) brings its own temperature in place of ``temperature``.

        Always fp32, also under autocast (as the warp DPP's grid, :meth:`SaliencySampler.coarse_grid`): a bf16
        sampling grid keeps 8 mantissa bits, so in [-1, 1] its points snap to steps of up to 1/128, about a pixel
        at 288 px, and the crop is resampled on a jittered grid (its frozen maps had a mean cosine of 0.93 with the
        fp32 crop's on CUB). The feature cache (bf16 autocast) and a compiled engine's queries (prompt in fp32)
        then embedded different crops of the same image."""
        with torch.autocast(image.device.type, enabled=False):
            saliency = self.saliency(features.float(), edit.temperature if edit is not None else temperature)
            warped, grid = self.sample(image, self.box(saliency, edit))
        return PromptOutput(warped=warped, saliency=saliency, grid=grid)
