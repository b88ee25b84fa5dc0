"""Prompt explorer: one image through the DPP (paper Sec. 3.2), and what retrieval does when the prompt is edited;
over the test split, the prompt's strength swept and the classes it helps and hurts most."""
import streamlit as st

from frpt import sweep, viz
from frpt import warp_gallery as wg
from frpt.ui import background, cache, download_png, logic, pick_image, sidebar
from frpt.ui.prompt_edit import action_button, change_text, prompt_editor, prompt_views, query_vectors, show_query
from frpt.whatif import what_if

st.set_page_config(page_title="Prompt explorer · FRPT Studio", layout="wide")
ctx = sidebar()
st.title("Prompt explorer")
words = logic.prompt_words(ctx.card)
st.caption(words.explain)

query = pick_image(ctx, "prompt")
if query is None:
    st.stop()
if ctx.model.prompt is None:
    st.image(viz.to_uint8(query.image), caption=query.name, width=256)
    st.info(f"This checkpoint ({ctx.card.get('variant')}) has no DPP: the backbone sees the image unchanged. "
            "Load an FRPT or DPP+PT checkpoint to see the prompt.")
    st.stop()

st.subheader("What if the prompt were different?")
st.caption("Edit the learned prompt; the model embeds the query with the edited prompt and ranks the stored test "
           "gallery (embedded with the learned prompt). Green frame = same class as the query, red = another class. "
           "AP is over the full ranking (the query itself left out).")
edit, k = prompt_editor(words.kind)
learned_view, edited_view = prompt_views(ctx, query, None), prompt_views(ctx, query, edit)
gallery = ctx.gallery()  # what is embedded so far; its background job starts with the checkpoint's choice
if gallery is None:
    background.waiting_note(ctx.checkpoint, ctx.dataset, ctx.root)
elif not gallery.complete:
    background.partial_note(gallery, ctx.checkpoint, ctx.dataset, ctx.root)
rows = ()
if gallery is not None:
    labels = gallery.embeddings.labels
    row = gallery.row_of(query.index) if query.index is not None else None
    result = what_if(query_vectors(ctx, query, gallery, edit), edit, gallery.embeddings.after, labels, k,
                     label=query.label, exclude=row, norms=gallery.after_norms)
    rows = (("Learned prompt", result.learned, learned_view.warped, None),
            (f"Edited prompt: {edit.describe()}", result.edited, edited_view.warped, result),
            ("No prompt (identity)", result.identity, learned_view.original, None))
for title, outcome, picture, changes in rows:
    st.markdown(f"**{title}**")
    pic, numbers, strip = st.columns([1.1, 1.3, 7])
    pic.image(picture, width="stretch")
    with numbers:
        if outcome.average_precision is None:
            st.caption("An uploaded image has no class: no hits, AP or first hit." if query.label is None else
                       "No other test image has this class: no hit to rank.")
        else:
            st.metric("AP", f"{outcome.average_precision:.3f}",
                      None if changes is None else change_text(changes.ap_change("learned"), ".3f"))
            st.metric("First hit at rank", outcome.first_hit,
                      None if changes is None else change_text(changes.rank_change("learned"), "d"),
                      delta_color="inverse")
            if changes is not None:
                ap_none, rank_none = changes.ap_change("identity"), changes.rank_change("identity")
                st.caption(f"Against no prompt: AP {ap_none:+.3f}"
                           + (f", first hit {rank_none:+d} ranks" if rank_none is not None else ""))
    with strip:
        cols = st.columns(k)
        for r, (g_row, score) in enumerate(zip(outcome.rows, outcome.scores)):
            thumb = cache.thumbnail(ctx.dataset, ctx.root, "test", ctx.input_size, int(gallery.indices[g_row]))
            if outcome.hits is not None:
                thumb = viz.frame(thumb, viz.HIT if outcome.hits[r] else viz.MISS)
            cols[r].image(thumb, caption=f"{r + 1}. #{int(gallery.indices[g_row])} · {score:.3f}", width="stretch")

st.subheader("The edited prompt in detail")
p = edited_view
views = [("Original" + (" + ground-truth box" if query.box else ""), p.original), (words.output, p.warped),
         (words.saliency, p.saliency), ("Sampling grid", p.grid),
         (f"Local magnification (max ×{p.max_magnification:.1f})", p.magnification)]
for col, (caption, picture) in zip(st.columns(5), views):
    col.image(picture, caption=caption, width="stretch")
st.caption("Magnification: red = more samples than the identity warp (zoomed in), blue = fewer, white = unchanged.")
if p.focus is not None:
    a, b, c = st.columns(3)
    a.metric("DPP focus score", f"{p.focus:.1%}", f"{p.focus - learned_view.focus:+.1%} vs learned",
             help="share of the warped image's pixels read from inside the box")
    b.metric("Box area share (identity warp)", f"{p.area_share:.1%}")
    c.metric("Focus gain", f"×{p.focus / max(p.area_share, 1e-9):.2f}")
stem = query.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
d1, d2 = st.columns(2)
with d1:
    download_png("Download warped image (PNG)", p.warped, f"{stem}-warped.png", "prompt.dl.warped")
with d2:
    download_png("Download sampling grid (PNG)", p.grid, f"{stem}-grid.png", "prompt.dl.grid")

st.subheader("Over the test split: the prompt's strength")
curve = cache.prompt_sweep(ctx.checkpoint, ctx.dataset, ctx.root)
sweeping = cache.sweep_job(ctx.checkpoint, ctx.dataset, ctx.root)
if curve is None and sweeping is not None and sweeping.active:
    background.job_note(sweeping, "The sweep runs in the background; its curve appears here when it is done.")
elif curve is None:
    if sweeping is not None and sweeping.state == "failed":
        st.error(f"The sweep failed: {sweeping.error}")
    st.info("The sweep is not stored yet: it embeds every test image under each prompt setting (minutes on a CPU "
            f"for a large split). Before a demo: `{logic.sweep_command(ctx.checkpoint, ctx.dataset, ctx.root)}`.")
    if action_button("Compute the sweep now", "prompt.sweep.compute", icon=":material/play_arrow:"):
        cache.compute_prompt_sweep(ctx.checkpoint, ctx.dataset, ctx.root)  # a bar, or a background job
        st.rerun()
if curve is not None:
    figures = logic.sweep_figures(curve)
    for col, fig in zip(st.columns(len(figures)), figures.values()):
        col.plotly_chart(fig, width="stretch", config={"displaylogo": False})
    learned, identity = curve.get("learned").metrics, curve.get("identity").metrics
    st.caption(f"Leave-one-out retrieval of all {len(curve.labels):,} test images under each setting (the whole split "
               f"re-embedded, {curve.precision}). Learned: R@1 {learned['recall@1']:.3f}, MAP@R {learned['map@r']:.3f}; "
               f"no prompt: R@1 {identity['recall@1']:.3f}, MAP@R {identity['map@r']:.3f}.")

    st.subheader("Where the prompt helps and hurts")
    st.caption("Test classes whose R@1 the learned prompt raises or lowers most against no prompt, each with one of "
               "its queries whose nearest neighbour the prompt changed: the image with its "
               f"{'crop box' if words.kind == 'crop' else 'sampling grid'} beside what the backbone sees.")
    helps, hurts = sweep.class_effects(curve, n=4)
    examples = tuple(e.example for e in helps + hurts if e.example is not None)
    records = {r.index: r for r in cache.warp_records(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset,
                                                      ctx.root, examples)} if examples else {}
    ds = ctx.test_set()

    def name(index: int) -> str:
        return ds.classes[int(curve.labels[index])]

    for col, title, effects in zip(st.columns(2), ("The prompt helps most", "The prompt hurts most"), (helps, hurts)):
        with col:
            st.markdown(f"**{title}**")
            if not effects:
                st.caption("no class")
            for e in effects:
                st.markdown(f"{ds.classes[e.label]} · R@1 {e.r1_identity:.2f} → {e.r1_learned:.2f} "
                            f"({e.change:+.2f}, {e.queries} queries)")
                if e.example is None:
                    continue
                pair, note = st.columns([2, 1])
                pair.image(wg.pair_image(records[e.example]), width="stretch")
                note.caption(f"#{e.example}: nearest neighbour without the prompt #{e.neighbour_identity} "
                             f"({name(e.neighbour_identity)}), with it #{e.neighbour_learned} "
                             f"({name(e.neighbour_learned)})")
                note.button(f"Open #{e.example}", key=f"prompt.go.{title}.{e.example}", on_click=show_query,
                            args=(e.example,))
