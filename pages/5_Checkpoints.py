"""Checkpoints: the card, learned vs frozen parameters, training curves, and a side-by-side comparison."""
import streamlit as st

from frpt.errors import FRPTError
from frpt.gallery import gallery_file
from frpt.training import read_log
from frpt.ui import cache, comparison_checkpoints, logic, paths_allowed, sidebar

st.set_page_config(page_title="Checkpoints · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Checkpoints")

report = ctx.model.parameter_report()
left, right = st.columns(2)
with left:
    st.subheader("Card")
    summary = logic.card_summary(ctx.card, report)
    st.table({"": list(summary.keys()), "value": [str(v) for v in summary.values()]})
    test_set = ctx.test_set()
    st.caption(logic.gallery_status(gallery_file(ctx.card, test_set, ctx.root).is_file(), len(test_set),
                                    ctx.checkpoint, ctx.dataset, ctx.root))
with right:
    st.subheader("Learned vs frozen parameters")
    st.dataframe([{"module": m, **c} for m, c in report.items()], hide_index=True, width="stretch")
    st.download_button("Download card (JSON)", open(f"{ctx.checkpoint}/card.json", "rb").read(), "card.json",
                       key="ckpt.dl.card")

st.subheader("Training curves")
rows = read_log(ctx.checkpoint)
compact = logic.compact_figures(ctx.card)
if rows:
    st.plotly_chart(logic.log_figure(rows), key="ckpt.log", width="stretch")
elif compact:
    st.caption("Trained with the compact recipe on cached features: its record on held-out training classes, "
               "from the card (the test split was never used to choose).")
    for col, (name, fig) in zip(st.columns(len(compact)), compact.items()):
        with col:
            st.plotly_chart(fig, key=f"ckpt.compact.{name}", width="stretch")
else:
    st.info("No log.csv in this checkpoint folder (it was not trained here, or nothing was trained).")

st.subheader("Compare with another checkpoint")
demos = comparison_checkpoints()
choice = st.selectbox("Other checkpoint", [*demos, "folder..."] if paths_allowed() else list(demos), key="ckpt.other")
other = st.text_input("Folder", key="ckpt.other.folder").strip() if choice == "folder..." else demos.get(choice)
if not other:
    st.stop()
try:
    other_card = cache.card(other, cache.stamp(other))
except FRPTError as exc:
    st.error(str(exc))
    st.stop()
st.dataframe(logic.metrics_table({"current": ctx.card, choice: other_card}), hide_index=True, width="stretch")
if st.toggle("Show both UMAPs (after the head) on the current dataset", key="ckpt.umaps"):
    cols = st.columns(2)
    for col, (name, path) in zip(cols, (("current", ctx.checkpoint), (choice, other))):
        with col:
            try:
                g = cache.gallery(path, ctx.dataset, ctx.root)
                if g is None:
                    st.info("Its test gallery is being embedded in the background; the map appears once it has rows.")
                    continue
                ready = None if g.complete else g.done
                m = cache.gallery_map(path, ctx.dataset, ctx.root, min(len(g.ids), 2000) if len(g.ids) > 2000 else None,
                                      ready)
                if ready is not None:
                    st.caption(f"{g.done:,} of {g.total:,} test images embedded so far: a map of those.")
            except FRPTError as exc:
                st.error(str(exc))
                continue
            fig = logic.umap_figure(m.after, m.indices, g.embeddings.labels, g.classes, g.ids, name, indices=g.indices)
            st.plotly_chart(fig, key=f"ckpt.umap.{name}", width="stretch")
