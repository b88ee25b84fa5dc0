"""What the app's pages compute, without Streamlit (so it is unit-testable): prompt panels, retrieval rankings,
UMAP figures and their selections, checkpoint summaries."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import viz
from ..config import DPP_VARIANTS
from ..models import FRPT, focus_score, sampling_density


# ---------------------------------------------------------------- prompt explorer
@dataclass
class PromptPanels:
    """Pictures of one image's DPP (all HxWx3 uint8) and, with a ground-truth box, its focus score."""

    original: np.ndarray
    warped: np.ndarray | None
    saliency: np.ndarray | None
    grid: np.ndarray | None
    magnification: np.ndarray | None
    focus: float | None = None        # share of warped samples read from inside the box
    area_share: float | None = None   # the same for the identity warp = the box's area share
    max_magnification: float | None = None


@torch.no_grad()
def prompt_panels(model: FRPT, image: torch.Tensor, box: tuple[float, float, float, float] | None = None,
                  temperature: float = 1.0, bins: int = 32) -> PromptPanels:
    """Run the DPP (``model.run_prompt``) on one image (3, S, S) in [0, 1]; ``box`` is (x, y, w, h) in its
    pixels. ``temperature`` rescales the saliency softmax for display only (< 1 sharpens)."""
    original = viz.to_uint8(image)
    boxed = viz.draw_box(original, box) if box is not None and box[2] > 0 and box[3] > 0 else original
    prompt = model.run_prompt(image[None], temperature)
    if prompt is None:
        return PromptPanels(boxed, None, None, None, None)
    size = image.shape[-1]
    density = sampling_density(prompt.grid, bins)[0]
    panels = PromptPanels(
        original=boxed,
        warped=viz.to_uint8(prompt.warped[0]),
        saliency=viz.heatmap_overlay(boxed, prompt.saliency[0, 0], alpha=0.6),
        grid=viz.draw_grid(boxed, prompt.grid[0]),
        magnification=viz.magnification_image(density, size=size),
        max_magnification=float(density.max()),
    )
    if box is not None and box[2] > 0 and box[3] > 0:
        unit = viz.box_to_unit(box, (size, size))
        panels.focus = float(focus_score(prompt.grid, unit)[0])
        ident = torch.stack(torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="xy"), -1)
        panels.area_share = float(focus_score(ident[None], unit)[0])
    return panels


# ---------------------------------------------------------------- retrieval
@dataclass
class Ranking:
    """Top-K gallery rows for one query, with cosine scores and (when the query's class is known) hits."""

    indices: np.ndarray          # (K,) gallery rows
    scores: np.ndarray           # (K,) cosine similarity
    hits: np.ndarray | None      # (K,) bool, None for an unlabelled query
    average_precision: float | None
    recall_at: dict[int, float]  # K -> 1.0 if a same-class image is in the top K


def rank_gallery(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, k: int,
                 query_label: int | None = None, exclude: int | None = None) -> Ranking:
    """Cosine ranking of ``gallery`` (N, D) for ``query`` (D,); ``exclude`` drops the query's own row.

    AP is over the full ranking: the mean of precision@i at the rank of every same-class image.
    """
    q = F.normalize(torch.tensor(np.asarray(query, np.float32)).reshape(1, -1), dim=1)
    g = F.normalize(torch.tensor(np.asarray(gallery, np.float32)), dim=1)
    sims = (g @ q.T)[:, 0].numpy()
    order = np.argsort(-sims, kind="stable")
    if exclude is not None:
        order = order[order != exclude]
    top = order[:k]
    if query_label is None:
        return Ranking(top, sims[top], None, None, {})
    relevant = np.asarray(labels)[order] == query_label
    hits = relevant[:k]
    ap = None
    if relevant.any():
        ranks = np.flatnonzero(relevant) + 1
        ap = float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    recall = {kk: float(relevant[:kk].any()) for kk in (1, 2, 4, 8) if kk <= len(order)}
    return Ranking(top, sims[top], hits, ap, recall)


def ranking_csv(ranking: Ranking, ids: list[str], labels: np.ndarray, classes: list[str]) -> str:
    """The ranking as CSV: rank, gallery row, id, class, cosine score, hit."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "row", "id", "class", "score", "hit"])
    for r, (i, s) in enumerate(zip(ranking.indices, ranking.scores)):
        hit = "" if ranking.hits is None else int(ranking.hits[r])
        w.writerow([r + 1, int(i), ids[i], classes[int(labels[i])], f"{float(s):.6f}", hit])
    return buf.getvalue()


# ---------------------------------------------------------------- embedding space
def umap_figure(coords: np.ndarray, rows: np.ndarray, labels: np.ndarray, classes: list[str], ids: list[str],
                title: str, highlight: list[int] | None = None):
    """Plotly scatter of 2-D coordinates coloured by class; ``custom_data`` carries the gallery row so a
    selection maps back to an image whatever trace it falls in (plotly.py#3976)."""
    import pandas as pd
    import plotly.express as px

    frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "row": rows.astype(int),
                          "class": [classes[int(labels[r])] for r in rows],
                          "file": [ids[r].rsplit("/", 1)[-1] for r in rows]})
    fig = px.scatter(frame, x="x", y="y", color="class", custom_data=["row", "class", "file"], title=title,
                     render_mode="webgl" if len(frame) > 1000 else "auto")
    fig.update_traces(marker={"size": 6, "opacity": 0.85},
                      hovertemplate="%{customdata[1]}<br>%{customdata[2]}<extra></extra>")
    if highlight:
        picked = frame[frame["row"].isin(highlight)]
        fig.add_scatter(x=picked["x"], y=picked["y"], mode="markers", name="selected", hoverinfo="skip",
                        marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}})
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="class",
                      xaxis={"visible": False}, yaxis={"visible": False}, dragmode="lasso")
    return fig


def selected_rows(event: Any) -> list[int]:
    """Gallery rows of the points in a ``st.plotly_chart(on_select="rerun")`` event (via ``custom_data``)."""
    if not event:
        return []
    selection = event.get("selection", {}) if isinstance(event, dict) else getattr(event, "selection", {})
    points = selection.get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    rows = []
    for p in points:
        data = p.get("customdata") if isinstance(p, dict) else None
        if data:
            rows.append(int(data[0]))
    return list(dict.fromkeys(rows))


# ---------------------------------------------------------------- checkpoints
def card_summary(card: dict[str, Any], report: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Flat, human-readable facts of a checkpoint card (and its parameter report)."""
    out: dict[str, Any] = {
        "preset": card.get("preset"), "variant": card.get("variant"),
        "backbone": (card.get("backbone") or {}).get("name") if isinstance(card.get("backbone"), dict) else None,
        "input size": card.get("input_size"), "epochs": card.get("epoch"),
        "trained on": (card.get("dataset") or {}).get("name"), "classes": len(card.get("classes") or []),
    }
    model, train = card.get("model") or {}, card.get("train") or {}
    if card.get("variant") in DPP_VARIANTS and model.get("prompt") == "crop":
        out["prompt"] = (f"rigid crop: mean +- {model.get('crop_std_scale'):g} std of the saliency, "
                         f"half-width {model.get('crop_min_half'):g}-{model.get('crop_max_half'):g}")
        out["prompt kept"] = (card.get("compact") or {}).get("prompt_kept", "-")
    elif card.get("variant") in DPP_VARIANTS:  # the DPP stabilisers, so a bounded run is told apart
        out["DPP lr scale"] = f"{train.get('prompt_lr_scale', 1.0):g}"
        bound = model.get("saliency_bound", 0.0)
        out["saliency bound"] = f"{bound:g}" if bound else "none (as published)"
    if model.get("views", "orig") != "orig":
        out["views"] = model["views"].replace(",", " + ")
    if report:
        out["learned parameters"] = f"{report['total']['learned']:,}"
        out["frozen parameters"] = f"{report['total']['frozen']:,}"
    return out


def metrics_table(cards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows = metrics, one column per named card (the comparison table)."""
    keys: list[str] = []
    for card in cards.values():
        keys += [k for k, v in (card.get("metrics") or {}).items() if isinstance(v, (int, float)) and k not in keys]
    return [{"metric": k, **{name: (card.get("metrics") or {}).get(k) for name, card in cards.items()}} for k in keys]


def log_figure(rows: list[dict[str, str]]):
    """Training curves from ``log.csv`` rows: loss (left axis) and test R@1 where logged (right axis)."""
    import plotly.graph_objects as go

    epochs = [int(r["epoch"]) for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=epochs, y=[float(r["train_loss"]) for r in rows], name="train loss", mode="lines+markers")
    r1 = [(int(r["epoch"]), float(r["recall@1"])) for r in rows if r.get("recall@1") not in (None, "")]
    if r1:
        fig.add_scatter(x=[e for e, _ in r1], y=[v for _, v in r1], name="test R@1", mode="markers", yaxis="y2",
                        marker={"size": 10, "symbol": "diamond"})
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="epoch",
                      yaxis_title="loss", yaxis2={"title": "R@1", "overlaying": "y", "side": "right", "range": [0, 1]})
    return fig


__all__ = ["PromptPanels", "prompt_panels", "Ranking", "rank_gallery", "ranking_csv", "umap_figure", "selected_rows",
           "card_summary", "metrics_table", "log_figure"]
