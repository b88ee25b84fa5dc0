"""Attributions: what drives the embedding, on the original and on the warped image; Fig. 4-style comparison."""
import streamlit as st

from frpt.errors import FRPTError
from frpt.ui import cache, comparison_checkpoints, download_png, paths_allowed, pick_image, sidebar

st.set_page_config(page_title="Attributions · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Attributions")
st.caption("Grad-CAM on the backbone's last stage and Integrated Gradients (captum) of the embedding's norm: for a "
           "GAP head this is the class-activation map of the embedding. The backbone sees the *warped* image; its "
           "map is carried back to the original through the DPP's sampling grid.")

query = pick_image(ctx, "attr")
if query is None:
    st.stop()


def views(ckpt: str, method: str) -> dict:
    """Cached for test images, live for uploads."""
    if query.index is not None:
        return cache.attributions(ckpt, cache.stamp(ckpt), ctx.dataset, ctx.root, ctx.input_size, query.index, method)
    return cache.attribution_images(cache.model(ckpt, cache.stamp(ckpt))[0], query.image, method)


def show(result: dict, label: str, key: str) -> None:
    cols = st.columns(4)
    cols[0].image(result["original"], caption=f"{label} on the original image", width="stretch")
    if "warped" in result:
        cols[1].image(result["warped"], caption=f"{label} on the warped image (what the backbone sees)", width="stretch")
    else:
        cols[1].info("No DPP in this checkpoint: the backbone sees the original image.")
    download_png(f"Download {label} (PNG)", result["original"], f"{key}.png", f"attr.dl.{key}")


st.subheader("Grad-CAM")
with st.spinner("Grad-CAM..."):
    show(views(ctx.checkpoint, "gradcam"), "Grad-CAM", "gradcam")

st.subheader("Integrated Gradients")
ig_key = ("attr.ig", ctx.checkpoint, ctx.dataset, query.index if query.index is not None else query.name)
if st.button("Compute Integrated Gradients (16 steps, a few seconds)", key="attr.ig.run"):
    with st.spinner("Integrated Gradients..."):
        st.session_state["attr.ig"] = (ig_key, views(ctx.checkpoint, "ig"))
stored = st.session_state.get("attr.ig")
if stored and stored[0] == ig_key:
    show(stored[1], "Integrated Gradients", "ig")

st.subheader("Frozen backbone vs FRPT without CAH vs FRPT (paper Fig. 4)")
demos = comparison_checkpoints()
options = {"current checkpoint": ctx.checkpoint, **demos}
picked = st.multiselect("Checkpoints to compare", list(options), default=list(options)[:4], key="attr.compare",
                        help="the demo rows: pt = frozen backbone, no-cah = DPP + PT, frpt = full model")
extra = st.text_input("Another checkpoint folder (optional)", key="attr.extra").strip() if paths_allowed() else ""
paths = [(name, options[name]) for name in picked] + ([(extra, extra)] if extra else [])
if paths:
    cols = st.columns(max(len(paths) + 1, 4))
    cols[0].image(query.image.permute(1, 2, 0).numpy(), caption="image", width="stretch")
    for col, (name, path) in zip(cols[1:], paths):
        try:
            card = cache.card(path, cache.stamp(path))
            if card["input_size"] != ctx.input_size:
                col.warning(f"{name}: input size {card['input_size']} differs from {ctx.input_size}.")
                continue
            result = cache.attribution_images(cache.model(path, cache.stamp(path))[0], query.image, "gradcam") \
                if query.index is None else cache.attributions(path, cache.stamp(path), ctx.dataset, ctx.root,
                                                                ctx.input_size, query.index, "gradcam")
        except FRPTError as exc:
            col.error(str(exc))
            continue
        col.image(result["original"], caption=f"{name} ({card.get('variant')})", width="stretch")
