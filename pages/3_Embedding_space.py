"""Embedding space: UMAP of the test-split embeddings before and after the head (or two checkpoints after their
heads), aligned, with cluster metrics, a class picker, nearest-neighbour colouring and selected thumbnails."""

import streamlit as st

from frpt.compare import split_mismatch
from frpt.errors import FRPTError
from frpt.projection import DEFAULT_MAP_POINTS
from frpt.ui import cache, download_figure, download_npy, logic, persistent, sidebar, widget_args
from frpt.ui.pickers import baseline_default, checkpoint_choices, display_name, pick_checkpoint

st.set_page_config(page_title="Embedding space · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Embedding space")
st.caption("UMAP (cosine) of the test split: pooled backbone features of the (warped) image before the head, and "
           "the retrieval embedding after CAH + head; or two checkpoints' embeddings after their heads. The right "
           "map is aligned to the left one (orthogonal Procrustes). Hover a point for its class, index and id; "
           "hover labels cannot show pictures, so click a point (or draw a box or lasso from the map's toolbar) to "
           "see its image beside the maps.")

gallery = ctx.ready_gallery(maps=True)  # the whole split, or what is embedded so far (a note says so)
ready = None if gallery.complete else gallery.done  # every figure below is of this one snapshot
if st.session_state.get("emb.snapshot") != (ctx.checkpoint, ready):  # selected rows were of another snapshot
    st.session_state["emb.snapshot"], st.session_state["emb.selected"] = (ctx.checkpoint, ready), []
n, labels = len(gallery.ids), gallery.embeddings.labels
BEFORE_AFTER, CHECKPOINTS = "Before / after the head", "Against another checkpoint"
mode_col, points_col, colour_col = st.columns([2, 3, 2])
same_map = logic.head_is_identity(ctx.card)  # before and after the head would be one map
with mode_col:
    mode = persistent("emb.mode", CHECKPOINTS if same_map else BEFORE_AFTER)
    st.radio("Maps", [BEFORE_AFTER, CHECKPOINTS], **widget_args("emb.mode"))
with points_col:
    steps = [k for k in (500, 1000, DEFAULT_MAP_POINTS, 5000, 10000) if k < n] + [n]
    if st.session_state.get("emb.points") not in steps:  # a partial gallery grew: its old size is no option
        st.session_state.pop("emb.points", None)
    limit = n if len(steps) == 1 else st.select_slider("Points (random subsample)", steps, value=min(n, DEFAULT_MAP_POINTS),
                                                       key="emb.points")
with colour_col:
    colouring = persistent("emb.colour", "Class")
    st.radio("Colour by", ["Class", "Nearest neighbour hit"], **widget_args("emb.colour"),
             help="nearest neighbour among all test images (cosine, the point itself left out) in that map's "
                  "embedding: green when it has the point's class. Their share is the R@1 of the split.")
focus = persistent("emb.focus", [])
if any(c not in gallery.classes for c in focus):  # picked on another dataset
    focus = st.session_state["frpt.emb.focus"] = st.session_state["w.emb.focus"] = \
        [c for c in focus if c in gallery.classes]
st.multiselect("Highlight classes (the rest turn grey)", gallery.classes, **widget_args("emb.focus"),
               placeholder=f"all {len(gallery.classes):,} classes")
max_points = None if limit >= n else int(limit)
if same_map and mode == BEFORE_AFTER:
    st.info("This checkpoint's head leaves the embedding as it is (no trained head), so both maps are the same; "
            "compare against another checkpoint (for example PT) to see what its prompt does.")

# Panels: (key, title, checkpoint, which embedding, 2-D coordinates).
coords = cache.gallery_map(ctx.checkpoint, ctx.dataset, ctx.root, max_points, ready)
here = display_name(ctx, ctx.checkpoint)
panels = [("before", f"{here}: before the head", ctx.checkpoint, "before", coords.before, ready),
          ("after", f"{here}: after the head", ctx.checkpoint, "after", coords.after, ready)]
if mode == CHECKPOINTS:
    choices = checkpoint_choices(ctx)
    with st.columns([1, 2])[0]:
        other = pick_checkpoint(ctx, "Compare with", "emb.other", baseline_default(ctx, choices, ctx.checkpoint))
    if other is None:
        st.stop()
    try:
        # the other checkpoint's snapshot of the same images (both galleries embed in one stratified order)
        other_gallery = cache.gallery(other, ctx.dataset, ctx.root, ready)
        if other_gallery is None or other_gallery.done < gallery.done:
            st.info(f"{display_name(ctx, other)}'s gallery has fewer of these {gallery.done:,} images embedded so "
                    "far; the comparison appears when it catches up (it is being embedded in the background).")
            st.stop()
        cache.gallery_map(other, ctx.dataset, ctx.root, max_points, ready)
    except FRPTError as exc:
        st.error(str(exc))
        st.stop()
    mismatch = split_mismatch(gallery.ids, other_gallery.ids)
    if mismatch:
        st.error(mismatch)
        st.stop()
    other_xy = cache.aligned_after(other, ctx.checkpoint, (cache.stamp(other), cache.stamp(ctx.checkpoint)),
                                   ctx.dataset, ctx.root, max_points, (ready, ready))
    panels = [("other", f"{display_name(ctx, other)}: after the head", other, "after", other_xy, ready), panels[1]]

colors = logic.class_colors(gallery.classes)  # one mapping for both maps
selection = [r for r in st.session_state.setdefault("emb.selected", []) if r < n]  # rows of another dataset
for key, *_ in panels:  # read both charts' selections before drawing, so both maps ring the same points
    picked = logic.selected_rows(st.session_state.get(f"emb.chart.{key}"))
    # Each chart keeps its own last selection: only a *new* one on a chart replaces the shared selection.
    if picked != st.session_state.get(f"emb.seen.{key}", []):
        st.session_state[f"emb.seen.{key}"] = picked
        if picked:
            st.session_state["emb.selected"] = selection = picked
map_cols = st.columns([4, 4, 2])
for col, (key, title, ckpt, which, xy, snapshot) in zip(map_cols, panels):
    with col:
        hits = cache.nn_hits(ckpt, cache.stamp(ckpt), ctx.dataset, ctx.root, which, coords.indices, snapshot) \
            if colouring != "Class" else None
        fig = logic.umap_figure(xy, coords.indices, labels, gallery.classes, gallery.ids, title, selection,
                                colors=colors, focus=focus, nn_hits=hits, indices=gallery.indices)
        st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key=f"emb.chart.{key}",
                        width="stretch")
        stats = cache.embedding_stats(ckpt, ctx.dataset, ctx.root, max_points, which, snapshot)
        a, b, c = st.columns(3)
        a.metric("R@1", f"{stats['recall@1']:.3f}")
        b.metric("NMI", f"{stats['nmi']:.3f}")
        c.metric("Silhouette", f"{stats['silhouette']:.3f}")
        download_figure(fig, f"umap-{key}.html", f"emb.dl.fig.{key}")
        emb = cache.gallery(ckpt, ctx.dataset, ctx.root, snapshot).embeddings
        download_npy(emb.before if which == "before" else emb.after, f"Download embeddings {which} the head (npy)",
                     f"embeddings-{key}-{which}.npy", f"emb.dl.npy.{key}")

with map_cols[2]:
    st.markdown(f"**Selected ({len(selection)})**")
    if not selection:
        st.caption("Click a point, or draw a box or lasso, to see its image here.")
    shown = selection[:12]
    grid = st.columns(1 if len(shown) <= 2 else 2)
    for k, row in enumerate(shown):
        index = int(gallery.indices[row])  # the test image of this gallery row
        grid[k % len(grid)].image(cache.thumbnail(ctx.dataset, ctx.root, "test", ctx.input_size, index),
                                  caption=f"#{index} · {gallery.classes[int(labels[row])]}", width="stretch")
    if len(selection) > len(shown):
        st.caption(f"first {len(shown)} of {len(selection)} shown")
    if selection and st.button("Clear selection", key="emb.clear"):
        st.session_state["emb.selected"] = []
        st.rerun()
if max_points is not None:
    st.caption(f"Metrics are over the {max_points:,} points shown; nearest-neighbour colours use all {n:,} test images.")
