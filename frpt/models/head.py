"""CAH: the category-specific awareness head (paper Sec. 3.3, Eqs. 7-9), and the embedding heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


class WithinClassWhitening(nn.Module):
    """Ours, not in the paper (compact preset's ``whitening`` option): e = S^(-1/2) (x / |x| - mu).

    mu and S are the mean and the within-class covariance of the L2-normalised pooled vectors of the training
    classes, S's eigenvalues shrunk toward their mean (S_a = (1 - a) S + a mean(eig S) I) so that directions the
    training classes barely vary in are not blown up. Directions along which images of one species differ (pose,
    background, light) are damped, and a cosine kNN then weighs what tells species apart; unlike a classifier it
    has no class-specific weights to overfit, so it carries to unseen classes (the within-class whitening of
    Radenovic et al., TPAMI 2019, at full rank). Stored as buffers, fitted in closed form by :meth:`fit`; before
    that it is the identity on normalised vectors, so the cosine ranking is the unwhitened one.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("matrix", torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=1) - self.mean) @ self.matrix

    @torch.no_grad()
    def fit(self, x: torch.Tensor, labels: torch.Tensor, shrink: float) -> None:
        """Fit mu and S^(-1/2) to vectors ``x`` (N, C) of classes ``labels`` (N,), shrinkage ``shrink`` in (0, 1]."""
        if not 0 < shrink <= 1:
            raise ValueError(f"shrink must be in (0, 1], got {shrink}")
        x = F.normalize(x.double(), dim=1)
        labels = torch.as_tensor(labels)
        centred = x.clone()
        for c in labels.unique():
            rows = labels == c
            centred[rows] -= x[rows].mean(0)
        within = centred.T @ centred / len(x)
        vals, vecs = torch.linalg.eigh(within)
        vals = vals.clamp(min=0)
        vals = (1 - shrink) * vals + shrink * vals.mean()
        self.mean.copy_(x.mean(0).to(self.mean))
        self.matrix.copy_((vecs @ torch.diag(vals.rsqrt()) @ vecs.T).to(self.matrix))

    def reset(self) -> None:
        self.mean.zero_()
        self.matrix.copy_(torch.eye(len(self.mean)))


class EmbeddingHead(nn.Module):
    """Pool -> (BNNeck) -> (whitening) -> embedding; the classifier reads the vector before the whitening.

    paper: GAP and a linear classifier with bias; the embedding is the pooled vector (Sec. 3.4).
    official: GeM + BNNeck (BatchNorm1d, bias frozen at 0, fast-reid ``NECK_FEAT: after``) and a bias-free
    classifier on the post-neck vector, which is also the retrieval embedding.
    compact with ``whitening``: the retrieval embedding is :class:`WithinClassWhitening` of the pooled vector.
    """

    def __init__(self, channels: int, num_classes: int, pooling: str = "avg", bnneck: bool = False,
                 classifier_bias: bool = True, whitening: bool = False):
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
        self.whitening = WithinClassWhitening(channels) if whitening else None

    def features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The pooled (and BNNeck'd) vector: what the classifier reads and the whitening is fitted to."""
        pooled = self.pool(feature_map)
        return self.neck(pooled) if self.neck is not None else pooled

    def embed(self, feature_map: torch.Tensor) -> torch.Tensor:
        vector = self.features(feature_map)
        return self.whitening(vector) if self.whitening is not None else vector

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        vector = self.features(feature_map)
        logits = self.classifier(vector) if self.classifier is not None else None
        return (self.whitening(vector) if self.whitening is not None else vector), logits


