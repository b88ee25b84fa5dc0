"""Retrieval: top-K test images for a query, with hits, AP, R@K and why each match matches."""
import numpy as np
import streamlit as st
import torch

from frpt import explain, viz
from frpt.evaluation import embed_images
from frpt.ui import cache, heavy, logic, pick_image, sidebar

st.set_page_config(page_title="Retrieval · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Retrieval")
st.caption("Cosine similarity of retrieval embeddings against the test split (zero-shot: its classes were never "
           "trained on). Green = same class as the query, red = another class.")

query = pick_image(ctx, "ret")
k = st.slider("Top K", 1, 24, 8, key="ret.k")
if query is None:
    st.stop()
gallery = ctx.ready_gallery()
labels = gallery.embeddings.labels
# A test image is looked up in the gallery; an upload (or an image the gallery skipped) is embedded now.
query_row = gallery.row_of(query.index) if query.index is not None else None
if query_row is not None:
    q = gallery.embeddings.after[query_row]
else:
    q = embed_images(ctx.model, query.image[None], precision=gallery.precision or "auto",
                     engine=gallery.engine)[0]  # as the gallery was
ranking = logic.rank_gallery(q, gallery.embeddings.after, labels, k, query.label, exclude=query_row,
                             norms=gallery.after_norms)

left, right = st.columns([1, 4])
with left:
    st.image(viz.to_uint8(query.image), caption=f"query: {query.name.rsplit('/', 1)[-1]}", width="stretch")
    if ranking.average_precision is not None:
        st.metric("Average precision", f"{ranking.average_precision:.3f}")
        st.write(" · ".join(f"R@{kk}: {'✓' if v else '✗'}" for kk, v in ranking.recall_at.items()))
    st.download_button("Download ranking (CSV)", logic.ranking_csv(ranking, gallery.ids, labels, gallery.classes),
                       "ranking.csv", "text/csv", key="ret.dl.csv")
with right:
    cols = st.columns(min(k, 6))
    for r, (row, score) in enumerate(zip(ranking.indices, ranking.scores)):
        thumb = cache.thumbnail(ctx.dataset, ctx.root, "test", ctx.input_size, int(gallery.indices[row]))
        if ranking.hits is not None:
            thumb = viz.frame(thumb, viz.HIT if ranking.hits[r] else viz.MISS)
        cols[r % len(cols)].image(thumb, caption=f"{r + 1}. {score:.3f} · {gallery.classes[int(labels[row])]}",
                                  width="stretch")

st.subheader("Why this match?")
if not gallery.complete and not st.toggle("Explain the match now", key="ret.explain",
                                          help="Grad-CAM takes the CPU the background gallery job is using; once the "
                                               "gallery is complete this section is drawn by itself"):
    st.caption("Two Grad-CAMs per match: off while the gallery is still being embedded, unless you ask.")
    st.stop()
# The labels themselves are the options: with positions as options and a format_func, a new query left the
# browser showing the previous query's label (the options, 0..K-1, had not changed).
results = logic.result_labels(ranking, gallery.indices)
rank = results.index(st.selectbox("Result", results, key="ret.why"))
result_index = int(gallery.indices[ranking.indices[rank]])
result_image = ctx.image(result_index)
with st.spinner("Attributing the similarity..."):
    if query.index is not None:  # two test images: computed once, shared, and free on a rerun
        on_query, on_result = (torch.from_numpy(m) for m in cache.match_gradcams(
            ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root, query.index, result_index))
    else:  # an upload
        with heavy.slot("Why this match"):
            with torch.no_grad():  # references under no_grad (not inference_mode): they enter the attribution's graph
                ref_result = ctx.model.embed(result_image[None])[0]
                ref_query = torch.tensor(np.asarray(q, np.float32))
            on_query = explain.similarity_gradcam(ctx.model, query.image, ref_result)
            on_result = explain.similarity_gradcam(ctx.model, result_image, ref_query)
a, b, _, _ = st.columns(4)
a.image(viz.heatmap_overlay(query.image, on_query), caption="query: what resembles the result", width="stretch")
b.image(viz.heatmap_overlay(result_image, on_result), caption="result: what resembles the query", width="stretch")
through = "" if ctx.model.prompt is None else f", carried back through the prompt's {logic.prompt_words(ctx.card).kind}"
st.caption(f"Grad-CAM of the cosine similarity to the other image's embedding{through}.")
