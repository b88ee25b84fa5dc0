"""Per-user choices (checkpoint, dataset) kept in ``st.session_state`` across pages, and the sidebar that sets them.

Widget keys are cleared by Streamlit when a page without that widget runs, so every choice is also copied to a
plain session key (``frpt.*``) by the widget's ``on_change`` callback and fed back before the widget is drawn.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from ..data import DATASETS, NEEDS_ROOT
from ..demo import REBUILD_COMMAND, named_checkpoints
from .. import workers
from ..errors import FRPTError
from . import auth, background, cache

SOURCES = ("Demo", "Folder", "Upload")
DATASET_NAMES = ("synthetic", *(d for d in DATASETS if d != "synthetic"))


def persistent(key: str, default: Any) -> Any:
    """A session value that survives page switches; ``w.<key>`` is the widget showing it."""
    store = f"frpt.{key}"
    st.session_state.setdefault(store, default)
    st.session_state[f"w.{key}"] = st.session_state[store]
    return st.session_state[store]


def _sync(key: str) -> None:
    st.session_state[f"frpt.{key}"] = st.session_state[f"w.{key}"]


def widget_args(key: str) -> dict[str, Any]:
    return {"key": f"w.{key}", "on_change": _sync, "args": (key,)}


@dataclass(frozen=True)
class Context:
    """The session's loaded checkpoint and dataset; every page works from this."""

    checkpoint: str
    card: dict[str, Any]
    dataset: str
    root: str | None

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"])

    @property
    def model(self):
        return cache.model(self.checkpoint, cache.stamp(self.checkpoint))[0]

    def test_set(self):
        return cache.dataset(self.dataset, self.root, "test", self.input_size)

    def gallery(self, ready: int | None = None):
        """The test gallery, or what is embedded of it so far (:func:`frpt.ui.cache.gallery`), or None."""
        return cache.gallery(self.checkpoint, self.dataset, self.root, ready)

    def ready_gallery(self, maps: bool = False):
        """The gallery for a page that needs one: with the partial-gallery note drawn when it is still being
        embedded; before its first rows land, the waiting note and the page stops (it reruns when they land).
        ``maps``: the page draws UMAP maps of it (:func:`frpt.workers.expect_fit`)."""
        if maps:
            workers.expect_fit()
        found = self.gallery()
        if found is None:
            background.waiting_note(self.checkpoint, self.dataset, self.root)
            st.stop()
        if not found.complete:
            background.partial_note(found, self.checkpoint, self.dataset, self.root)
        return found

    def image(self, index: int):
        """Test image ``index`` as the model sees it (3, S, S) in [0, 1]."""
        return self.test_set()[index][0]

    def box(self, index: int) -> tuple[float, float, float, float] | None:
        """Ground-truth box of test image ``index`` in the model-input pixels, or None."""
        from ..data import transform_box

        ds = self.test_set()
        box = ds.box(index)
        if box is None:
            return None
        return transform_box(box, ds.load_image(index).size, self.input_size)


def _save_upload(files) -> Path:
    """Write an uploaded checkpoint (card.json + .safetensors [+ log.csv]) to a folder named by its content hash."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode() + b"\0" + f.getvalue())
    folder = Path(tempfile.gettempdir()) / "frpt-uploads" / digest.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        name = Path(f.name).name
        if name and not (folder / name).is_file():
            (folder / name).write_bytes(f.getvalue())
    return folder


def _served_checkpoint(cfg) -> str:
    """Serving mode: a choice among the configured checkpoints only (no folder field, no upload)."""
    names = list(cfg.folders)
    name = persistent("served", names[0])
    if name not in cfg.folders:
        name = st.session_state["frpt.served"] = st.session_state["w.served"] = names[0]
    st.selectbox("Checkpoint", names, **widget_args("served"))
    return cfg.folders[name]


def _checkpoint_picker() -> str | None:
    cfg = auth.config()
    if cfg is not None:
        return _served_checkpoint(cfg)
    demos = {k: str(v) for k, v in named_checkpoints().items()}
    source = persistent("source", "Demo" if demos else "Folder")
    st.radio("Checkpoint", SOURCES, horizontal=True, **widget_args("source"))
    if source == "Demo":
        if not demos:
            st.error(f"The demo checkpoints are missing from assets/demo; rebuild them with `{REBUILD_COMMAND}`.")
            return None
        persistent("demo", "frpt" if "frpt" in demos else next(iter(demos)))
        if st.session_state["frpt.demo"] not in demos:
            st.session_state["frpt.demo"] = st.session_state["w.demo"] = next(iter(demos))
        name = st.selectbox("Demo checkpoint", list(demos),
                            help="trained on the built-in synthetic set; cub/...: trained on CUB-200-2011, "
                                 "needs your own CUB_200_2011 folder",
                            **widget_args("demo"))
        return demos[name]
    if source == "Folder":
        persistent("folder", "")
        path = st.text_input("Checkpoint folder", placeholder="runs/cub-frpt", **widget_args("folder"))
        return path.strip() or None
    files = st.file_uploader("card.json + model-*.safetensors (+ log.csv)", type=["json", "safetensors", "csv"],
                             accept_multiple_files=True, key="w.upload_ckpt")
    if files:
        st.session_state["frpt.uploaded"] = str(_save_upload(files))
    return st.session_state.get("frpt.uploaded")


def default_root(name: str, card: dict[str, Any]) -> str:
    """The folder a dataset field starts with: ``FRPT_<NAME>_ROOT`` (e.g. FRPT_CUB_ROOT) when set, else the folder
    the checkpoint was trained on, only when it exists here (a card from another machine names a folder there)."""
    env = os.environ.get(f"FRPT_{name.upper()}_ROOT", "").strip()
    if env:
        return env
    stored = (card.get("dataset") or {}).get("root") if (card.get("dataset") or {}).get("name") == name else None
    return stored if isinstance(stored, str) and os.path.isdir(stored) else ""


def _dataset_picker(card: dict[str, Any]) -> tuple[str, str | None]:
    cfg = auth.config()
    names = tuple(cfg.datasets) if cfg is not None else DATASET_NAMES
    trained = (card.get("dataset") or {}).get("name")
    name = persistent("dataset", trained if trained in names else names[0])
    if name not in names:
        name = st.session_state["frpt.dataset"] = st.session_state["w.dataset"] = names[0]
    if st.session_state.get("frpt.dataset_of") != card.get("path"):
        # A newly picked checkpoint opens on the dataset it was trained on; the user may switch afterwards.
        st.session_state["frpt.dataset_of"] = card.get("path")
        if trained in names and trained != name:
            name = st.session_state["frpt.dataset"] = st.session_state["w.dataset"] = trained
    st.selectbox("Dataset (test split)", names, **widget_args("dataset"))
    if cfg is not None:  # serving: the root comes from the config, never from a field
        return name, cfg.datasets[name]
    root = None
    if name in NEEDS_ROOT:
        root = persistent(f"root.{name}", default_root(name, card)).strip() or None
        st.text_input("Dataset folder", placeholder="/data/CUB_200_2011", **widget_args(f"root.{name}"))
    return name, root


def through_router() -> None:
    """Hand this run to app.py's ``st.navigation`` when Streamlit ran a pages/ file on its own. Until some run has
    called ``st.navigation``, Streamlit serves a server's first request for a page URL (``/Retrieval``, a
    bookmark) from the pages/ folder with a navigation built from file names ("app" first, no sections, no
    icons): its multipage-v1 fallback (``PagesManager.uses_pages_directory``). Turning the fallback off and
    rerunning runs app.py, which opens the same URL's page under the app's own navigation. Called first by every
    page, and by app.py before its st.navigation (which clears the flag itself: called after it, this sees
    nothing), for the fallback runs app.py too, as its page "app", on a fresh server's first request for /."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # what st.navigation itself sets
        st.rerun()


def sidebar() -> Context:
    """Draw the sidebar (checkpoint and dataset pickers) and return the session's context, or stop the page with
    one clear sentence when the choice cannot be loaded."""
    through_router()
    auth.gate()  # serving mode: nothing below is drawn before the password
    cache.start_umap_warmup()
    background.start_run()
    with st.sidebar:
        st.markdown("### FRPT Studio")
        path = _checkpoint_picker()
        if not path:
            st.info("Choose a checkpoint to start.")
            st.stop()
        try:
            card_ = cache.card(path, cache.stamp(path))
        except FRPTError as exc:
            st.error(str(exc))
            st.stop()
        name, root = _dataset_picker(card_)
        if name in NEEDS_ROOT and not root:
            st.info(f"Enter the folder of the {name} dataset.")
            st.stop()
        ctx = Context(str(Path(path)), card_, name, root)
        try:
            ds = ctx.test_set()
            # Chosen: its gallery job starts now, whatever the page, before this process loads the model too.
            cache.request_gallery(ctx.checkpoint, name, root)
            ctx.model
        except FRPTError as exc:
            st.error(str(exc))
            st.stop()
        st.caption(f"{card_.get('preset')}/{card_.get('variant')} on {card_['backbone'].get('name')}, "
                   f"{card_['input_size']} px · {name}: {len(ds):,} test images, {len(ds.classes):,} classes")
        background.job_lines()
    return ctx
