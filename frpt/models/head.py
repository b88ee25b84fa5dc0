"""CAH: the category-specific awareness head (paper Sec. 3.3, Eqs. 7-9), and the embedding heads."""
from __future__ import annotations

import torch
from torch import nn


class CategoryAwarenessHead(nn.Module):
    """M_R = W_C * M + (1 - W_C) * IN(M), with W_C = sigmoid(W_L ReLU(W_F GAP(M))) (Eqs. 7-9).

    Channels the gate rates as category-relevant pass unchanged; the rest are instance-normalised, which removes
    species-level appearance. The gate is trained only through the classification loss. ``instance_norm=False``
    is Table 1's "without IN" row (M_R = W_C * M). ``identity_init=True`` (compact preset) starts the gate open.
    ``conv_block=True`` adds the released code's extra
    1x1 (C -> C/2) + BN + ReLU, 3x3 (C/2 -> C) + BN + ReLU block, which the paper does not mention.
    """

    def __init__(self, channels: int, reduction: int = 8, instance_norm: bool = True, conv_block: bool = False,
                 identity_init: bool = False):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=identity_init), nn.Sigmoid(),
        )
        if identity_init:
            # Ours (compact preset): the gate starts open, W_C = sigmoid(4) = 0.98 for every channel, so M_R ~ M and
            # the untrained head is the frozen baseline; with the default init W_C ~ 0.5 mixes half of IN(M) into
            # every channel and the untrained head starts 3 R@1 below PT on CUB (bench/RESULTS.md).
            nn.init.zeros_(self.gate[2].weight)
            nn.init.constant_(self.gate[2].bias, 4.0)
        self.instance_norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False) if instance_norm else None
        self.conv_block = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 1, bias=False), nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        ) if conv_block else None

    def channel_weights(self, feature_map: torch.Tensor) -> torch.Tensor:
        """W_C, shape (N, C, 1, 1)."""
        return self.gate(feature_map.mean(dim=(2, 3), keepdim=True))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        w = self.channel_weights(feature_map)
        out = w * feature_map
        if self.instance_norm is not None:
            out = out + (1 - w) * self.instance_norm(feature_map)
        if self.conv_block is not None:
            out = self.conv_block(out)
        return out


class GeneralizedMeanPooling(nn.Module):
    """GeM with a fixed p (fast-reid ``GeneralizedMeanPooling``, p = 3, clamp 1e-6), as in the released code."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AveragePooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_pooling(name: str) -> nn.Module:
    return {"avg": AveragePooling, "gem": GeneralizedMeanPooling}[name]()


class EmbeddingHead(nn.Module):
    """Pool -> (BNNeck) -> embedding -> classifier.

    paper: GAP and a linear classifier with bias; the embedding is the pooled vector (Sec. 3.4).
    official: GeM + BNNeck (BatchNorm1d, bias frozen at 0, fast-reid ``NECK_FEAT: after``) and a bias-free
    classifier on the post-neck vector, which is also the retrieval embedding.
    """

    def __init__(self, channels: int, num_classes: int, pooling: str = "avg", bnneck: bool = False,
                 classifier_bias: bool = True):
        super().__init__()
        self.pool = build_pooling(pooling)
        self.neck = None
        if bnneck:
            self.neck = nn.BatchNorm1d(channels)
            nn.init.zeros_(self.neck.bias)
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, num_classes, bias=classifier_bias) if num_classes > 0 else None
        if self.classifier is not None and not classifier_bias:
            nn.init.normal_(self.classifier.weight, std=0.01)

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(feature_map)
        return self.neck(pooled) if self.neck is not None else pooled

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        embedding = self.embed(feature_map)
        logits = self.classifier(embedding) if self.classifier is not None else None
        return embedding, logits


