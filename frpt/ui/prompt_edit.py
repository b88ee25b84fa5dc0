"""The Prompt explorer's what-if: controls that edit the learned prompt (strength; the crop's box or the warp's
focus point), one click back to the learned prompt, and the query's embeddings under the learned prompt, the edit
and no prompt (:mod:`frpt.whatif` computes; this module only keeps the choices and caches)."""
from __future__ import annotations

from dataclasses import astuple

import numpy as np
import streamlit as st

from ..gallery import Gallery
from ..models import PromptEdit
from ..whatif import IDENTITY, embed_edited
from . import cache
from .state import Context, persistent, widget_args
from .widgets import ALL, Query

TEMPERATURES = (0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 8.0)
SCALES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
LEARNED = PromptEdit()
DEFAULTS = {"prompt.temperature": LEARNED.temperature, "prompt.scale": LEARNED.scale, "prompt.shift_x": 0.0,
            "prompt.shift_y": 0.0, "prompt.focus_on": False, "prompt.focus_x": 0.5, "prompt.focus_y": 0.5,
            "prompt.focus_width": LEARNED.focus_width}


def reset_prompt() -> None:
    """Every control back to the learned prompt (a button callback: it runs before the controls are drawn)."""
    for key, value in DEFAULTS.items():
        st.session_state[f"frpt.{key}"] = st.session_state[f"w.{key}"] = value


def show_query(index: int) -> None:
    """Make test image ``index`` the page's query (a button callback)."""
    st.session_state["frpt.prompt.class"] = ALL
    st.session_state["frpt.prompt.index"] = index


def prompt_editor(kind: str) -> tuple[PromptEdit, int]:
    """Draw the edit controls for a "crop" or "warp" prompt; returns the edit they describe and the top K."""
    values = {key: persistent(key, default) for key, default in DEFAULTS.items()}
    strength, *rest = st.columns([3, 2, 2, 2] if kind == "crop" else [3, 2, 2, 2, 2], vertical_alignment="bottom")
    with strength:
        st.select_slider("Strength: saliency temperature (1 = learned)", TEMPERATURES,
                         help="The temperature the model uses: below 1 the saliency is sharper (a stronger, tighter "
                              "zoom), above 1 flatter, towards no prompt at all.", **widget_args("prompt.temperature"))
    if kind == "crop":
        with rest[0]:
            st.select_slider("Box size (× the learned box)", SCALES, **widget_args("prompt.scale"),
                             help="Below 1 the crop zooms further in; the box always stays inside the image.")
        with rest[1]:
            st.slider("Move the box right", -0.5, 0.5, step=0.05, **widget_args("prompt.shift_x"),
                      help="shift of the box centre, as a share of the image side (negative: left)")
        with rest[2]:
            st.slider("Move the box down", -0.5, 0.5, step=0.05, **widget_args("prompt.shift_y"),
                      help="shift of the box centre, as a share of the image side (negative: up)")
        edit = PromptEdit(temperature=values["prompt.temperature"], scale=values["prompt.scale"],
                          shift=(float(values["prompt.shift_x"]), float(values["prompt.shift_y"])))
    else:
        focus = values["prompt.focus_on"]
        with rest[0]:
            st.toggle("Focus on a point", **widget_args("prompt.focus_on"),
                      help="Replace the learned saliency by a Gaussian at the point below; the published sampler "
                           "then magnifies around it.")
        with rest[1]:
            st.slider("Focus x", 0.0, 1.0, step=0.05, disabled=not focus, **widget_args("prompt.focus_x"))
        with rest[2]:
            st.slider("Focus y", 0.0, 1.0, step=0.05, disabled=not focus, **widget_args("prompt.focus_y"))
        with rest[3]:
            st.slider("Focus width", 0.04, 0.4, step=0.02, disabled=not focus, **widget_args("prompt.focus_width"),
                      help="standard deviation of the Gaussian, as a share of the image side")
        edit = PromptEdit(temperature=values["prompt.temperature"],
                          focus=(float(values["prompt.focus_x"]), float(values["prompt.focus_y"])) if focus else None,
                          focus_width=float(values["prompt.focus_width"]))
    reset, top = st.columns([1, 3], vertical_alignment="bottom")
    reset.button("Back to the learned prompt", key="prompt.reset", on_click=reset_prompt, disabled=edit.is_learned,
                 icon=":material/undo:", width="stretch")
    k = top.slider("Top K", 1, 12, 8, key="prompt.k")
    return edit, k


def query_vectors(ctx: Context, query: Query, gallery: Gallery, edit: PromptEdit) -> dict[str, np.ndarray]:
    """The query's retrieval embedding under the learned prompt ("learned"), the edit ("edited") and no prompt
    ("identity"), with the gallery's engine and precision. A test image's learned embedding is its stored gallery row, and an
    edit equal to the learned prompt reuses it, so going back to the learned prompt shows exactly its ranking."""
    precision, engine = gallery.precision or "auto", gallery.engine  # as the gallery was embedded
    row = gallery.row_of(query.index) if query.index is not None else None
    if query.index is not None:
        def embed(e: PromptEdit) -> np.ndarray:
            return cache.edited_embedding(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root,
                                          query.index, astuple(e), precision, engine)
    else:  # an upload: embedded on every run (one image, a fraction of a second)
        def embed(e: PromptEdit) -> np.ndarray:
            return embed_edited(ctx.model, query.image[None], e, precision=precision, engine=engine)[0]
    learned = np.asarray(gallery.embeddings.after[row]) if row is not None else embed(LEARNED)
    identity = embed(IDENTITY)
    edited = learned if edit.is_learned else identity if edit == IDENTITY else embed(edit)
    return {"learned": learned, "edited": edited, "identity": identity}


def prompt_views(ctx: Context, query: Query, edit: PromptEdit | None):
    """:func:`frpt.ui.logic.prompt_panels` of the query under ``edit`` (None: the learned prompt); cached for a
    test image."""
    from .logic import prompt_panels

    if query.index is not None:
        return cache.prompt_panels(ctx.checkpoint, cache.stamp(ctx.checkpoint), ctx.dataset, ctx.root, query.index,
                                   1.0, None if edit is None else astuple(edit))
    return prompt_panels(ctx.model, query.image, None, 1.0, edit=edit)


def change_text(value: float | int | None, spec: str, unit: str = " vs learned") -> str | None:
    """A signed change for a metric's delta ("+0.120 vs learned"), or None where there is none or it rounds to
    nothing (Streamlit would draw an arrow for +0)."""
    if value is None or f"{abs(value):{spec}}" == f"{0:{spec}}":
        return None
    return f"{value:+{spec}}{unit}"


def action_button(label: str, key: str, **kwargs) -> bool:
    """A button whose click is kept in the session until read, so a rerun in between (the router's hand-over,
    :func:`frpt.ui.state.through_router`) cannot swallow it, as it does a plain button's one-run value."""
    st.button(label, key=key, on_click=st.session_state.__setitem__, args=(f"frpt.{key}.clicked", True), **kwargs)
    return bool(st.session_state.pop(f"frpt.{key}.clicked", False))
