"""A second checkpoint picker for the comparison views (Embedding space, A/B retrieval): the named checkpoints
trained on the session's dataset, the sidebar's own, or a folder. The choice is kept per session."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from ..compare import trained_on
from ..errors import FRPTError
from . import auth, cache
from .state import Context, persistent, widget_args

FOLDER = "folder..."


def checkpoint_choices(ctx: Context) -> dict[str, str]:
    """Display name -> folder of the checkpoints comparable on ``ctx``'s dataset (trained on it), the sidebar's
    checkpoint included."""
    out: dict[str, str] = {}
    for name, path in auth.offered_checkpoints().items():
        try:
            card = cache.card(str(path), cache.stamp(path))
        except FRPTError:
            continue
        if trained_on(card) == ctx.dataset:
            out[name] = str(Path(path))
    if ctx.checkpoint not in out.values():
        out[f"sidebar: {Path(ctx.checkpoint).name}"] = ctx.checkpoint
    return out


def display_name(ctx: Context, path: str) -> str:
    """The short name a comparison shows for a checkpoint folder."""
    for name, p in checkpoint_choices(ctx).items():
        if p == path:
            return name
    return Path(path).name


def baseline_default(ctx: Context, choices: dict[str, str], avoid: str) -> str:
    """The choice a comparison starts from: a frozen-backbone (``pt``) checkpoint other than ``avoid``, else the
    first other one."""
    others = [n for n, p in choices.items() if p != avoid] or list(choices)
    for n in others:
        try:
            if cache.card(choices[n], cache.stamp(choices[n])).get("variant") == "pt":
                return n
        except FRPTError:
            continue
    return others[0]


def pick_checkpoint(ctx: Context, label: str, key: str, default: str) -> str | None:
    """A selectbox of :func:`checkpoint_choices` (+ a folder field); the folder picked, or None (one sentence
    shown) when it cannot be loaded."""
    choices = checkpoint_choices(ctx)
    options = [*choices, FOLDER] if auth.paths_allowed() else list(choices)
    name = persistent(key, default if default in options else options[0])
    if name not in options:  # chosen on another dataset's checkpoints: start again from the default
        name = default if default in options else options[0]
        st.session_state[f"frpt.{key}"] = st.session_state[f"w.{key}"] = name
    more = "; any other by folder" if FOLDER in options else ""
    st.selectbox(label, options, help=f"checkpoints trained on {ctx.dataset}{more}",
                 **widget_args(key))
    if name != FOLDER:
        return choices[name]
    path = persistent(f"{key}.folder", "").strip()
    st.text_input(f"{label}: folder", placeholder="runs/cub-frpt", **widget_args(f"{key}.folder"))
    if not path:
        st.info("Enter a checkpoint folder.")
        return None
    try:
        cache.card(path, cache.stamp(path))
    except FRPTError as exc:
        st.error(str(exc))
        return None
    return str(Path(path))
