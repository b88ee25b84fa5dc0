"""Two browser sessions never see each other's state: two independent AppTest sessions of app.py run alternately
on the retrieval page, in one process (so module globals and st.cache_* objects are shared exactly as on a server)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "pages" / "4_Retrieval.py"

if not (REPO / "app.py").is_file() or not PAGE.is_file():
    pytest.skip("the app (app.py, pages/4_Retrieval.py) is not there yet", allow_module_level=True)

from streamlit.testing.v1 import AppTest  # noqa: E402

from frpt.demo import available_demos  # noqa: E402

pytestmark = pytest.mark.skipif(not available_demos(),
                                reason="demo checkpoints missing (python -m frpt.demo --rebuild)")

ALL_KEYS = ("frpt.ret.class", "frpt.ret.index", "frpt.source", "frpt.folder")


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _state(at: AppTest) -> dict:
    return {k: at.session_state[k] for k in ALL_KEYS if k in at.session_state}


def _k(at: AppTest) -> int:
    return at.slider(key="ret.k").value


def _session() -> AppTest:
    """A session opened on the home page (the router registers the pages), then switched to the retrieval page."""
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    _ok(at)
    return at.switch_page("pages/4_Retrieval.py")


def test_two_sessions_do_not_share_state():
    a, b = _session(), _session()
    a.run()
    b.run()
    _ok(a)
    _ok(b)
    defaults = _state(b)
    default_k = _k(b)
    classes = a.selectbox(key="w.ret.class").options
    assert len(classes) >= 3

    # session A picks a class, an image and K; session B, run next, must still show its own defaults
    a.selectbox(key="w.ret.class").set_value(classes[2])
    a.slider(key="ret.k").set_value(3)
    a.run()
    _ok(a)
    assert a.session_state["frpt.ret.class"] == classes[2] and _k(a) == 3
    b.run()
    _ok(b)
    assert _state(b) == defaults and _k(b) == default_k != 3

    # session B makes its own choices, including a broken checkpoint folder; A keeps its choices and works
    b.selectbox(key="w.ret.class").set_value(classes[1])
    b.radio(key="w.source").set_value("Folder")
    b.run()
    b.text_input(key="w.folder").set_value("/definitely/not/a/checkpoint")
    b.run()
    assert b.error and "does not exist" in b.error[0].value  # one sentence in B's page
    a.run()
    _ok(a)
    assert a.session_state["frpt.ret.class"] == classes[2] and _k(a) == 3
    assert a.session_state["frpt.source"] == "Demo" and "frpt.folder" not in a.session_state
