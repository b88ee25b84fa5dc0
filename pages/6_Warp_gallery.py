"""Warp gallery: a sample of test images beside their warped (or cropped) versions, the sampling grid drawn on each
original, sortable by focus score or zoom (paper Fig. 3 for many images at once)."""
import numpy as np
import streamlit as st

from frpt import warp_gallery as wg
from frpt.ui import cache, download_png, persistent, sidebar, widget_args

RANDOM, CLASSES = "Random sample", "Chosen classes"
PER_ROW = 4

st.set_page_config(page_title="Warp gallery · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Warp gallery")
crop = (ctx.card.get("model") or {}).get("prompt") == "crop"
st.caption("Fig. 3 of the paper shows originals beside their DPP-warped images, with grid lines drawn by hand. Here "
           "a sample of the test split goes through the prompt at once; each original carries its real sampling "
           "grid: where the warped image's evenly spaced rows and columns read it, so dense lines are magnified."
           + (" This checkpoint's prompt is a rigid crop: its grid is the crop rectangle." if crop else ""))

if ctx.model.prompt is None:
    st.info(f"This checkpoint ({ctx.card.get('variant')}) has no prompt: its backbone sees every image unchanged, so "
            "there is no warp to show; load an FRPT or DPP+PT checkpoint.")
    st.stop()

ds = ctx.test_set()
size_col, mode_col, pick_col, sort_col = st.columns([2, 2, 3, 2], vertical_alignment="bottom")
with size_col:
    persistent("gallery.n", 16)
    n = st.slider("Images", 8, 48, step=4, **widget_args("gallery.n"))
with mode_col:
    mode = persistent("gallery.mode", RANDOM)
    st.radio("Sample", [RANDOM, CLASSES], horizontal=True, **widget_args("gallery.mode"))
with pick_col:
    if mode == RANDOM:
        persistent("gallery.seed", 0)
        seed = st.number_input("Seed (the same seed shows the same images)", 0, 10**6, step=1,
                               **widget_args("gallery.seed"))
        indices = wg.pick_indices(ds, n, seed=int(seed))
    else:
        chosen = [c for c in persistent("gallery.classes", ds.classes[:2]) if c in ds.classes] or ds.classes[:2]
        st.session_state["frpt.gallery.classes"] = st.session_state["w.gallery.classes"] = chosen
        picked = st.multiselect("Classes (their first images, in turn)", ds.classes, **widget_args("gallery.classes"))
        indices = wg.pick_indices(ds, n, classes=picked)
if not indices:
    st.info("Choose at least one class.")
    st.stop()

records = cache.warp_records(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root, tuple(indices))
has_focus = any(r.focus is not None for r in records)
keys = [k for k in wg.SORT_KEYS if has_focus or k != "focus score"]
with sort_col:
    key = persistent("gallery.sort", keys[0])
    if key not in keys:
        key = st.session_state["frpt.gallery.sort"] = st.session_state["w.gallery.sort"] = keys[0]
    st.selectbox("Sort by", keys, **widget_args("gallery.sort"),
                 help="focus score: share of the warped pixels read from inside the ground-truth box; zoom: local "
                      "area magnification of the warp (1 = unchanged), its peak and its mean over the warped image")
records = wg.sort_records(records, key)

a, b, c = st.columns(3)
if has_focus:
    scored = [r for r in records if r.focus is not None]
    a.metric("Mean focus score", f"{np.mean([r.focus for r in scored]):.1%}",
             help="share of the warped image's pixels read from inside the ground-truth box")
    b.metric("Mean box share (identity warp)", f"{np.mean([r.area_share for r in scored]):.1%}")
c.metric("Median peak zoom", f"×{np.median([r.peak_zoom for r in records]):.1f}")

for start in range(0, len(records), PER_ROW):
    for col, record in zip(st.columns(PER_ROW), records[start:start + PER_ROW]):
        col.image(wg.pair_image(record), caption=wg.caption(record), width="stretch")
st.caption("Left: the test image" + (" with its ground-truth box (green)" if has_focus else "") + " and the sampling "
           "grid (yellow). Right: what the frozen backbone sees.")

download_png("Download the gallery (PNG)", lambda: wg.gallery_image(records, PER_ROW),
             f"warp-gallery-{ctx.dataset}-{key.replace(' ', '-')}.png", "gallery.dl")
