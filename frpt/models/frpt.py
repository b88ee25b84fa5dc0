"""The FRPT model: frozen backbone + DPP + CAH + embedding head (paper Fig. 1)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ZOOM_VIEWS, ModelConfig
from ..errors import ConfigError
from .backbone import Backbone
from .crop import CropPrompt
from .edit import PromptEdit
from .head import CategoryAwarenessHead, EmbeddingHead
from .prompt import DiscriminativePerturbationPrompt, PromptOutput


@dataclass
class FRPTOutput:
    """Everything one forward pass produces; ``prompt`` is None for variants without DPP."""

    embedding: torch.Tensor          # (N, D) retrieval embedding, after the head
    pre_head: torch.Tensor           # (N, D) pooled backbone features of the (warped) image, before CAH
    logits: torch.Tensor | None      # (N, num_classes) training classifier
    prompt: PromptOutput | None


class FRPT(nn.Module):
    """Fine-Grained Retrieval Prompt Tuning.

    Inputs are float images in [0, 1]; the model normalises them with the backbone's mean/std *after* the DPP
    warp, so the sampler's zero padding is black in display space. Paper path: original image -> frozen stages
    up to the saliency stride -> A -> warp -> whole frozen backbone -> CAH -> pooling -> embedding.
    """

    def __init__(self, config: ModelConfig, backbone: Backbone):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, -1, 1, 1), persistent=False)
        c = backbone.num_features
        self.prompt: DiscriminativePerturbationPrompt | CropPrompt | None = None
        if config.use_dpp and config.prompt == "crop":
            self.prompt = CropPrompt(c, config.crop_std_scale, config.crop_margin, config.crop_min_half,
                                     config.crop_max_half)
        elif config.use_dpp:
            self.prompt = DiscriminativePerturbationPrompt(
                backbone.stage_channels(config.saliency_stride), config.saliency_kernel, config.saliency_relu,
                config.saliency_bias, config.grid_size, config.grid_padding, config.gaussian_fwhm,
                config.saliency_bound,
            )
        self.cah = CategoryAwarenessHead(c, config.se_reduction, config.cah_instance_norm, config.head_conv_block,
                                         config.cah_identity_init) if config.use_cah else None
        # PT pools the frozen map the way its preset does (GAP for paper, GeM for official and compact), so a
        # row's gain over PT counts only what training adds.
        self.head = EmbeddingHead(c, config.num_classes if config.trainable else 0, config.pooling,
                                  config.bnneck and config.trainable, config.classifier_bias,
                                  config.whitening and config.trainable)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def prompt_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the prompt reads: the stage at ``saliency_stride`` (warp) or the final map M_P (crop)."""
        if isinstance(self.prompt, CropPrompt):
            return self.backbone(self.normalize(images))
        return self.backbone.stage_features(self.normalize(images), self.config.saliency_stride)

    def run_prompt(self, images: torch.Tensor, temperature: float = 1.0, edit: PromptEdit | None = None
                   ) -> PromptOutput | None:
        """The DPP alone: saliency from the frozen backbone's own features, then the warp (Eqs. 1-6). ``edit``: a
        what-if change of the learned prompt (:class:`PromptEdit`, with its own temperature)."""
        if self.prompt is None:
            return None
        return self.prompt(images, self.prompt_features(images), temperature, edit)

    def view_maps(self, images: torch.Tensor, temperature: float = 1.0, edit: PromptEdit | None = None,
                  known: dict[str, torch.Tensor] | None = None
                  ) -> tuple[dict[str, torch.Tensor], PromptOutput | None]:
        """Final frozen maps of each view in ``config.view_list``. With the warp prompt the single view is the
        warped image (the paper's path); the crop prompt reuses the original's map for its saliency. The views
        are an inference-time ensemble: in training mode only the image the prompt produces is embedded (random
        flips come from the training transform).

        ``known``: crop prompt only, maps of these same images already computed (cached "orig"/"flip" maps, which
        no prompt edit changes), used instead of running the backbone again. An identity edit's crop is the whole
        image, so its crop views are the original's maps.

        The "zoom" views (ours, issue 30) are a square of half-side ``config.zoom_half`` on the peak of the same
        saliency (:meth:`CropPrompt.zoom_box`); an edit reaches them through its temperature only (its scale and
        shift are the object crop's), and an identity edit's zoom views are the original's maps too."""
        views = self.config.view_list
        if self.training:
            views = ("crop",) if isinstance(self.prompt, CropPrompt) else ("orig",)
        if not isinstance(self.prompt, CropPrompt):
            prompt = self.run_prompt(images, temperature, edit)
            source = prompt.warped if prompt is not None else images
            maps = {"orig": self.backbone(self.normalize(source))}
            if "flip" in views:
                maps["flip"] = self.backbone(self.normalize(source.flip(-1)))
            return maps, prompt
        maps = dict(known or {})
        if "orig" not in maps:
            maps["orig"] = self.backbone(self.normalize(images))
        prompt = self.prompt(images, maps["orig"], temperature, edit)
        sources = {"flip": images.flip(-1), "crop": prompt.warped, "crop-flip": prompt.warped.flip(-1)}
        same = {"crop": "orig", "crop-flip": "flip", "zoom": "orig", "zoom-flip": "flip"} \
            if edit is not None and edit.identity else {}
        if any(v in ZOOM_VIEWS and v not in maps and v not in same for v in views):
            if not self.config.zoom_half:
                raise ConfigError("The zoom views need a half-side (ModelConfig.zoom_half): compact training "
                                  "chooses it on the validation classes, or pass --zoom-half.")
            zoomed, _ = self.prompt.sample(images, self.prompt.zoom_box(prompt.saliency, self.config.zoom_half))
            sources.update({"zoom": zoomed, "zoom-flip": zoomed.flip(-1)})
        for view in views:
            if view not in maps and view in same:
                if same[view] not in maps:
                    maps[same[view]] = self.backbone(self.normalize(sources[same[view]]))
                maps[view] = maps[same[view]]
            elif view not in maps:
                maps[view] = self.backbone(self.normalize(sources[view]))
        return {v: maps[v] for v in views}, prompt

    def embed_maps(self, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(embedding, pre-head embedding, logits) from per-view final maps. One view: the head's outputs as they
        are. Several: the mean of the L2-normalised per-view vectors, and the mean of the per-view logits."""
        embeddings, pooled, logits = [], [], []
        for feature_map in maps.values():
            pooled.append(self.head.pool(feature_map))
            refined = self.cah(feature_map) if self.cah is not None else feature_map
            embedding, view_logits = self.head(refined)
            embeddings.append(embedding)
            logits.append(view_logits)
        if len(maps) == 1:
            return embeddings[0], pooled[0], logits[0]
        mean = lambda xs: torch.stack([F.normalize(x.float(), dim=1) for x in xs]).mean(0)  # noqa: E731
        return mean(embeddings), mean(pooled), (torch.stack(logits).mean(0) if logits[0] is not None else None)

    def forward(self, images: torch.Tensor, temperature: float = 1.0, edit: PromptEdit | None = None,
                known: dict[str, torch.Tensor] | None = None) -> FRPTOutput:
        maps, prompt = self.view_maps(images, temperature, edit, known)
        embedding, pre_head, logits = self.embed_maps(maps)
        return FRPTOutput(embedding=embedding, pre_head=pre_head, logits=logits, prompt=prompt)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding (not normalised); compare with cosine similarity."""
        return self.forward(images).embedding

    def learned_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint stores: everything except the frozen backbone (parameters and BN statistics)."""
        skip = () if self.config.finetune else ("backbone.",)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def is_learned(self, name: str) -> bool:
        """Whether parameter ``name`` is trained: everything outside the backbone (all of it for ``finetune``)
        except the BNNeck bias, which the released code freezes at 0. A structural rule, so the report stays
        right for a model whose ``requires_grad`` flags were switched off for inference (as the app does)."""
        if name.startswith("backbone."):
            return self.config.finetune
        return name != "head.neck.bias"

    def parameter_report(self) -> dict[str, dict[str, int]]:
        """Learned vs frozen parameter counts per module (``frpt info``)."""
        report: dict[str, dict[str, int]] = {}
        for name, p in self.named_parameters():
            counts = report.setdefault(name.split(".")[0], {"learned": 0, "frozen": 0})
            counts["learned" if self.is_learned(name) else "frozen"] += p.numel()
        report["total"] = {k: sum(r[k] for r in report.values()) for k in ("learned", "frozen")}
        return report


def build_model(config: ModelConfig, backbone_weights: str | os.PathLike | None = None) -> FRPT:
    """Build FRPT for ``config``. The backbone is frozen unless the variant is ``finetune``."""
    backbone = Backbone(config.backbone, backbone_weights, frozen=not config.finetune)
    return FRPT(config, backbone)
