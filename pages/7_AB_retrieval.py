"""A/B retrieval: the same query under two checkpoints side by side, and the queries B helps and hurts most."""
import numpy as np
import streamlit as st

from frpt import compare, viz
from frpt.evaluation import embed_images
from frpt.errors import FRPTError
from frpt.ui import background, cache, pick_image, sidebar
from frpt.ui.pickers import baseline_default, checkpoint_choices, display_name, pick_checkpoint
from frpt.ui.widgets import ALL

st.set_page_config(page_title="A/B retrieval · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("A/B retrieval")
st.caption("The same test query under two checkpoints (leave-one-out cosine retrieval after the head, on the "
           "sidebar's dataset). Green frame = same class as the query, red = another class; :blue-badge[new] marks a "
           "result that entered B's top K, :orange-badge[dropped] one that left A's. AP is over the full ranking.")

choices = checkpoint_choices(ctx)
pick_a, pick_b = st.columns(2)
with pick_b:
    b_path = pick_checkpoint(ctx, "B", "ab.b", display_name(ctx, ctx.checkpoint))
with pick_a:
    a_path = pick_checkpoint(ctx, "A (baseline)", "ab.a", baseline_default(ctx, choices, b_path or ctx.checkpoint))
if a_path is None or b_path is None:
    st.stop()
name_a, name_b = display_name(ctx, a_path), display_name(ctx, b_path)
try:
    ga, gb = cache.gallery(a_path, ctx.dataset, ctx.root), cache.gallery(b_path, ctx.dataset, ctx.root)
    if ga is None or gb is None:
        background.waiting_note(a_path if ga is None else b_path, ctx.dataset, ctx.root)
        st.stop()
    # Both galleries embed in one stratified order: the images both hold are the smaller one's snapshot.
    ready = None if ga.complete and gb.complete else min(ga.done, gb.done)
    if ready is not None:
        behind = a_path if ga.done == ready and not ga.complete else b_path
        ga, gb = cache.gallery(a_path, ctx.dataset, ctx.root, ready), cache.gallery(b_path, ctx.dataset, ctx.root, ready)
        background.partial_note(ga, behind, ctx.dataset, ctx.root)
except FRPTError as exc:
    st.error(str(exc))
    st.stop()
mismatch = compare.split_mismatch(ga.ids, gb.ids)
if mismatch:
    st.error(mismatch)
    st.stop()
labels = ga.embeddings.labels
split = compare.SplitComparison(cache.query_ap(a_path, cache.stamp(a_path), ctx.dataset, ctx.root, ready=ready),
                                cache.query_ap(b_path, cache.stamp(b_path), ctx.dataset, ctx.root, ready=ready))
mean_a, mean_b = split.mean_ap
delta = split.delta
m1, m2, m3, m4 = st.columns(4)
m1.metric(f"mAP A ({name_a})", f"{mean_a:.3f}")
m2.metric(f"mAP B ({name_b})", f"{mean_b:.3f}", f"{mean_b - mean_a:+.3f}")
m3.metric("Queries B helps", int(np.sum(delta > 0)))
m4.metric("Queries B hurts", int(np.sum(delta < 0)))


def _go_to(index: int) -> None:
    """Make test image ``index`` the query (a button callback runs before the query picker is drawn)."""
    st.session_state["frpt.ab.class"] = ALL
    st.session_state["frpt.ab.index"] = index


query = pick_image(ctx, "ab", allow_upload=False)
k = st.slider("Top K", 1, 12, 8, key="ab.k")
query_row = ga.row_of(query.index)  # both galleries hold the same images in the same rows (split_mismatch)
if query_row is None and ga.complete:
    st.warning("This image could not be read when the galleries were embedded, so it has no ranking; pick another.")
    st.stop()
if query_row is None:  # not embedded by both yet: embedded now under each checkpoint, as its gallery was
    qa, qb = (embed_images(cache.model(path, cache.stamp(path))[0], query.image[None], precision=g.precision or "auto",
                           engine=g.engine)[0] for path, g in ((a_path, ga), (b_path, gb)))
    view = compare.side_by_side_embedded(qa, qb, ga.embeddings.after, gb.embeddings.after, labels, query.label, k)
else:
    view = compare.side_by_side(ga.embeddings.after, gb.embeddings.after, labels, query_row, k, split.ap_a,
                                split.ap_b)

left, right = st.columns([1, 5])
with left:
    st.image(viz.to_uint8(query.image), caption=f"query #{query.index} · {ga.classes[int(query.label)]}",
             width="stretch")
    st.metric("AP under B", f"{view.ap_b:.3f}", f"{view.ap_delta:+.3f} against A")
    st.caption(f"AP under A: {view.ap_a:.3f}")
with right:
    for tag, name, top, changed, mark in (("A", name_a, view.a, view.left, ":orange-badge[dropped]"),
                                          ("B", name_b, view.b, view.entered, ":blue-badge[new]")):
        st.markdown(f"**{tag}: {name}** · {int(top.hits.sum())}/{len(top.rows)} hits in the top {k}")
        cols = st.columns(k)
        for r, (row, score, hit) in enumerate(zip(top.rows, top.scores, top.hits)):
            index = int(ga.indices[row])
            thumb = viz.frame(cache.thumbnail(ctx.dataset, ctx.root, "test", ctx.input_size, index),
                              viz.HIT if hit else viz.MISS)
            note = f" {mark}" if int(row) in changed else ""
            cols[r].image(thumb, width="stretch")
            cols[r].caption(f"{r + 1}. #{index} · {score:.3f}{note}")

st.subheader("Where B differs most from A")
st.caption("Per-query AP difference (B minus A) over every test query; click one to make it the query above.")
helps_col, hurts_col = st.columns(2)
for col, title, rows in ((helps_col, "B helps most", split.helps(6)), (hurts_col, "B hurts most", split.hurts(6))):
    with col:
        st.markdown(f"**{title}**")
        if not len(rows):
            st.caption("none")
        for row in rows:
            row, index = int(row), int(ga.indices[row])
            st.button(f"#{index} · {ga.classes[int(labels[row])]} · AP {split.ap_a[row]:.2f} → {split.ap_b[row]:.2f} "
                      f"({delta[row]:+.2f})", key=f"ab.go.{title}.{index}", on_click=_go_to, args=(index,),
                      width="stretch")
