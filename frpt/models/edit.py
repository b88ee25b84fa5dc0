"""What-if edits of a learned prompt, applied at inference only (nothing is trained or stored).

The prompt (DPP warp, paper Sec. 3.2, or the compact preset's crop) is a function of the frozen backbone's
features; an edit changes what that function returns so a user can ask "would a stronger zoom, or a zoom elsewhere,
retrieve better?" (issue 21). Every field at its default leaves the learned prompt exactly as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_HALF = 0.02  # smallest half-side an edited crop may take (a 25x zoom): below it the crop is a few pixels


@dataclass(frozen=True)
class PromptEdit:
    """One edited prompt.

    ``temperature``: the saliency temperature the model uses (< 1 sharpens the saliency: a stronger, tighter
    zoom; > 1 flattens it towards the identity). ``identity``: no prompt at all (uniform saliency, i.e. the
    identity warp; for the crop, the whole image), the limit of a very high temperature.
    Crop prompt: ``scale`` multiplies the learned box's half-sides, ``shift`` moves its centre (fractions of the
    image side, x right, y down); the box is then kept inside the image.
    Warp prompt: ``focus`` (x, y in [0, 1]) replaces the saliency by a Gaussian bump of standard deviation
    ``focus_width`` (fraction of the side) at that point, which then drives the published sampler.
    """

    temperature: float = 1.0
    identity: bool = False
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    focus: tuple[float, float] | None = None
    focus_width: float = 0.12

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} is not usable; use a positive number")
        if not self.scale > 0:
            raise ValueError(f"box scale {self.scale} is not usable; use a positive number")
        if not self.focus_width > 0:
            raise ValueError(f"focus width {self.focus_width} is not usable; use a positive fraction")

    @property
    def is_learned(self) -> bool:
        """Whether this edit leaves the learned prompt unchanged."""
        return self == PromptEdit()

    def describe(self) -> str:
        """A short name: "learned", "identity", or the fields that differ from the learned prompt."""
        if self.identity:
            return "identity"
        parts = [f"temperature={self.temperature:g}"] if self.temperature != 1.0 else []
        if self.scale != 1.0:
            parts.append(f"scale={self.scale:g}")
        if self.shift != (0.0, 0.0):
            parts.append(f"shift=({self.shift[0]:+.2f},{self.shift[1]:+.2f})")
        if self.focus is not None:
            parts.append(f"focus=({self.focus[0]:.2f},{self.focus[1]:.2f}),width={self.focus_width:g}")
        return ", ".join(parts) or "learned"


def focus_saliency(edit: PromptEdit, batch: int, grid_size: int, device: torch.device) -> torch.Tensor:
    """(N, 1, g, g) saliency of a Gaussian bump at ``edit.focus``, sharpened by the edit's temperature like a
    learned one (A^(1/T)), summing to 1: a hand-placed "look here" for the published sampler."""
    coords = torch.linspace(0, 1, grid_size, device=device)  # the sampler's grid spans [0, 1] (align_corners)
    fx, fy = edit.focus
    logits = -((coords[None, :] - fx) ** 2 + (coords[:, None] - fy) ** 2) / (2 * edit.focus_width ** 2)
    weights = torch.softmax((logits / edit.temperature).flatten(), 0).view(1, 1, grid_size, grid_size)
    return weights.expand(batch, 1, grid_size, grid_size)
