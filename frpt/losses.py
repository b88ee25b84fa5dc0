"""Classification loss (paper Eq. 10), with the released code's label smoothing as an option."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy; with ``smoothing`` = eps the target gets 1 - eps and every other class eps / (C - 1), as in
    fast-reid's ``cross_entropy_loss`` (the official preset uses eps = 0.3). PyTorch's own ``label_smoothing``
    spreads eps / C over all classes, target included, which is a different target distribution."""
    if smoothing == 0.0:
        return F.cross_entropy(logits.float(), targets)
    log_probs = F.log_softmax(logits.float(), dim=1)
    num_classes = logits.shape[1]
    target_dist = torch.full_like(log_probs, smoothing / (num_classes - 1))
    target_dist.scatter_(1, targets[:, None], 1.0 - smoothing)
    return -(target_dist * log_probs).sum(1).mean()
