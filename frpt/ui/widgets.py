"""Reusable page widgets: the query picker (gallery browser with class filter, or an upload) and downloads."""
from __future__ import annotations

import bisect
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

from ..data import build_transform, open_image
from ..errors import ImageError
from ..viz import png_bytes
from .state import Context, persistent, widget_args

ALL = "All classes"
# Above this many images the picker is a number box, not a list: a selectbox sends every option to the browser on
# each rerun (a million-image gallery: tens of MB and a frozen tab).
LISTED_IMAGES = 2_000
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]


@dataclass
class Query:
    """A picked image: ``index``/``label`` are set for test-split images, None for uploads."""

    image: torch.Tensor  # (3, S, S) in [0, 1]
    name: str
    index: int | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None


def pick_image(ctx: Context, page: str, allow_upload: bool = True) -> Query | None:
    """Gallery browser (class filter + image) or an upload; the choice is this session's only."""
    ds = ctx.test_set()
    source = "Gallery"
    if allow_upload:
        source = persistent(f"{page}.source", "Gallery")
        st.radio("Image", ["Gallery", "Upload"], horizontal=True, **widget_args(f"{page}.source"))
    if source == "Upload":
        upload = st.file_uploader("Upload an image", type=UPLOAD_TYPES, key=f"w.{page}.upload")
        if upload is None:
            st.info("Upload an image, or switch to the gallery.")
            return None
        try:
            picture = open_image(upload.getvalue(), name=upload.name)
        except ImageError as exc:
            st.error(str(exc))
            return None
        return Query(build_transform(ctx.input_size, train=False)(picture), upload.name)
    left, right, button = st.columns([2, 3, 1], vertical_alignment="bottom")
    cls = persistent(f"{page}.class", ALL)
    if cls != ALL and cls not in ds.classes:
        cls = st.session_state[f"frpt.{page}.class"] = st.session_state[f"w.{page}.class"] = ALL
    with left:
        st.selectbox("Class", [ALL, *ds.classes], **widget_args(f"{page}.class"))
    rows = list(range(len(ds))) if cls == ALL else [i for i, (_, y) in enumerate(ds.samples) if ds.classes[y] == cls]
    index = persistent(f"{page}.index", rows[0])
    if index not in rows:
        index = st.session_state[f"frpt.{page}.index"] = st.session_state[f"w.{page}.index"] = rows[0]
    with button:
        if st.button("Random", key=f"{page}.random", width="stretch"):
            index = int(np.random.default_rng().choice(rows))
            st.session_state[f"frpt.{page}.index"] = st.session_state[f"w.{page}.index"] = index
    with right:
        if len(rows) <= LISTED_IMAGES:
            st.selectbox("Test image", rows, format_func=lambda i: f"#{i} · {ds.classes[ds.samples[i][1]]}",
                         **widget_args(f"{page}.index"))
        else:
            _number_box(page, rows, index, "all classes" if cls == ALL else cls)
    index = st.session_state[f"frpt.{page}.index"]
    if len(rows) > LISTED_IMAGES:
        st.caption(f"#{index} · {ds.classes[ds.samples[index][1]]} · {str(ds.samples[index][0]).rsplit('/', 1)[-1]}")
    return Query(ctx.image(index), str(ds.samples[index][0]), index, ds.samples[index][1], ctx.box(index))


def _number_box(page: str, rows: list[int], index: int, among: str) -> None:
    """Pick the image by its position among ``rows`` (ascending dataset indices); the session keeps the index."""
    key = f"w.{page}.position"
    st.session_state[key] = bisect.bisect_left(rows, index)

    def sync() -> None:
        st.session_state[f"frpt.{page}.index"] = rows[int(st.session_state[key])]

    st.number_input(f"Test image number (of {len(rows):,} in {among})", min_value=0, max_value=len(rows) - 1,
                    step=1, key=key, on_change=sync)


def download_png(label: str, image: np.ndarray | Callable[[], np.ndarray], file_name: str, key: str) -> None:
    """``image`` (or what the callable draws) as a PNG file, encoded only when the button is clicked (as
    :func:`download_npy`): encoding on every run made each rerun of the Warp gallery draw and compress its whole
    sheet, for a file rarely downloaded."""
    st.download_button(label, lambda: png_bytes(image() if callable(image) else image), file_name=file_name,
                       mime="image/png", key=key)


def download_npy(array: np.ndarray, label: str, file_name: str, key: str) -> None:
    """``array`` as a .npy file, serialised only when the button is clicked (Streamlit runs the callable then): a
    mapped gallery of a million rows must not be copied into memory on every rerun of the page."""
    def npy() -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array))
        return buf.getvalue()

    st.download_button(label, npy, file_name=file_name, mime="application/octet-stream", key=key)


def download_figure(fig, file_name: str, key: str) -> None:
    """A plotly figure as standalone HTML (PNG export would need kaleido + a browser)."""
    st.download_button("Download figure (HTML)", fig.to_html(include_plotlyjs="cdn"), file_name=file_name,
                       mime="text/html", key=key)
