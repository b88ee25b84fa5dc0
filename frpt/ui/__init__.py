"""The Streamlit side of FRPT Studio: sidebar, per-session state, caching and widgets. The only part of ``frpt``
that imports streamlit; what the pages compute lives in :mod:`frpt.ui.logic` and the core modules."""
from . import cache, heavy, logic
from .auth import comparison_checkpoints, gate, paths_allowed
from .state import Context, persistent, sidebar, through_router, widget_args
from .widgets import Query, download_figure, download_npy, download_png, pick_image

__all__ = ["cache", "heavy", "logic", "Context", "persistent", "sidebar", "through_router", "widget_args", "Query",
           "download_figure", "download_npy", "download_png", "pick_image"]
