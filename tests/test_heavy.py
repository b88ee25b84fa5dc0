"""The app server's heavy-work line (frpt.ui.heavy, issue 28 item 4): a computation beyond the server's cores
waits until one is free, then runs; the line is left as it was found."""
from __future__ import annotations

import threading
import time

from streamlit.testing.v1 import AppTest

from frpt.ui import heavy

PAGE = """
import time
import streamlit as st
from frpt.ui import heavy

with heavy.slot("Grad-CAM"):
    st.session_state["computed_at"] = time.monotonic()
    st.write("computed")
"""


def test_a_computation_beyond_the_cores_waits_for_a_free_one(tmp_path):
    page = tmp_path / "page.py"
    page.write_text(PAGE)
    held = [heavy._SEMAPHORE.acquire(blocking=False) for _ in range(heavy.SLOTS)]
    assert all(held)  # every slot taken by other visitors' computations
    released = {}

    def release() -> None:
        released["at"] = time.monotonic()
        for _ in held:
            heavy._SEMAPHORE.release()

    threading.Timer(1.5, release).start()
    at = AppTest.from_file(str(page), default_timeout=60).run()
    assert not at.exception
    assert [m.value for m in at.markdown] == ["computed"]
    assert at.session_state["computed_at"] >= released["at"]  # it ran only once a slot was free
    assert heavy._WAITING[0] == 0
    # and the slots are all free again: a later computation takes one at once
    assert all(heavy._SEMAPHORE.acquire(blocking=False) for _ in range(heavy.SLOTS))
    for _ in range(heavy.SLOTS):
        heavy._SEMAPHORE.release()
