"""Home page: what FRPT does, the loaded checkpoint's card, and a map of the other pages."""
import streamlit as st

from frpt.ui import background, cache, logic, sidebar

ctx = sidebar()

st.title("FRPT Studio")
st.markdown(
    "**Fine-Grained Retrieval Prompt Tuning** (Wang et al., AAAI 2023) keeps a pretrained backbone frozen and "
    "learns only a *discriminative perturbation prompt* that warps each image to magnify the parts that tell "
    "sub-categories apart, plus a *category-specific awareness head* that removes species-level appearance. "
    "The result is a retrieval embedding for unseen fine-grained classes at a fraction of the trainable parameters."
)
if logic.prompt_words(ctx.card).kind == "crop":
    st.info("This checkpoint uses the compact preset's prompt: a rigid zoom on the saliency's box instead of the "
            "published warp (see the Reproduction page and bench/RESULTS.md for why).")
st.caption("Pick a checkpoint and a dataset in the sidebar; every page follows that choice.")

st.subheader("Loaded checkpoint")
summary = logic.card_summary(ctx.card, ctx.model.parameter_report())
left, right = st.columns(2)
with left:
    st.table({"": list(summary.keys()), "value": [str(v) for v in summary.values()]})
with right:
    rows = logic.metrics_table({"value": ctx.card})
    if rows:
        st.markdown("**Test metrics recorded in the card**")
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.info("This card records no metrics; run `python -m frpt evaluate` on it.")
    if ctx.card.get("demo"):
        st.caption(f"Built-in demo checkpoint; rebuild with `{ctx.card.get('rebuild')}`.")
    st.caption(f"Folder: `{ctx.checkpoint}`")

st.subheader(f"Live on this server: the {ctx.dataset} test split")
gallery = ctx.gallery()
if gallery is None:
    st.caption("Its test gallery is being embedded in the background; figures appear here when its first images "
               "land (the sidebar shows the job).")
else:
    if not gallery.complete:
        background.partial_note(gallery, ctx.checkpoint, ctx.dataset, ctx.root)
    heads = ("after",) if logic.head_is_identity(ctx.card) else ("after", "before")
    live = cache.live_metrics(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root, gallery.done, heads)
    rows = logic.live_metrics_table(ctx.card, ctx.dataset, live, gallery.done, None if gallery.complete
                                    else gallery.total)
    st.dataframe(rows, hide_index=True, width="stretch")
    gap = logic.live_vs_card(ctx.card, ctx.dataset, live["after"], gallery.engine, gallery.precision) \
        if gallery.complete else None
    st.caption("Every test image queries all the others (cosine); recall@K and MAP@R, as the card records them."
               + ("" if gallery.complete else " A partial gallery's images retrieve among themselves only (fewer "
                  "images of each class): its figures say how the checkpoint does on those images, not its score.")
               + (f" {gap}" if gap else ""))

st.subheader("Pages")
explore, retrieve, results = st.columns(3)
with explore:
    st.markdown("**Explore**")
    st.page_link("pages/1_Prompt_explorer.py", label="Prompt explorer: the prompt, step by step")
    st.page_link("pages/6_Warp_gallery.py", label="Warp gallery: the prompt on many images")
    st.page_link("pages/2_Attributions.py", label="Attributions: Grad-CAM, IG, the Fig. 4 view")
    st.page_link("pages/3_Embedding_space.py", label="Embedding space: UMAP before / after the head")
with retrieve:
    st.markdown("**Retrieve**")
    st.page_link("pages/4_Retrieval.py", label="Retrieval: top-K and why they match")
    st.page_link("pages/7_AB_retrieval.py", label="A/B retrieval: two checkpoints, one query")
with results:
    st.markdown("**Results**")
    st.page_link("pages/5_Checkpoints.py", label="Checkpoints: cards, curves, comparison")
    st.page_link("pages/8_Reproduction.py", label="Reproduction: ours beside the paper's tables")
