"""What the app's pages compute, without Streamlit (so it is unit-testable): prompt panels, retrieval rankings,
UMAP figures and their selections, checkpoint summaries."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import viz
from ..config import DPP_VARIANTS, ModelConfig, from_dict
from ..whatif import rank_query
from ..models import FRPT, PromptEdit, focus_score, identity_grid, sampling_density
from ..models.crop import CropPrompt


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
                  temperature: float = 1.0, bins: int = 32, edit: PromptEdit | None = None) -> PromptPanels:
    """Run the DPP (``model.run_prompt``) on one image (3, S, S) in [0, 1]; ``box`` is (x, y, w, h) in its
    pixels. ``temperature`` rescales the saliency (< 1 sharpens); ``edit``, a what-if prompt, replaces it."""
    original = viz.to_uint8(image)
    boxed = viz.draw_box(original, box) if box is not None and box[2] > 0 and box[3] > 0 else original
    prompt = model.run_prompt(image[None], temperature, edit)
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
        crop = isinstance(model.prompt, CropPrompt)
        panels.area_share = float(focus_score(identity_grid(size, align_corners=not crop), unit)[0])
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


@dataclass(frozen=True)
class PromptWords:
    """How the app names a checkpoint's prompt: the published warp, or the compact preset's rigid crop."""

    kind: str     # "crop" or "warp" (PROMPTS)
    explain: str  # one sentence for a page caption
    output: str   # label of the prompted image
    saliency: str


def prompt_words(card: dict[str, Any]) -> PromptWords:
    """Captions that match the checkpoint's prompt (``model.prompt`` in its card: "warp" or "crop")."""
    if (card.get("model") or {}).get("prompt") == "crop":
        return PromptWords("crop", "The prompt (compact preset) reads the frozen backbone's final feature map, predicts a "
                           "saliency map and zooms rigidly on its box (centre = saliency mean, size from its spread), "
                           "so the part that tells classes apart gets more pixels without being bent.",
                           "Prompt crop (rigid zoom)", "Saliency A (crop box from its mean and spread)")
    return PromptWords("warp", "The discriminative perturbation prompt reads the frozen backbone's early features, predicts a "
                       "saliency map and resamples the image so that salient parts get more pixels (Eqs. 1-6).",
                       "DPP-warped image", "Saliency A (Eq. 2)")


def rank_gallery(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, k: int,
                 query_label: int | None = None, exclude: int | None = None,
                 norms: np.ndarray | None = None) -> Ranking:
    """Cosine ranking of ``gallery`` (N, D) for ``query`` (D,); ``exclude`` drops the query's own row; ``norms``:
    the gallery's row norms where already known (``Gallery.after_norms``).

    AP is over the full ranking: the mean of precision@i at the rank of every same-class image.
    """
    outcome = rank_query(query, gallery, labels, k, query_label, exclude, norms)  # the library's ranking
    if query_label is None:
        return Ranking(outcome.rows, outcome.scores, None, None, {})
    ranked = len(gallery) - (exclude is not None and 0 <= exclude < len(gallery))
    first = outcome.first_hit
    recall = {kk: float(first is not None and first <= kk) for kk in (1, 2, 4, 8) if kk <= ranked}
    return Ranking(outcome.rows, outcome.scores, outcome.hits, outcome.average_precision, recall)


def ranking_csv(ranking: Ranking, ids: list[str], labels: np.ndarray, classes: list[str]) -> str:
    """The ranking as CSV: rank, gallery row, id, class, cosine score, hit."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "row", "id", "class", "score", "hit"])
    for r, (i, s) in enumerate(zip(ranking.indices, ranking.scores)):
        hit = "" if ranking.hits is None else int(ranking.hits[r])
        w.writerow([r + 1, int(i), ids[i], classes[int(labels[i])], f"{float(s):.6f}", hit])
    return buf.getvalue()


def result_labels(ranking: Ranking, dataset_indices: np.ndarray) -> list[str]:
    """One label per ranked result, "rank. #dataset index (cosine score)": unique, and new for every query."""
    return [f"{r + 1}. #{int(dataset_indices[i])} (cosine {float(s):.3f})"
            for r, (i, s) in enumerate(zip(ranking.indices, ranking.scores))]


# ---------------------------------------------------------------- embedding space
LEGEND_MAX_CLASSES = 20  # above this a class legend is a wall of text: hover and the class picker name points
OTHER_GREY = "rgba(170, 170, 170, 0.35)"
NN_COLORS = {True: "rgb(46, 160, 67)", False: "rgb(214, 39, 40)"}  # viz.HIT / viz.MISS


def embedding_progress(done: int, total: int, elapsed_s: float, checkpoint: str, dataset: str,
                       root: str | None = None) -> str:
    """Progress text for a gallery computed on a page's first visit: images done, a time estimate from the rate
    so far, and the command that precomputes it before a demo (a 224 px split takes minutes on a 2-core CPU)."""
    text = f"Embedding the test images once: {done}/{total}"
    if 0 < done < total and elapsed_s > 0:
        left = (total - done) * elapsed_s / done
        text += f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
    return f"{text}. Stored beside the checkpoint; before a demo, `{embed_command(checkpoint, dataset, root)}` does this ahead."


def embed_command(checkpoint: str, dataset: str, root: str | None = None) -> str:
    """The command that stores a checkpoint's test gallery and maps ahead of a demo."""
    return f"python -m frpt embed --checkpoint {checkpoint} --dataset {dataset}" + (f" --root {root}" if root else "")


def sweep_command(checkpoint: str, dataset: str, root: str | None = None) -> str:
    """The command that stores a checkpoint's prompt sweep (frpt.sweep) ahead of a demo."""
    return f"python -m frpt sweep --checkpoint {checkpoint} --dataset {dataset}" + (f" --root {root}" if root else "")


def gallery_status(stored: bool, images: int, checkpoint: str, dataset: str, root: str | None = None) -> str:
    """One sentence for the Checkpoints page: whether the test gallery is stored, and what a first visit costs."""
    if stored:
        return (f"Test gallery stored ({images} images): Retrieval and Embedding space read it, nothing is "
                "embedded on a first visit.")
    return (f"No stored test gallery yet: choosing this checkpoint embeds the {images} test images in the "
            "background, and the pages work on what is ready as it grows (minutes at 224 px on a CPU). Before a "
            f"demo: `{embed_command(checkpoint, dataset, root)}`.")


def class_colors(classes: list[str]) -> dict[str, str]:
    """One fixed colour per class name, from the class list alone, so every map of a page (before/after the head,
    two checkpoints) paints a class alike. Qualitative palettes up to 48 classes, then golden-ratio hues."""
    import colorsys

    import plotly.express as px

    palette = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
    if len(classes) <= len(palette):
        return {c: palette[i] for i, c in enumerate(classes)}
    out = {}
    for i, c in enumerate(classes):
        r, g, b = colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, (0.38, 0.52, 0.66)[i % 3], 0.75)
        out[c] = f"rgb({round(r * 255)}, {round(g * 255)}, {round(b * 255)})"
    return out


def umap_figure(coords: np.ndarray, rows: np.ndarray, labels: np.ndarray, classes: list[str], ids: list[str],
                title: str, highlight: list[int] | None = None, *, colors: dict[str, str] | None = None,
                focus: list[str] | None = None, nn_hits: np.ndarray | None = None,
                indices: np.ndarray | None = None):
    """Plotly scatter of 2-D coordinates (point i is gallery row ``rows[i]``).

    Coloured by class (``colors``, default :func:`class_colors`, so several maps can share one mapping) or, with
    ``nn_hits`` (a bool per point, aligned with ``rows``), by whether the point's nearest neighbour is a hit. ``focus`` (class
    names) keeps those classes coloured and greys out the rest. ``highlight`` (gallery rows) rings selected points.
    No legend above :data:`LEGEND_MAX_CLASSES` classes. ``custom_data`` carries the gallery row, class and id, so a
    selection maps back to an image whatever trace it falls in (plotly.py#3976). Hover shows each point's
    test-image number from ``indices`` (the gallery's dataset index per row; default the row itself)."""
    import plotly.graph_objects as go

    rows = np.asarray(rows).astype(int)
    colors = colors or class_colors(classes)
    names = np.array([classes[int(labels[r])] for r in rows], dtype=object)
    files = np.array([ids[r].rsplit("/", 1)[-1] for r in rows], dtype=object)
    nn = None if nn_hits is None else np.asarray(nn_hits, bool)
    if nn is not None and len(nn) != len(rows):
        raise ValueError(f"{len(nn)} nearest-neighbour flags for {len(rows)} points")
    focus_set = set(focus or [])
    in_focus = np.isin(names, list(focus_set)) if focus_set else np.ones(len(rows), bool)
    scatter = go.Scattergl if len(rows) > 1000 else go.Scatter
    numbers = rows if indices is None else np.asarray(indices).astype(int)[rows]  # test-image numbers
    hover = "<b>%{customdata[1]}</b><br>#%{customdata[4]} · %{customdata[2]}"
    hover += "<br>nearest neighbour: %{customdata[3]}" if nn is not None else ""
    status = np.array(["n/a"] * len(rows), dtype=object) if nn is None else \
        np.where(nn, "same class (hit)", "other class (miss)").astype(object)

    def trace(mask: np.ndarray, name: str, color: str, size: float, legend: bool):
        custom = np.stack([rows[mask], names[mask], files[mask], status[mask], numbers[mask]], axis=1)
        return scatter(x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=name, customdata=custom,
                       marker={"size": size, "color": color, "opacity": 0.9}, showlegend=legend,
                       hovertemplate=hover + "<extra></extra>")

    fig = go.Figure()
    if not in_focus.all():
        fig.add_trace(trace(~in_focus, "other classes", OTHER_GREY, 5, True))
    if nn is not None:
        for hit, label in ((True, "nearest neighbour: same class"), (False, "nearest neighbour: other class")):
            mask = in_focus & (nn == hit)
            if mask.any():
                fig.add_trace(trace(mask, label, NN_COLORS[hit], 7, True))
    else:
        shown = [c for c in classes if c in set(names[in_focus])]
        legend = len(shown) <= LEGEND_MAX_CLASSES
        for c in shown:
            fig.add_trace(trace(in_focus & (names == c), c, colors[c], 7 if focus_set else 6, legend))
    if highlight:
        ring = np.isin(rows, highlight)
        fig.add_scatter(x=coords[ring, 0], y=coords[ring, 1], mode="markers", name="selected", hoverinfo="skip",
                        customdata=[[int(r)] for r in rows[ring]],
                        marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}})
    # No dragmode: Streamlit's default (pan) keeps click-to-select; in box/lasso mode it turns clicks off.
    # The legend goes under the map, so two maps side by side keep their width.
    # The toolbar stands on the right edge, so it never covers the title of a half-width map.
    fig.update_layout(title=title, height=520, margin={"l": 10, "r": 40, "t": 40, "b": 10}, modebar={"orientation": "v"},
                      legend={"itemsizing": "constant", "orientation": "h", "yanchor": "top", "y": -0.02, "x": 0},
                      xaxis={"visible": False}, yaxis={"visible": False}, uirevision=title)
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
        supervision = train.get("prompt_supervision", "labels")
        out["prompt trained on"] = "boxes (named departure)" if supervision == "boxes" else "class labels"
    elif card.get("variant") in DPP_VARIANTS:  # the DPP stabilisers, so a bounded run is told apart
        out["DPP lr scale"] = f"{train.get('prompt_lr_scale', 1.0):g}"
        bound = model.get("saliency_bound", 0.0)
        out["saliency bound"] = f"{bound:g}" if bound else "none (as published)"
    if model.get("views", "orig") != "orig":
        out["views"] = model["views"].replace(",", " + ")
    if model.get("whitening"):  # a fitted projection, not counted among the learned parameters below
        shrink = (card.get("compact") or {}).get("whitening_shrink")
        out["head"] = "whitened" + (f" (shrinkage {shrink:g}, fitted on the training classes)" if shrink else "")
    stored = (card.get("files") or {}).get("weights_dtype")
    if stored:
        out["weights stored as"] = f"{stored} (computed in fp32)"
    inference = card.get("inference") or {}
    if inference:  # the engine and precision that computed the card's test figures (frpt.engine)
        out["test figures computed on"] = f"{inference.get('engine')} {inference.get('precision')}"
    if report:
        out["learned parameters"] = f"{report['total']['learned']:,}"
        out["frozen parameters"] = f"{report['total']['frozen']:,}"
    return out


def head_is_identity(card: dict[str, Any]) -> bool:
    """Whether the embedding after the head equals the pooled features before it, so the Embedding space's
    before/after maps are one map: no CAH and no BNNeck (PT, DPP+PT), or a compact CAH whose open gate (identity
    init) was kept untrained because its validation split chose 0 epochs. A whitened head (compact preset's
    ``whitening``) always changes the space."""
    config = from_dict(ModelConfig, card["model"])
    if config.finetune or config.whitening:
        return False
    if not config.use_cah:
        return not config.bnneck
    return config.cah_identity_init and (card.get("compact") or {}).get("head_epochs") == 0


def metrics_table(cards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows = metrics, one column per named card (the comparison table)."""
    keys: list[str] = []
    for card in cards.values():
        keys += [k for k, v in (card.get("metrics") or {}).items() if isinstance(v, (int, float)) and k not in keys]
    return [{"metric": k, **{name: (card.get("metrics") or {}).get(k) for name, card in cards.items()}} for k in keys]


def _card_metrics(card: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The card's test figures if they were measured on ``dataset``, else none."""
    return (card.get("metrics") or {}) if (card.get("dataset") or {}).get("name") == dataset else {}


def live_metrics_table(card: dict[str, Any], dataset: str, live: dict[str, dict[str, float]], done: int,
                       total: int | None) -> list[dict[str, Any]]:
    """Home's table: the card's test figures (where it was evaluated on ``dataset``) beside the ones measured live
    on this server's gallery, after and before the head (:func:`frpt.ui.cache.live_metrics`). For a partial gallery
    (``total`` given) the live columns are named by the images they cover: never the checkpoint's figures. Without
    ``live["before"]`` (a head that leaves the pooled features as they are, :func:`head_is_identity`) one live
    column."""
    scope = "live" if total is None else f"{done:,} of {total:,} images"
    cards = {"card": card} if _card_metrics(card, dataset) else {}
    if "before" not in live:
        cards[f"{scope} (no head: before = after)"] = {"metrics": live["after"]}
    else:
        cards.update({f"{scope}, after the head": {"metrics": live["after"]},
                      f"{scope}, before the head": {"metrics": live["before"]}})
    keys = list(live["after"])
    return [row for row in metrics_table(cards) if row["metric"] in keys]


def live_vs_card(card: dict[str, Any], dataset: str, live: dict[str, float], engine: str | None,
                 precision: str | None) -> str | None:
    """Two sentences when the complete gallery's R@1 (``live``, computed here by ``engine`` at ``precision``) is not
    the card's: by how many queries, and what computed each (on the demo's 240 queries bf16 against fp32 alone moved
    6 on one machine). None when they agree to a query or the card has no figures of ``dataset``."""
    recorded = _card_metrics(card, dataset)
    if "recall@1" not in recorded or not live.get("queries"):
        return None
    queries = int(live["queries"])
    flipped = round(abs(live["recall@1"] - recorded["recall@1"]) * queries)
    if flipped < 1:
        return None
    inference = card.get("inference") or {}
    made = f"{inference['engine']} {inference['precision']}" if inference else "an engine it does not record"
    return (f"Live R@1 is {'above' if live['recall@1'] > recorded['recall@1'] else 'below'} the card's by {flipped} "
            f"of {queries:,} queries ({100 / queries:.2f} points each). The card's figures were computed by {made} "
            f"on the machine that trained it, these by {engine or 'torch'} {precision or 'fp32'} here.")


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


def compact_figures(card: dict[str, Any]) -> dict[str, Any]:
    """The compact recipe's training record (``card["compact"]``, frpt.compact; it writes no log.csv) as figures:
    "prompt": the crop prompt's proxy loss per epoch, titled with the validation R@1 of the untrained and trained
    saliency and which was kept; "head": CAH's train loss per epoch and its R@1 on the held-out training classes,
    the epoch chosen for the final fit marked. Only the stages the card records; empty for other checkpoints."""
    import plotly.graph_objects as go

    report = card.get("compact") or {}
    figures: dict[str, Any] = {}
    layout = dict(height=320, margin={"l": 10, "r": 10, "t": 70, "b": 10}, xaxis_title="epoch")
    losses = report.get("prompt_losses") or []
    if losses:
        scores = report.get("prompt_validation_recall@1") or {}
        title = "Crop prompt: proxy loss"
        if scores:  # a second, smaller line: the title must fit beside the chart's toolbar
            title += (f"<br><sup>validation R@1 untrained {scores.get('untrained', 0):.3f} · trained "
                      f"{scores.get('trained', 0):.3f} · kept: {report.get('prompt_kept', '?')}</sup>")
        fig = go.Figure()
        fig.add_scatter(x=list(range(1, len(losses) + 1)), y=losses, name="prompt loss", mode="lines+markers")
        fig.update_layout(title=title, yaxis_title="loss", **layout)
        figures["prompt"] = fig
    history = report.get("head_validation") or []
    if history:
        fig = go.Figure()
        trained = [r for r in history if "train_loss" in r]
        fig.add_scatter(x=[r["epoch"] for r in trained], y=[r["train_loss"] for r in trained], name="train loss",
                        mode="lines+markers")
        fig.add_scatter(x=[r["epoch"] for r in history], y=[r["recall@1"] for r in history], yaxis="y2",
                        name="validation R@1", mode="lines+markers")
        chosen = report.get("head_epochs")
        if chosen is not None:
            fig.add_vline(x=chosen, line_dash="dot", annotation_text=f"chosen: {chosen}", annotation_position="bottom right")
        fig.update_layout(title=f"Head (CAH)<br><sup>R@1 on {report.get('val_classes', '?')} held-out training classes; "
                                f"the final fit uses all classes for the chosen epochs</sup>",
                          yaxis_title="loss", yaxis2={"title": "R@1", "overlaying": "y", "side": "right"}, **layout)
        figures["head"] = fig
    return figures


# ---------------------------------------------------------------- prompt sweep
SWEEP_METRICS = (("recall@1", "R@1", "rgb(31, 119, 180)"), ("map@r", "MAP@R", "rgb(255, 127, 14)"))


def sweep_figures(result) -> dict[str, Any]:
    """The prompt sweep (:class:`frpt.sweep.SweepResult`) as plotly figures: "strength", R@1 and MAP@R of the test
    split against the saliency temperature (log axis, stronger zoom to the left), and for the crop prompt "box",
    against the box scale. The learned setting is a star; the identity (no prompt, temperature -> infinity) is a
    dashed line per metric, since it has no place on the axis."""
    import plotly.graph_objects as go

    identity = next((s for s in result.settings if s.setting == "identity"), None)
    axes = {"strength": ("saliency temperature (log; < 1: stronger zoom)", "temperature", "log",
                         [s for s in result.settings if s.temperature is not None and s.scale == 1.0])}
    if result.prompt == "crop":
        axes["box"] = ("box scale (x the learned box's size)", "scale", "linear",
                       [s for s in result.settings if s.temperature == 1.0])
    figures = {}
    for key, (title, attr, axis_type, points) in axes.items():
        points = sorted(points, key=lambda s: getattr(s, attr))
        fig = go.Figure()
        for metric, name, color in SWEEP_METRICS:
            fig.add_scatter(x=[getattr(s, attr) for s in points], y=[s.metrics[metric] for s in points], name=name,
                            mode="lines+markers", line={"color": color}, text=[s.setting for s in points],
                            hovertemplate=f"%{{text}}<br>{name} %{{y:.3f}}<extra></extra>")
            learned = [s for s in points if s.setting == "learned"]
            fig.add_scatter(x=[getattr(s, attr) for s in learned], y=[s.metrics[metric] for s in learned],
                            mode="markers+text", marker={"symbol": "star", "size": 16, "color": color,
                                                          "line": {"width": 1, "color": "black"}},
                            text=["learned"], textposition="top center", showlegend=False, hoverinfo="skip")
            if identity is not None:
                fig.add_hline(y=identity.metrics[metric], line_dash="dash", line_color=color,
                              annotation_text=f"identity (no prompt): {name} {identity.metrics[metric]:.3f}",
                              annotation_position="bottom right")
        ticks = [getattr(s, attr) for s in points]  # the swept values themselves (a log axis labels 0.3 as "3")
        # the toolbar stands on the right edge (as on the UMAP maps), so the legend beside the title stays readable
        fig.update_layout(height=340, margin={"l": 10, "r": 40, "t": 40, "b": 10}, modebar={"orientation": "v"},
                          xaxis_title=title,
                          xaxis={"type": axis_type, "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]},
                          yaxis_title="test split",
                          legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.14},
                          title={"text": "Prompt strength" if key == "strength" else "Crop box size", "y": 0.98})
        figures[key] = fig
    return figures


__all__ = ["PromptPanels", "prompt_panels", "Ranking", "rank_gallery", "ranking_csv", "class_colors", "umap_figure",
           "selected_rows", "card_summary", "metrics_table", "live_metrics_table", "live_vs_card", "log_figure",
           "compact_figures", "sweep_figures"]
