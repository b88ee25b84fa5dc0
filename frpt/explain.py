"""Attributions with captum: what in the image drives an FRPT embedding, a class score or a similarity.

The attribution input is always the *original* image in [0, 1]; for models with the DPP the gradients flow
through the warp (``grid_sample``) back to the original pixels. Grad-CAM is taken on the backbone's last stage
(``conv_head`` for EfficientNets, else the last feature stage), which sees the *warped* image: its map is in
warped coordinates, and :func:`to_input_space` carries it back to the original through the sampling grid.

Targets (``target=``): ``None`` is the embedding's L2 norm (for a GAP head Grad-CAM of the norm is the classic
class-activation map of the embedding, and it works for every variant, the untrained ``pt`` too); an ``int``
is that training-class logit; a tensor (D,) is the cosine similarity to that reference embedding (captum
issue #1254: wrap the model to return one scalar per example).

Captum hooks the shared model temporarily, so calls are serialised by a lock (Streamlit runs sessions in
threads and caches one model for all of them).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import FRPT
from .models.crop import CropPrompt

_LOCK = threading.RLock()
Target = int | torch.Tensor | None


def gradcam_layer(model: FRPT) -> nn.Module:
    """The backbone's last stage: ``conv_head`` for EfficientNets, else the last ``feature_info`` module."""
    net = model.backbone.model
    if hasattr(net, "conv_head"):
        return net.conv_head
    return net.get_submodule(net.feature_info[-1]["module"])


def _head(model: FRPT, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    refined = model.cah(feature_map) if model.cah is not None else feature_map
    return model.head(refined)


def score_function(model: FRPT, target: Target = None, *, warped_input: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(images) -> (N,)``: the scalar the attributions explain (see module doc for ``target``).

    ``warped_input=True`` skips the DPP: the input is taken as the image the backbone sees (used to explain
    the warped image in its own coordinates). A model that averages several views (the compact preset) is
    explained through its prompt's view alone: the crop, read from the original pixels through ``grid_sample``
    with the crop box held fixed, so the last stage runs once per call and its Grad-CAM has one set of
    coordinates.
    """
    if isinstance(target, torch.Tensor):
        ref = F.normalize(target.detach().float().reshape(1, -1).clone(), dim=1)

    def f(x: torch.Tensor) -> torch.Tensor:
        if not warped_input and isinstance(model.prompt, CropPrompt):
            with torch.no_grad():
                grid = model.run_prompt(x.detach()).grid
            crop = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
            embedding, logits = _head(model, model.backbone(model.normalize(crop)))
        elif warped_input or model.prompt is None:
            embedding, logits = _head(model, model.backbone(model.normalize(x)))
        else:
            out = model(x)
            embedding, logits = out.embedding, out.logits
        if target is None:
            return embedding.norm(dim=1)
        if isinstance(target, torch.Tensor):
            return (F.normalize(embedding, dim=1) * ref.to(embedding.dtype)).sum(1)
        if logits is None:
            raise ValueError("this model has no classifier; pass target=None or a reference embedding")
        return logits[:, int(target)]

    return f


def _gradcam(f: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(f, layer).attribute(images, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0].detach().clamp_min(0)


def gradcam(model: FRPT, images: torch.Tensor, target: Target = None, *, warped_input: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of the last stage, (N, H, W) >= 0, upsampled to the input size.

    The map is in the coordinates of the image the backbone saw: the warped image for DPP models (map it
    onto the original with :func:`to_input_space`), the input itself otherwise.
    """
    with _LOCK, torch.enable_grad():
        return _gradcam(score_function(model, target, warped_input=warped_input), gradcam_layer(model), images)


def integrated_gradients(model: FRPT, images: torch.Tensor, target: Target = None, *, n_steps: int = 16,
                         warped_input: bool = False, internal_batch_size: int = 8) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al. 2017) from a black baseline, |attribution| summed over
    channels, (N, H, W) on the input pixels (the original image: gradients pass through the DPP warp)."""
    from captum.attr import IntegratedGradients

    with _LOCK, torch.enable_grad():
        f = score_function(model, target, warped_input=warped_input)
        attr = IntegratedGradients(f).attribute(images, baselines=torch.zeros_like(images), n_steps=n_steps,
                                                internal_batch_size=internal_batch_size)
    return attr.detach().abs().sum(1)


def to_input_space(warped_map: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Carry a map in warped coordinates (N, H, W) back onto the original image through the sampling grid.

    Warped pixel (i, j) was read from original point grid[i, j]; each original pixel gets the mean value of the
    warped pixels that read it (0 where none did). Magnified regions are read by many pixels and so come back
    sharp; compressed ones come back sparse.
    """
    n, h, w = warped_map.shape
    gx = ((grid[..., 0].detach() + 1) / 2 * (w - 1)).round().long().clamp(0, w - 1)
    gy = ((grid[..., 1].detach() + 1) / 2 * (h - 1)).round().long().clamp(0, h - 1)
    flat = (gy * w + gx).view(n, -1)
    total = torch.zeros(n, h * w).scatter_add_(1, flat, warped_map.detach().float().reshape(n, -1))
    count = torch.zeros(n, h * w).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    out = (total / count.clamp_min(1)).view(n, 1, h, w)
    # Fill the holes left between sparse samples with a small box blur weighted by coverage.
    cover = (count > 0).float().view(n, 1, h, w)
    k = torch.ones(1, 1, 5, 5)
    num = F.conv2d(out * cover, k, padding=2)
    den = F.conv2d(cover, k, padding=2)
    filled = torch.where(cover > 0, out, num / den.clamp_min(1e-6))
    return filled[:, 0]


@dataclass
class AttributionViews:
    """One image's attribution seen on the original and on the warped image (``warped`` is None without DPP)."""

    original: torch.Tensor           # (H, W) map on the original image
    warped: torch.Tensor | None      # (H, W) map on the warped image
    warped_image: torch.Tensor | None  # (3, H, W) the warped image itself


def gradcam_views(model: FRPT, image: torch.Tensor, target: Target = None) -> AttributionViews:
    """Grad-CAM of one image (3, H, W) in [0, 1], on the warped image and carried back to the original."""
    x = image[None]
    with torch.no_grad():
        prompt = model.run_prompt(x)
    cam = gradcam(model, x, target)
    if prompt is None:
        return AttributionViews(cam[0], None, None)
    return AttributionViews(to_input_space(cam, prompt.grid)[0], cam[0], prompt.warped[0])


def ig_views(model: FRPT, image: torch.Tensor, target: Target = None, n_steps: int = 16) -> AttributionViews:
    """Integrated Gradients of one image on the original pixels (through the warp) and on the warped image."""
    x = image[None]
    with torch.no_grad():
        prompt = model.run_prompt(x)
    original = integrated_gradients(model, x, target, n_steps=n_steps)[0]
    if prompt is None:
        return AttributionViews(original, None, None)
    warped = integrated_gradients(model, prompt.warped, target, n_steps=n_steps, warped_input=True)[0]
    return AttributionViews(original, warped, prompt.warped[0])


def similarity_gradcam(model: FRPT, image: torch.Tensor, reference_embedding: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the cosine similarity between ``image`` (3, H, W) and a fixed reference embedding (D,), on
    the original image (H, W): where the image looks like the other one. Compute the reference under
    ``torch.no_grad()``, not ``inference_mode`` (inference tensors cannot be saved for backward)."""
    return gradcam_views(model, image, reference_embedding.detach().clone()).original


__all__ = ["gradcam_layer", "score_function", "gradcam", "integrated_gradients", "to_input_space",
           "AttributionViews", "gradcam_views", "ig_views", "similarity_gradcam"]
