"""Heavy work in the app server, across all sessions: at most one computation per core at a time (attributions,
Grad-CAM pairs, warp galleries); the rest wait their turn with a note on their page (issue 28, item 4).

Each such computation already uses every torch thread, so a third one beside two on a 2-core server only slows all
three; waiting in line finishes each sooner. UMAP maps wait in their own line (:mod:`frpt.workers`: one worker) and
gallery embedding in the job queue (:mod:`frpt.jobs`). Results are computed once and shared by every session (the
cached functions of :mod:`frpt.ui.cache` hold a slot only while they compute, never on a cache hit).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

SLOTS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_SEMAPHORE = threading.BoundedSemaphore(SLOTS)
_WAITING = [0]  # sessions waiting for a slot now
_LOCK = threading.Lock()


@contextmanager
def slot(what: str) -> Iterator[None]:
    """Hold one of the server's :data:`SLOTS` for the block; while none is free, say so on the page, redrawing the
    note each half second (a point where a click elsewhere ends the wait at once)."""
    if not _SEMAPHORE.acquire(blocking=False):
        note, started = st.empty(), time.monotonic()
        with _LOCK:
            _WAITING[0] += 1
        try:
            while not _SEMAPHORE.acquire(timeout=0.5):
                with _LOCK:
                    ahead = _WAITING[0] - 1
                note.info(f"{what} waits for a free core: the server computes for {SLOTS} visitor(s) at a time"
                          + (f", and {ahead} other(s) wait too" if ahead > 0 else "")
                          + f" ({time.monotonic() - started:.0f} s).", icon=":material/hourglass_top:")
        finally:
            with _LOCK:
                _WAITING[0] -= 1
        note.empty()
    try:
        yield
    finally:
        _SEMAPHORE.release()
