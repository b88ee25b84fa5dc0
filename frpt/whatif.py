"""What if the prompt were different? One query's retrieval under an edited prompt, beside the learned prompt and
no prompt at all (issue 21).

The gallery stays as stored (every test image embedded with the learned prompt, :mod:`frpt.gallery`); only the
query is re-embedded with :func:`frpt.evaluation.embed_images`, on the gallery's engine and precision: an edit costs one
query's forward pass and one pass over the gallery's vectors. The edit itself is a :class:`frpt.models.PromptEdit`
(strength, box, focus point) that the model applies at inference; nothing is trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .evaluation import embed_images
from .index import cosine_scores
from .models import FRPT, PromptEdit

IDENTITY = PromptEdit(identity=True)


def embed_edited(model: FRPT, images: torch.Tensor, edit: PromptEdit | None, *, precision: str = "auto",
                 engine: str | None = None, known: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """Retrieval embeddings (N, D) of ``images`` (N, 3, S, S) in [0, 1] under ``edit`` (None or the default edit:
    the learned prompt), computed as a gallery's are (same ``engine`` and ``precision``)."""
    if (edit is None or edit.is_learned) and known is None:
        return embed_images(model, images, precision=precision, engine=engine)
    return embed_images(model, images, precision=precision, engine=engine, edit=edit or PromptEdit(), known=known)


@dataclass(frozen=True)
class Outcome:
    """One query's ranking of the gallery: top-K rows, their cosine scores and hits; AP over the full ranking and
    the rank (1-based) of the first same-class image. Label-dependent fields are None for an unlabelled query."""

    rows: np.ndarray
    scores: np.ndarray
    hits: np.ndarray | None
    average_precision: float | None
    first_hit: int | None


def rank_query(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, k: int, label: int | None = None,
               exclude: int | None = None, norms: np.ndarray | None = None) -> Outcome:
    """Cosine ranking of ``gallery`` (N, D) for ``query`` (D,); ``exclude`` drops the query's own row (leave one
    out, as the evaluation does); ``norms``: the gallery's row norms where known (``Gallery.after_norms``)."""
    sims = cosine_scores(query, gallery, norms)
    order = np.argsort(-sims, kind="stable")
    if exclude is not None:
        order = order[order != exclude]
    top = order[:k]
    if label is None:
        return Outcome(top, sims[top], None, None, None)
    relevant = np.asarray(labels)[order] == label
    ranks = np.flatnonzero(relevant) + 1
    ap = float(np.mean(np.arange(1, len(ranks) + 1) / ranks)) if len(ranks) else None
    return Outcome(top, sims[top], relevant[:k], ap, int(ranks[0]) if len(ranks) else None)


@dataclass(frozen=True)
class WhatIf:
    """A query under the learned prompt, an edited one and no prompt (identity), ranked on the same gallery."""

    edit: PromptEdit
    learned: Outcome
    edited: Outcome
    identity: Outcome

    def ap_change(self, against: str) -> float | None:
        """Edited AP minus the AP under ``against`` ("learned" or "identity"); None without labels."""
        base = getattr(self, against).average_precision
        return None if base is None or self.edited.average_precision is None else self.edited.average_precision - base

    def rank_change(self, against: str) -> int | None:
        """Edited first-hit rank minus the one under ``against`` (negative: the first hit came earlier)."""
        base = getattr(self, against).first_hit
        return None if base is None or self.edited.first_hit is None else self.edited.first_hit - base


def what_if(vectors: dict[str, np.ndarray], edit: PromptEdit, gallery: np.ndarray, labels: np.ndarray, k: int, *,
            label: int | None = None, exclude: int | None = None, norms: np.ndarray | None = None) -> WhatIf:
    """Rank the query's three embeddings (``vectors``: "learned", "edited", "identity", each (D,)) on
    ``gallery``."""
    rank = {name: rank_query(vectors[name], gallery, labels, k, label, exclude, norms)
            for name in ("learned", "edited", "identity")}
    return WhatIf(edit, rank["learned"], rank["edited"], rank["identity"])


__all__ = ["IDENTITY", "embed_edited", "Outcome", "rank_query", "WhatIf", "what_if"]
