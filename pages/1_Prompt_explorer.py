"""Prompt explorer: one image through the DPP (paper Sec. 3.2): warp, saliency, sampling grid, magnification."""
import streamlit as st

from frpt.ui import cache, download_png, logic, pick_image, sidebar


st.set_page_config(page_title="Prompt explorer · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Prompt explorer")
words = logic.prompt_words(ctx.card)
st.caption(words.explain)

query = pick_image(ctx, "prompt")
temperature = st.slider("Magnification strength (saliency temperature; display only, the model uses 1.0)",
                        0.25, 2.0, 1.0, 0.05, key="prompt.temperature",
                        help="Below 1 sharpens the saliency softmax (stronger zoom), above 1 flattens it.")
if query is None:
    st.stop()
if query.index is not None:
    p = cache.prompt_panels(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root, query.index, temperature)
else:
    p = logic.prompt_panels(ctx.model, query.image, None, temperature)

if p.warped is None:
    st.image(p.original, caption=query.name, width=256)
    st.info(f"This checkpoint ({ctx.card.get('variant')}) has no DPP: the backbone sees the image unchanged. "
            "Load an FRPT or DPP+PT checkpoint to see the prompt.")
    st.stop()

cols = st.columns(5)
views = [("Original" + (" + ground-truth box" if query.box else ""), p.original), (words.output, p.warped),
         (words.saliency, p.saliency), ("Sampling grid", p.grid),
         (f"Local magnification (max ×{p.max_magnification:.1f})", p.magnification)]
for col, (caption, picture) in zip(cols, views):
    col.image(picture, caption=caption, width="stretch")
st.caption("Magnification: red = more samples than the identity warp (zoomed in), blue = fewer, white = unchanged.")

if p.focus is not None:
    a, b, c = st.columns(3)
    a.metric("DPP focus score", f"{p.focus:.1%}", help="share of the warped image's pixels read from inside the box")
    b.metric("Box area share (identity warp)", f"{p.area_share:.1%}")
    c.metric("Focus gain", f"×{p.focus / max(p.area_share, 1e-9):.2f}")

stem = query.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
d1, d2 = st.columns(2)
with d1:
    download_png("Download warped image (PNG)", p.warped, f"{stem}-warped.png", "prompt.dl.warped")
with d2:
    download_png("Download sampling grid (PNG)", p.grid, f"{stem}-grid.png", "prompt.dl.grid")
