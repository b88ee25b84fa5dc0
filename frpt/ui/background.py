"""What the pages show of the background jobs (:mod:`frpt.jobs`): the sidebar's job lines, the note on a page that
works on a partial gallery, and the refresh as its shards land. Pages only read a job's state here; asking for a
gallery (:func:`frpt.ui.cache.gallery`) is what starts its job."""
from __future__ import annotations

import time
from datetime import timedelta

import streamlit as st

from .. import jobs
from ..gallery import Gallery
from . import cache

REFRESH_S = 2.0
FIRST_ROWS_POLL_S = 0.2
FIRST_ROWS_WAIT_S = 60.0
GROWTH = 2.0  # the page reruns by itself when its gallery has grown this much (or is complete)
WATCH = cache.WATCH
AUTO = "frpt.auto_refresh"
POLLING = "frpt.polling_jobs"  # this tab's job lines poll (a job was queued or running at its last page run)


def start_run() -> None:
    """Called first in every page run (the sidebar): the page records again which partial galleries it draws."""
    st.session_state[WATCH] = {}
    st.session_state.setdefault(AUTO, True)


def _behind() -> bool:
    """Whether a page it drew is due for a rerun: a gallery it drew has at least doubled (or is complete) since, or a
    job it showed has ended. Doubling, not every shard: each rerun refits the Embedding space's maps in the server,
    CPU the background job would otherwise have (the Refresh button reruns at once)."""
    for key, done in st.session_state.get(WATCH, {}).items():
        try:
            if key[0] == "job":
                job = jobs.queue().get(key[1])
                if job is None or not job.active:
                    return True
                continue
            ready = cache.gallery_ready(*key)
            if ready >= GROWTH * done and ready > done or ready >= cache.gallery_total(*key):
                return True
        except Exception:  # noqa: BLE001 - a checkpoint removed meanwhile: the next full run says so
            continue
    return False


def job_lines() -> None:
    """The sidebar's jobs (checkpoint, done / total, time left), redrawn every few seconds while one is queued or
    running; reruns the whole page when a gallery it shows has grown and the visitor left automatic refresh on.

    Only then does the open tab poll: each poll is a script run of the server, and twenty tabs polling every 2 s
    without a job made 265 runs in 3 minutes (p50 3.2 s each under that load): pages p50 5.4 s and health p95
    3.4 s, against 4.2 s and 1.0 s without them (bench/bench_soak.py; bench/RESULTS.md, "The soak"). The tab's
    first poll after the last job ends reruns the page, which draws the lines again without polling."""
    st.session_state[POLLING] = polling = any(j.active for j in jobs.queue().jobs())
    st.fragment(_job_lines, run_every=timedelta(seconds=REFRESH_S) if polling else None)()


def _job_lines() -> None:
    active = [j for j in jobs.queue().jobs() if j.active or j.state == "failed"]
    if st.session_state.get(POLLING) and not any(j.active for j in active):
        st.rerun(scope="app")  # the last job ended: a page run that stops the polling
    if active:
        st.markdown("**Background jobs**")
        for job in active:
            st.caption(jobs.describe(job))
    if st.session_state.get(WATCH) and st.session_state.get(AUTO, True) and _behind():
        st.rerun(scope="app")


def partial_note(gallery: Gallery, ckpt: str, name: str, root: str | None) -> None:
    """One line on a page that works on a partial gallery: how much is ready, how long the rest takes, and the
    refresh controls."""
    job = cache.request_gallery(ckpt, name, root)
    share = gallery.done / gallery.total
    text = (f"Working on **{gallery.done:,} of {gallery.total:,}** test images ({share:.0%}); the rest are being "
            "embedded in the background")
    left = job.seconds_left() if job is not None else None
    text += f", {jobs.format_duration(left)} left." if left is not None else "."
    if job is not None and job.state == "failed":
        text = f"Working on {gallery.done:,} of {gallery.total:,} test images; the background job failed: {job.error}"
    text += " Figures here are of these images, not the checkpoint's."
    note, auto, now = st.columns([7, 2, 1.2], vertical_alignment="center")
    note.info(text, icon=":material/hourglass_top:")
    auto.toggle("Refresh as images land", key=AUTO)
    if now.button("Refresh", icon=":material/refresh:", key="bg.refresh"):
        st.rerun()


def job_note(job: jobs.Job, text: str) -> None:
    """A page's line for a job it waits on (a sweep): its progress; the page reruns when the job ends."""
    st.session_state.setdefault(WATCH, {})[("job", job.key)] = 0
    st.info(f"{text} {jobs.describe(job)}.", icon=":material/hourglass_top:")


def waiting_note(ckpt: str, name: str, root: str | None) -> None:
    """The page's note before the first shard of its gallery lands (seconds). The page run waits here for those
    rows, polling the manifest, and reruns the moment they land (the sidebar's poll would add up to
    :data:`REFRESH_S`); after :data:`FIRST_ROWS_WAIT_S` (a job queued behind another) it leaves that to the sidebar.
    The line under the note is redrawn each poll: a point where a click elsewhere ends this run at once."""
    job = cache.request_gallery(ckpt, name, root)
    if job is not None and job.state == "failed":
        st.error(f"The test gallery could not be embedded: {job.error}")
        return
    queued = job is not None and job.state == "queued"
    st.info(("Queued behind another background job. " if queued else "")
            + f"Embedding the first {cache.first_shard_images():,} test images (a sample of every class); this page "
            "fills in as soon as they land, then grows as the rest are embedded.", icon=":material/hourglass_top:")
    if job is None or not job.active or not jobs.jobs_enabled():
        return
    clock, started, shown = st.empty(), time.monotonic(), -1
    while (waited := time.monotonic() - started) < FIRST_ROWS_WAIT_S:
        if cache.gallery_ready(ckpt, name, root) > 0:
            st.rerun()
        if int(waited) != shown:  # once a second: each redraw costs the browser too
            shown = int(waited)
            clock.caption(f"{shown} s")
        time.sleep(FIRST_ROWS_POLL_S)
