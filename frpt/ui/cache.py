"""Cached loaders for the app. Keys are paths, names and numbers (never arrays). ``cache_resource`` holds only
read-only shared objects (models, datasets, stored arrays); per-user state lives in ``st.session_state``."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from ..checkpoint import load_card, load_checkpoint
from ..data import build_dataset, build_transform
from ..data.base import RetrievalDataset
from .. import jobs, workers
from . import heavy
from ..gallery import Gallery, gallery_embeddings, gallery_file, gallery_progress, load_gallery, partial_gallery
from ..jobs import Job, background_min
from ..models import FRPT
from ..projection import GalleryMap, gallery_umap, load_gallery_map, umap_file


WATCH = "frpt.watch"  # the partial galleries this page run draws, by (checkpoint, dataset, root): their rows ready


def start_umap_warmup() -> None:
    """Warm UMAP's numba kernels once per server, in the worker process that fits the maps
    (:mod:`frpt.workers`), before anyone opens a map. ``FRPT_WARM_UMAP=0`` turns it off (the test suite does)."""
    workers.warm(busy=lambda: any(job.active for job in jobs.queue().jobs()))


def stamp(path: str | os.PathLike) -> float:
    """Modification time of a checkpoint's card: part of every cache key, so a retrained folder reloads."""
    try:
        return (Path(path) / "card.json").stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Loading checkpoint...", max_entries=8)
def model(path: str, card_stamp: float) -> tuple[FRPT, dict[str, Any]]:
    """The checkpoint's model in eval mode (shared by all sessions: never mutate it) and its card."""
    net, card = load_checkpoint(path)
    net.requires_grad_(False)  # attributions need no parameter gradients; gradients still flow to the input
    return net, card


@st.cache_data(show_spinner=False, max_entries=32)
def card(path: str, card_stamp: float) -> dict[str, Any]:
    return load_card(path)


@st.cache_resource(show_spinner="Opening dataset...", max_entries=8)
def dataset(name: str, root: str | None, split: str, input_size: int) -> RetrievalDataset:
    """A split with the test transform at ``input_size`` (``load_image`` gives the raw picture)."""
    return build_dataset(name, split, root=root, transform=build_transform(input_size, train=False))


@st.cache_resource(show_spinner=False, max_entries=8)
def _stored_gallery(path: str, mtime: float) -> Gallery:
    found = load_gallery(Path(path))
    if found is None:
        raise FileNotFoundError(path)
    for arr in (found.embeddings.before, found.embeddings.after, found.embeddings.labels):
        arr.setflags(write=False)
    return found


def gallery(ckpt: str, name: str, root: str | None, ready: int | None = None) -> Gallery | None:
    """The test gallery. Stored beside the checkpoint: read. A split of up to :func:`frpt.jobs.background_min`
    images: embedded now, with a bar (seconds). A larger one: its background job is asked for (started, or put
    first), and what it has embedded so far is returned: a partial gallery (``complete`` False), or None before its
    first shard lands. ``ready`` pins a partial gallery's snapshot (:func:`frpt.gallery.partial_gallery`): pass a
    page's ``gallery.done`` to every helper so that all its figures use the same rows."""
    card_ = card(ckpt, stamp(ckpt))
    ds = dataset(name, root, "test", card_["input_size"])
    path = gallery_file(card_, ds, root)
    if not path.is_file() and len(ds) <= background_min():
        net, _ = model(ckpt, stamp(ckpt))
        from .logic import embedding_progress

        started = time.perf_counter()
        text = lambda k: embedding_progress(k, len(ds), time.perf_counter() - started, ckpt, name, root)  # noqa: E731
        bar = st.progress(0.0, text=text(0))
        # called in this (the page's) thread after each batch; images decode in a thread beside the engine
        gallery_embeddings(net, card_, ds, root=root, progress=False,
                           on_images=lambda k: bar.progress(k / len(ds), text=text(k)))
        bar.empty()
    if path.is_file() and (ready is None or ready >= len(ds)):
        return _stored_gallery(str(path), path.stat().st_mtime)
    request_gallery(ckpt, name, root)
    if ready is None:
        ready = gallery_progress(card_, ds, root)
        if ready == len(ds) and path.is_file():
            return _stored_gallery(str(path), path.stat().st_mtime)
        # the page draws this snapshot: frpt.ui.background reruns it once more is ready
        st.session_state.setdefault(WATCH, {})[(ckpt, name, root)] = ready
    return _partial_gallery(ckpt, stamp(ckpt), name, root, ready) if ready else None


def gallery_ready(ckpt: str, name: str, root: str | None) -> int:
    """Test images whose gallery rows a page can use now (:func:`frpt.gallery.gallery_progress`); cheap."""
    card_ = card(ckpt, stamp(ckpt))
    return gallery_progress(card_, dataset(name, root, "test", card_["input_size"]), root)


def gallery_total(ckpt: str, name: str, root: str | None) -> int:
    """Images in the test split (what a complete gallery accounts for)."""
    card_ = card(ckpt, stamp(ckpt))
    return len(dataset(name, root, "test", card_["input_size"]))


def first_shard_images() -> int:
    from ..gallery import FIRST_SHARD, SHARD_SIZE

    return min(FIRST_SHARD, SHARD_SIZE)


@st.cache_resource(show_spinner=False, max_entries=4)
def _partial_gallery(ckpt: str, card_stamp: float, name: str, root: str | None, ready: int) -> Gallery | None:
    """A snapshot of a gallery being embedded: its first ``ready`` images (shared by every session)."""
    card_ = card(ckpt, card_stamp)
    found = partial_gallery(card_, dataset(name, root, "test", card_["input_size"]), root, ready)
    if found is not None:
        for arr in (found.embeddings.before, found.embeddings.after, found.embeddings.labels):
            arr.setflags(write=False)
    return found


def request_gallery(ckpt: str, name: str, root: str | None, *, urgent: bool = True) -> Job | None:
    """Start (or hurry) the background job that embeds the checkpoint's test gallery; None where none is needed
    (stored, or small enough to embed in the page)."""
    card_ = card(ckpt, stamp(ckpt))
    ds = dataset(name, root, "test", card_["input_size"])
    if len(ds) <= background_min() or gallery_file(card_, ds, root).is_file():
        return None
    return jobs.queue().submit(jobs.gallery_job(ckpt, card_, ds, root, _title(ckpt, name, "gallery")), urgent=urgent)


def _title(ckpt: str, name: str, what: str) -> str:
    from ..demo import named_checkpoints

    shown = next((n for n, p in named_checkpoints().items() if Path(p).resolve() == Path(ckpt).resolve()),
                 Path(ckpt).name)
    return f"{shown} · {name} {what}"


@st.cache_resource(show_spinner=False, max_entries=8)
def _stored_map(path: str, mtime: float, n: int) -> GalleryMap:
    found = load_gallery_map(Path(path), n)
    if found is None:
        raise FileNotFoundError(path)
    return found


def gallery_map(ckpt: str, name: str, root: str | None, max_points: int | None,
                ready: int | None = None) -> GalleryMap:
    """UMAP coordinates (before/after the head) of the gallery, computed once per subsample size; a partial
    gallery's (``ready``) are fitted in memory per snapshot and never stored."""
    g = gallery(ckpt, name, root, ready)
    if not g.complete:
        return _partial_map(ckpt, stamp(ckpt), name, root, max_points, g.done)
    path = umap_file(g, max_points)
    if not path.is_file():
        bar = st.progress(0.0, text="Computing the UMAP maps once (stored beside the checkpoint)...")
        gallery_umap(g, max_points=max_points, progress=lambda f, text: bar.progress(f, text=f"UMAP: {text}"),
                     fit=workers.umap_2d)
        bar.empty()
    return _stored_map(str(path), path.stat().st_mtime, len(g.ids))


@st.cache_resource(show_spinner="Fitting UMAP to the images embedded so far...", max_entries=4)
def _partial_map(ckpt: str, card_stamp: float, name: str, root: str | None, max_points: int | None,
                 ready: int) -> GalleryMap:
    return gallery_umap(gallery(ckpt, name, root, ready), max_points=max_points, fit=workers.umap_2d)


@st.cache_data(show_spinner=False, max_entries=64)
def embedding_stats(ckpt: str, name: str, root: str | None, max_points: int | None, which: str,
                    ready: int | None = None) -> dict[str, float]:
    from ..projection import embedding_stats as stats

    g, m = gallery(ckpt, name, root, ready), gallery_map(ckpt, name, root, max_points, ready)
    x = g.embeddings.before if which == "before" else g.embeddings.after
    return stats(x[m.indices], g.embeddings.labels[m.indices])


@st.cache_data(show_spinner=False, max_entries=16)
def live_metrics(ckpt: str, card_stamp: float, name: str, root: str | None, ready: int,
                 heads: tuple[str, ...] = ("after", "before")) -> dict[str, dict[str, float]]:
    """:func:`frpt.metrics.ranking_metrics` of the test gallery's embeddings ``heads`` (after and/or before the
    head), on its first ``ready`` images among themselves (the whole split once complete): computed once per
    snapshot for every session (~2 s each on CUB's test split, 2 cores)."""
    from ..metrics import ranking_metrics

    g = gallery(ckpt, name, root, ready)
    with heavy.slot("Scoring the gallery"):
        return {which: ranking_metrics(getattr(g.embeddings, which), g.embeddings.labels) for which in heads}


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(name: str, root: str | None, split: str, input_size: int, index: int) -> np.ndarray:
    """The test-transform view (input_size square) of one dataset image, as uint8: resized and cropped in PIL
    (a tensor round trip gives the same pixels at ~4x the cost, on the path to a first ranked result)."""
    from ..data.transforms import test_geometry

    image = test_geometry(input_size)(dataset(name, root, split, input_size).load_image(index))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


@st.cache_data(show_spinner=False, max_entries=256)
def prompt_panels(ckpt: str, card_stamp: float, name: str, root: str | None, index: int, temperature: float,
                  edit: tuple | None = None):
    """The prompt explorer's pictures for test image ``index`` (a few ms per image; cached per session choice).
    ``edit``: the fields of a :class:`frpt.models.PromptEdit` (a tuple, so the cache key is plain values)."""
    from ..data import transform_box
    from ..models import PromptEdit
    from .logic import prompt_panels as compute

    net, card_ = model(ckpt, card_stamp)
    ds = dataset(name, root, "test", card_["input_size"])
    box = ds.box(index)
    if box is not None:
        box = transform_box(box, ds.load_image(index).size, card_["input_size"])
    return compute(net, ds[index][0], box, temperature, edit=None if edit is None else PromptEdit(*edit))


@st.cache_data(show_spinner=False, max_entries=512)
def edited_embedding(ckpt: str, card_stamp: float, name: str, root: str | None, index: int, edit: tuple,
                     precision: str, engine: str | None = None) -> np.ndarray:
    """Test image ``index`` embedded under a prompt edit (``edit``: a :class:`frpt.models.PromptEdit`'s fields),
    with the gallery's ``engine`` and ``precision``: one query's forward pass, cached so that going back to an edit
    is instant."""
    from ..models import PromptEdit
    from ..whatif import embed_edited

    net, card_ = model(ckpt, card_stamp)
    image = dataset(name, root, "test", card_["input_size"])[index][0]
    return embed_edited(net, image[None], PromptEdit(*edit), precision=precision, engine=engine)[0]


@st.cache_data(show_spinner=False, max_entries=16)
def _stored_sweep(path: str, mtime: float, card_stamp: float, ckpt: str):
    from ..sweep import load_sweep

    return load_sweep(Path(path), card(ckpt, card_stamp))


def prompt_sweep(ckpt: str, name: str, root: str | None):
    """The stored prompt sweep (:mod:`frpt.sweep`) of the checkpoint on the test split, or None."""
    from ..sweep import sweep_file

    card_ = card(ckpt, stamp(ckpt))
    path = sweep_file(card_, dataset(name, root, "test", card_["input_size"]), root)
    if not path.is_file():
        return None
    return _stored_sweep(str(path), path.stat().st_mtime, stamp(ckpt), ckpt)


def sweep_job(ckpt: str, name: str, root: str | None) -> Job | None:
    """The background job of the checkpoint's prompt sweep, if one was asked for in this server."""
    from ..sweep import sweep_file

    card_ = card(ckpt, stamp(ckpt))
    return jobs.queue().get(str(sweep_file(card_, dataset(name, root, "test", card_["input_size"]), root)))


def compute_prompt_sweep(ckpt: str, name: str, root: str | None):
    """Run the prompt sweep over the test split and store it beside the gallery (what ``python -m frpt sweep``
    does): in the page with a progress bar for a split of up to :func:`frpt.jobs.background_min` images (returns
    the stored result), else as a background job (returns None; the page shows the job's progress)."""
    from ..sweep import prompt_kind, run_sweep, save_sweep, sweep_file, sweep_settings

    net, card_ = model(ckpt, stamp(ckpt))
    ds = dataset(name, root, "test", card_["input_size"])
    if len(ds) > background_min():
        jobs.queue().submit(jobs.sweep_job(ckpt, card_, ds, root, _title(ckpt, name, "prompt sweep")), urgent=True)
        return None
    settings = sweep_settings(prompt_kind(net))
    started = time.perf_counter()

    def text(done: int, total: int) -> str:
        out = f"Sweeping {len(settings)} prompt settings over the test split: {done}/{total} images"
        if 0 < done < total:
            left = (total - done) * (time.perf_counter() - started) / done
            out += f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
        return out

    bar = st.progress(0.0, text=text(0, len(ds)))
    result = run_sweep(net, ds, settings, on_progress=lambda d, t: bar.progress(d / t, text=text(d, t)))
    bar.empty()
    save_sweep(sweep_file(card_, ds, root), result, card_)
    return prompt_sweep(ckpt, name, root)


def attribution_images(net: FRPT, image: torch.Tensor, method: str) -> dict[str, np.ndarray]:
    """Overlays of Grad-CAM ("gradcam") or Integrated Gradients ("ig") on the original and the warped image."""
    from .. import explain, viz

    with heavy.slot("Grad-CAM" if method == "gradcam" else "Integrated Gradients"):
        views = explain.gradcam_views(net, image) if method == "gradcam" else explain.ig_views(net, image)
    if method == "ig":  # pixel attributions are speckled: a light blur makes the overlay readable
        import torch.nn.functional as F

        smooth = lambda m: F.avg_pool2d(m[None, None], 5, 1, 2)[0, 0]  # noqa: E731
        views = explain.AttributionViews(smooth(views.original), None if views.warped is None else smooth(views.warped),
                                         views.warped_image)
    out = {"original": viz.heatmap_overlay(image, views.original)}
    if views.warped is not None:
        out["warped"] = viz.heatmap_overlay(views.warped_image, views.warped)
    return out


@st.cache_data(show_spinner=False, max_entries=128)
def attributions(ckpt: str, card_stamp: float, name: str, root: str | None, input_size: int, index: int,
                 method: str) -> dict[str, np.ndarray]:
    """:func:`attribution_images` of test image ``index`` (at the *current* checkpoint's input size)."""
    net, _ = model(ckpt, card_stamp)
    return attribution_images(net, dataset(name, root, "test", input_size)[index][0], method)


@st.cache_data(show_spinner=False, max_entries=64)
def match_gradcams(ckpt: str, card_stamp: float, name: str, root: str | None, query: int,
                   result: int) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval's "why this match?" for test images ``query`` and ``result``: Grad-CAM of each one's similarity to
    the other's embedding (:func:`frpt.explain.similarity_gradcam`), computed once: a page rerun as its gallery
    grows redraws it for free instead of taking CPU from the gallery job."""
    from .. import explain

    net, card_ = model(ckpt, card_stamp)
    ds = dataset(name, root, "test", card_["input_size"])
    q_image, r_image = ds[query][0], ds[result][0]
    with heavy.slot("Why this match"):
        with torch.no_grad():  # references under no_grad (not inference_mode): they enter the attribution's graph
            ref_q, ref_r = net.embed(q_image[None])[0], net.embed(r_image[None])[0]
        return (explain.similarity_gradcam(net, q_image, ref_r).numpy(),
                explain.similarity_gradcam(net, r_image, ref_q).numpy())


@st.cache_data(show_spinner="Scoring every test query...", max_entries=16)
def query_ap(ckpt: str, card_stamp: float, name: str, root: str | None, indices: tuple[int, ...] | None = None,
             ready: int | None = None) -> np.ndarray:
    """Per-query AP (leave-one-out cosine, full ranking) after the head of every test image, or of the rows
    holding dataset images ``indices`` among themselves (two partial galleries' common images)."""
    from ..metrics import average_precision

    g = gallery(ckpt, name, root, ready)
    if indices is not None:
        g = g.subset(np.asarray(indices))
    return average_precision(g.embeddings.after, g.embeddings.labels)


@st.cache_data(show_spinner="Finding each point's nearest neighbour...", max_entries=32)
def nn_hits(ckpt: str, card_stamp: float, name: str, root: str | None, which: str, rows: np.ndarray,
            ready: int | None = None) -> np.ndarray:
    """Whether the leave-one-out nearest neighbour (before/after the head, among all test images of the gallery)
    of each of ``rows`` (a map's points) has its class."""
    from ..metrics import nearest_neighbour_hits

    g = gallery(ckpt, name, root, ready)
    return nearest_neighbour_hits(g.embeddings.before if which == "before" else g.embeddings.after,
                                  g.embeddings.labels, rows)


@st.cache_data(show_spinner=False, max_entries=32)
def aligned_after(ckpt: str, onto: str, stamps: tuple[float, float], name: str, root: str | None,
                  max_points: int | None, ready: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    """``ckpt``'s after-head UMAP aligned (Procrustes) onto ``onto``'s, so two checkpoints' maps face the same
    way (both hold the same subsample of the same gallery). ``stamps``: both cards' :func:`stamp`."""
    from ..projection import procrustes_align

    mine, target = gallery_map(ckpt, name, root, max_points, ready[0]), gallery_map(onto, name, root, max_points,
                                                                                     ready[1])
    if not np.array_equal(mine.indices, target.indices):
        return mine.after
    return procrustes_align(mine.after, target.after)


@st.cache_data(show_spinner="Running the prompt on the sample...", max_entries=32)
def warp_records(ckpt: str, card_stamp: float, name: str, root: str | None, indices: tuple[int, ...]) -> list:
    """:func:`frpt.warp_gallery.warp_records` of test images ``indices`` (one batched pass; cached per sample)."""
    from ..warp_gallery import warp_records as compute

    net, card_ = model(ckpt, card_stamp)
    with heavy.slot("The warp gallery"):
        return compute(net, dataset(name, root, "test", card_["input_size"]), list(indices))
