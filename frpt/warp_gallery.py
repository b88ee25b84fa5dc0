"""The warp gallery (paper Fig. 3): many test images beside what the prompt makes of them.

Fig. 3 shows originals above their DPP-warped versions with grid lines drawn by hand, so that the enlarged parts are
visible; one image (the prompt explorer) cannot tell whether the prompt zooms on the right part *as a rule*. Here a
sample of the test split goes through the prompt in one batch, and each image gets the numbers to sort the sample
by: the focus score (share of the warped pixels read from inside the ground-truth box, as in the prompt explorer)
and the local magnification of the warp. Works without Streamlit; the app's page only draws the records.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import viz
from .data import transform_box
from .data.base import Box, RetrievalDataset
from .engine import inference, plan
from .models import FRPT, focus_score, identity_grid
from .models.crop import CropPrompt

SORT_KEYS = ("focus score", "peak zoom", "mean zoom", "class")


@dataclass
class WarpRecord:
    """One test image and its prompt output. Numbers are None where they do not exist (no box, no prompt)."""

    index: int                    # row of the test split
    label: int
    class_name: str
    original: np.ndarray          # (S, S, 3) uint8: the test-transform view the model reads
    warped: np.ndarray | None     # (S, S, 3) uint8: what the backbone sees after the prompt
    grid: np.ndarray | None       # (S, S, 2) float32 in [-1, 1]: where each warped pixel reads the original
    box: Box | None               # ground-truth (x, y, w, h) in ``original`` pixels
    focus: float | None           # share of the warped pixels read from inside the box
    area_share: float | None      # the same for the identity warp: the box's share of the image
    peak_zoom: float | None       # largest local area magnification of the warp (1 = unchanged)
    mean_zoom: float | None       # geometric mean of the local area magnification over the warped pixels


def local_zoom(grid: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Local area magnification 1 / |det J| of a sampling grid (N, H, W, 2), per output pixel: (N, H-1, W-1).

    J is the Jacobian of the map output -> input in the same units on both sides, so the identity is exactly 1, a
    crop to half the side is 4, and a DPP warp is > 1 where it enlarges. This is the continuous limit of
    :func:`frpt.models.sampling_density`, without its binning error (which reads 1.5 for the identity at 128 px).
    ``align_corners`` is the grid's convention (False for the crop prompt's ``affine_grid``).
    """
    g = grid.detach().float()
    h, w = g.shape[1:3]
    su, sv = ((w - 1) / 2, (h - 1) / 2) if align_corners else (w / 2, h / 2)
    du = (g[:, :-1, 1:] - g[:, :-1, :-1]) * su
    dv = (g[:, 1:, :-1] - g[:, :-1, :-1]) * sv
    det = du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0]
    return 1.0 / det.abs().clamp(min=1e-4)


def pick_indices(dataset: RetrievalDataset, n: int, seed: int = 0, classes: Sequence[str] | None = None) -> list[int]:
    """Which test images to show: a seeded random sample of ``n`` (the same for a seed on every run), or with
    ``classes`` the first images of each of those classes in turn (round-robin), up to ``n`` in all."""
    if not classes:
        rng = np.random.default_rng(seed)
        return [int(i) for i in rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)]
    wanted = [dataset.classes.index(c) for c in classes if c in dataset.classes]
    rows = {k: [i for i, (_, y) in enumerate(dataset.samples) if y == k] for k in wanted}
    out: list[int] = []
    for depth in range(max((len(r) for r in rows.values()), default=0)):
        out += [r[depth] for r in rows.values() if depth < len(r)]
    return out[:n]


def _load(dataset: RetrievalDataset, index: int) -> tuple[torch.Tensor, int, Box | None]:
    """The test-transform image, its label and its box in the transformed pixels (the picture is read once)."""
    if dataset.transform is None:
        raise ValueError("warp_records needs a dataset with its test transform")
    picture = dataset.load_image(index)
    image = dataset.transform(picture)
    box = dataset.box(index)
    if box is not None:
        box = transform_box(box, picture.size, image.shape[-1])
        box = box if box[2] > 0 and box[3] > 0 else None  # the box fell outside the centre crop
    return image, dataset.samples[index][1], box


@torch.no_grad()
def warp_records(model: FRPT, dataset: RetrievalDataset, indices: Sequence[int],
                 batch_size: int = 64) -> list[WarpRecord]:
    """Run the prompt (``model.run_prompt``) on test images ``indices``, ``batch_size`` at a time (one batched
    backbone pass for a page of up to 64 images), and measure each warp. A model without a prompt (PT, PT+CAH)
    gives records with only the original, its label and box."""
    loaded = [_load(dataset, i) for i in indices]
    records: list[WarpRecord] = []
    crop = isinstance(model.prompt, CropPrompt)
    device = model.pixel_mean.device
    plan_ = plan(None, "auto", device, model)  # the prompt reads the frozen backbone: its pass runs on the engine
    with inference(model, plan_, device):
        _warp_chunks(model, dataset, indices, loaded, batch_size, crop, device, records)
    return records


def _warp_chunks(model: FRPT, dataset: RetrievalDataset, indices: Sequence[int], loaded: list, batch_size: int,
                 crop: bool, device: torch.device, records: list[WarpRecord]) -> None:
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start:start + batch_size]
        images = torch.stack([image for image, _, _ in chunk])
        prompt = model.run_prompt(images.to(device)) if model.prompt is not None else None
        zoom = local_zoom(prompt.grid, align_corners=not crop).flatten(1) if prompt is not None else None
        size = images.shape[-1]
        for k, (image, label, box) in enumerate(chunk):
            record = WarpRecord(int(indices[start + k]), int(label), dataset.classes[label], viz.to_uint8(image),
                                None, None, box, None, None, None, None)
            if prompt is not None:
                grid = prompt.grid[k:k + 1].float().cpu()
                record.warped = viz.to_uint8(prompt.warped[k])
                record.grid = grid[0].numpy()
                record.peak_zoom = float(zoom[k].max())
                record.mean_zoom = float(zoom[k].log().mean().exp())
                if box is not None:
                    unit = viz.box_to_unit(box, (size, size))
                    record.focus = float(focus_score(grid, unit)[0])
                    record.area_share = float(focus_score(identity_grid(size, not crop), unit)[0])
            records.append(record)


def sort_records(records: Sequence[WarpRecord], key: str) -> list[WarpRecord]:
    """Order for the gallery: focus score or zoom from high to low (images without one last), or by class name
    then test index. Ties keep the given order."""
    if key == "class":
        return sorted(records, key=lambda r: (r.class_name, r.index))
    attr = {"focus score": "focus", "peak zoom": "peak_zoom", "mean zoom": "mean_zoom"}.get(key)
    if attr is None:
        raise ValueError(f"unknown sort key {key!r}; use one of {', '.join(SORT_KEYS)}")
    return sorted(records, key=lambda r: (getattr(r, attr) is None, -(getattr(r, attr) or 0.0)))


def grid_view(record: WarpRecord, lines: int = 10) -> np.ndarray:
    """The original with the ground-truth box and the deformed sampling grid drawn on it (Fig. 3's hand-drawn
    lines, here where the warped image's pixel lattice really reads the original; a crop shows as its rectangle)."""
    picture = viz.draw_box(record.original, record.box) if record.box is not None else record.original
    return viz.draw_grid(picture, record.grid, lines=lines) if record.grid is not None else picture


def caption(record: WarpRecord) -> str:
    """One line per image: test index, class, focus against the box's own share, and the zoom."""
    parts = [f"#{record.index} {record.class_name}"]
    if record.focus is not None:
        parts.append(f"focus {record.focus:.0%} (box {record.area_share:.0%})")
    if record.peak_zoom is not None and record.peak_zoom - record.mean_zoom < 0.05:  # a rigid crop: one zoom
        parts.append(f"zoom ×{record.peak_zoom:.1f}")
    elif record.peak_zoom is not None:
        parts.append(f"zoom ×{record.peak_zoom:.1f} peak, ×{record.mean_zoom:.1f} mean")
    return " · ".join(parts)


def pair_image(record: WarpRecord, lines: int = 10) -> np.ndarray:
    """Original with grid and box | warped image, side by side."""
    tiles = [grid_view(record, lines)] + ([record.warped] if record.warped is not None else [])
    return viz.image_grid(tiles, cols=2, pad=2)


def gallery_image(records: Sequence[WarpRecord], pairs_per_row: int = 4, lines: int = 10) -> np.ndarray:
    """The whole gallery as one picture (the PNG download): pairs row by row, each labelled with its numbers."""
    tiles: list[np.ndarray] = []
    for r in records:
        focus = f"focus {r.focus:.0%}" if r.focus is not None else ""
        zoom = f"x{r.peak_zoom:.1f}" if r.peak_zoom is not None else ""
        tiles.append(viz.label(grid_view(r, lines), f"#{r.index} {focus}".strip()))
        if r.warped is not None:
            tiles.append(viz.label(r.warped, f"zoom {zoom}"))
    per_record = 2 if records and records[0].warped is not None else 1
    return viz.image_grid(tiles, cols=pairs_per_row * per_record)


__all__ = ["SORT_KEYS", "WarpRecord", "local_zoom", "pick_indices", "warp_records", "sort_records", "grid_view",
           "caption", "pair_image", "gallery_image"]
