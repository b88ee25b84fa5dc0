"""Embedding space: UMAP of the test-split embeddings before and after the head, aligned, with cluster metrics."""
import io

import numpy as np
import streamlit as st

from frpt.ui import cache, download_figure, logic, sidebar

st.set_page_config(page_title="Embedding space · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Embedding space")
st.caption("UMAP (cosine) of the test split: pooled backbone features of the (warped) image before the head, and "
           "the retrieval embedding after CAH + head. The right map is aligned to the left one (orthogonal "
           "Procrustes). Select points (box or lasso) to see their images.")

gallery = ctx.gallery()
n = len(gallery.ids)
steps = [k for k in (500, 1000, 2000, 5000, 10000) if k < n] + [n]
limit = n if len(steps) == 1 else st.select_slider("Points (random subsample)", steps, value=min(n, 2000),
                                                   key="emb.points")
max_points = None if limit >= n else int(limit)
coords = cache.gallery_map(ctx.checkpoint, ctx.dataset, ctx.root, max_points)
labels = gallery.embeddings.labels

selection = st.session_state.setdefault("emb.selected", [])
cols = st.columns(2)
for col, which, title in ((cols[0], "before", "Before the head"), (cols[1], "after", "After the head")):
    with col:
        xy = coords.before if which == "before" else coords.after
        fig = logic.umap_figure(xy, coords.indices, labels, gallery.classes, gallery.ids, title, selection)
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"),
                                key=f"emb.chart.{which}", width="stretch")
        picked = logic.selected_rows(event)
        if picked and picked != selection:
            st.session_state["emb.selected"] = selection = picked
        stats = cache.embedding_stats(ctx.checkpoint, ctx.dataset, ctx.root, max_points, which)
        a, b, c = st.columns(3)
        a.metric("R@1", f"{stats['recall@1']:.3f}")
        b.metric("NMI", f"{stats['nmi']:.3f}")
        c.metric("Silhouette", f"{stats['silhouette']:.3f}")
        download_figure(fig, f"umap-{which}.html", f"emb.dl.fig.{which}")
        buf = io.BytesIO()
        emb = gallery.embeddings.before if which == "before" else gallery.embeddings.after
        np.save(buf, emb)
        st.download_button(f"Download embeddings {which} the head (npy)", buf.getvalue(), f"embeddings-{which}.npy",
                           key=f"emb.dl.npy.{which}")

if selection:
    st.subheader(f"Selected images ({len(selection)})")
    shown = selection[:12]
    grid = st.columns(6)
    for k, row in enumerate(shown):
        grid[k % 6].image(cache.thumbnail(ctx.dataset, ctx.root, "test", ctx.input_size, row),
                          caption=f"#{row} · {gallery.classes[int(labels[row])]}", width="stretch")
    if st.button("Clear selection", key="emb.clear"):
        st.session_state["emb.selected"] = []
        st.rerun()
else:
    st.caption("No points selected.")
