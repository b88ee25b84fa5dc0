"""Sidebar defaults of the app that need no running Streamlit."""


def test_dataset_folder_defaults_to_the_environment_then_to_an_existing_card_folder(tmp_path, monkeypatch):
    from frpt.ui.state import default_root

    card = {"dataset": {"name": "cub", "root": str(tmp_path)}}
    monkeypatch.delenv("FRPT_CUB_ROOT", raising=False)
    assert default_root("cub", card) == str(tmp_path)
    assert default_root("cub", {"dataset": {"name": "cub", "root": "/nonexistent/CUB_200_2011"}}) == ""
    assert default_root("cars", card) == ""  # the card's folder is for its own dataset only
    monkeypatch.setenv("FRPT_CUB_ROOT", "/data/cub")
    assert default_root("cub", card) == "/data/cub"


def test_first_visit_progress_estimates_time_left_and_names_the_precompute_command():
    from frpt.ui.logic import embedding_progress

    assert "about 30 s left" in embedding_progress(100, 400, 10.0, "assets/cub/compact-frpt", "cub")
    assert "about 7 min left" in embedding_progress(1000, 5924, 90.0, "ck", "cub")  # 4,924 left at 11.1 img/s
    start = embedding_progress(0, 5924, 0.0, "assets/cub/compact-frpt", "cub")
    assert "left" not in start and "0/5924" in start
    assert "python -m frpt embed --checkpoint assets/cub/compact-frpt --dataset cub`" in start
    assert "--dataset cub --root ../data/CUB`" in embedding_progress(1, 9, 1.0, "ck", "cub", "../data/CUB")


def test_checkpoints_page_says_whether_the_test_gallery_is_stored():
    from frpt.ui.logic import gallery_status

    assert "nothing is embedded" in gallery_status(True, 5924, "runs/x", "cub")
    cold = gallery_status(False, 5924, "assets/cub/compact-frpt", "cub", "../data/CUB")
    assert "embeds the 5924 test images in the background" in cold
    assert "`python -m frpt embed --checkpoint assets/cub/compact-frpt --dataset cub --root ../data/CUB`" in cold


_POLLING_SCRIPT = """
import streamlit as st
from frpt.ui import background

real = st.fragment
def recording(fn, run_every=None):
    st.session_state.setdefault("intervals", []).append(run_every)
    return real(fn, run_every=run_every)
st.fragment = recording
try:
    background.start_run()
    background.job_lines()
finally:
    st.fragment = real
"""


def test_sidebar_polls_the_server_only_while_a_job_is_queued_or_running(monkeypatch):
    # Every poll is a script run: twenty idle tabs polling every 2 s slowed every page (bench/RESULTS.md, "The soak")
    from datetime import timedelta

    from streamlit.testing.v1 import AppTest

    from frpt import jobs
    from frpt.ui.background import REFRESH_S

    monkeypatch.setattr(jobs, "_QUEUE", jobs.JobQueue())  # this server's queue, without other tests' queued jobs
    at = AppTest.from_string(_POLLING_SCRIPT, default_timeout=60)
    at.run()
    assert at.session_state["intervals"] == [None] and not at.exception
    job = jobs.queue().submit(jobs.Job("test-polling-job", "gallery", "a test job", ["true"], 10, lambda: 0))
    try:
        assert job.active  # the suite runs with background jobs off: it stays queued
        at.run()
        assert at.session_state["intervals"][-1] == timedelta(seconds=REFRESH_S)
        assert "a test job: 0 / 10, queued" in " ".join(c.value for c in at.caption)
    finally:
        job.state = "done"
    at.run()
    assert at.session_state["intervals"][-1] is None
