"""Serving mode in the app (FRPT_SERVE=1): every page shows only the password form until the right password is
given, and once in, no widget takes a path (checkpoints and datasets come from the config only)."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from frpt import serve
from frpt.demo import available_demos
from frpt.ui import auth

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not available_demos(), reason="demo checkpoints missing")
PAGES = sorted(str(p.relative_to(REPO)) for p in (REPO / "pages").glob("*.py"))
PASSWORD = "s3cret"
# What a page draws once unlocked: none of it may appear before (the gate draws a title, a text field, a button).
CONTENT = ("selectbox", "radio", "image", "table", "dataframe", "plotly_chart", "file_uploader", "multiselect",
           "number_input", "slider", "select_slider", "toggle", "checkbox", "page_link", "metric", "tabs",
           "markdown", "caption", "info", "warning", "error", "subheader", "header")


@pytest.fixture(autouse=True)
def waits(monkeypatch) -> list[float]:
    """The gate's delays, recorded instead of slept (the default, time.sleep, is checked in test_serve.py)."""
    slept: list[float] = []
    monkeypatch.setattr(auth, "SLEEP", slept.append)
    return slept


@pytest.fixture(autouse=True)
def serving(tmp_path, monkeypatch):
    config = tmp_path / "serve.toml"
    config.write_text(f'checkpoints = ["frpt", "pt"]\npassword = "{PASSWORD}"\n[datasets]\nsynthetic = ""\n')
    monkeypatch.setenv(serve.SERVE_ENV, "1")
    monkeypatch.setenv(serve.CONFIG_ENV, str(config))
    monkeypatch.setattr(auth, "THROTTLE", serve.Throttle(free=10**6))  # other tests' wrong tries add no delay
    st.cache_data.clear()
    st.cache_resource.clear()


def _app() -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=240)
    at.run()
    return at


def _locked(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert [t.label for t in at.text_input] == ["Password"]
    assert [t.value for t in at.title] == ["FRPT Studio"]
    drawn = {kind: len(at.get(kind)) for kind in CONTENT if at.get(kind)}
    assert drawn in ({}, {"error": 1}), drawn  # only the wrong-password sentence may appear


def _login(at: AppTest, password: str) -> AppTest:
    """Type the password and press Enter, as a visitor does."""
    at.text_input(key=auth.PASSWORD_KEY).input(password)
    at.button[0].click()
    return at.run()


def _unlocked(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert auth.PASSWORD_KEY not in [t.key for t in at.text_input]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_is_locked_before_the_password(page):
    at = _app()
    _locked(at)
    at.switch_page(page).run()
    _locked(at)


def test_wrong_password_stays_locked_right_one_unlocks(waits):
    at = _login(_app(), "wrong")
    _locked(at)
    assert [e.value for e in at.error] == [auth.WRONG] and auth.WRONG.count(". ") == 0  # one sentence
    assert at.session_state[auth.PASSWORD_KEY] == ""  # the field is emptied after a try
    at = _login(at, "wrong again")
    _locked(at)
    assert [e.value for e in at.error] == [auth.WRONG]
    at = _login(at, PASSWORD)
    _unlocked(at)
    assert not at.text_input  # no password field, no folder field, no root field
    assert [t.value for t in at.title] == ["FRPT Studio"] and at.table  # the home page's card
    assert waits == [0.0, 1.0, 2.0]  # each try of this session waits longer than the last


def test_empty_password_is_wrong():
    at = _login(_app(), "")
    _locked(at)
    assert [e.value for e in at.error] == [auth.WRONG]


def test_deep_page_opens_after_the_password():
    at = _app()
    at.switch_page("pages/4_Retrieval.py").run()
    _locked(at)
    at = _login(at, PASSWORD)
    _unlocked(at)
    assert [t.value for t in at.title] == ["Retrieval"]


def test_the_password_holds_across_pages():
    at = _login(_app(), PASSWORD)
    _unlocked(at)
    for page, title in (("pages/8_Reproduction.py", "Reproduction"), ("pages/0_Home.py", "FRPT Studio")):
        at.switch_page(page).run()
        _unlocked(at)
        assert [t.value for t in at.title] == [title], page


def _options(at: AppTest) -> dict[str, list[str]]:
    return {s.label: list(s.options) for s in at.selectbox}


def test_no_path_widget_once_in():
    at = _login(_app(), PASSWORD)
    assert not at.radio and not at.get("file_uploader")  # no Demo/Folder/Upload source, no checkpoint upload
    opts = _options(at)
    assert opts["Checkpoint"] == ["frpt", "pt"] and opts["Dataset (test split)"] == ["synthetic"]
    for page in ("pages/5_Checkpoints.py", "pages/2_Attributions.py", "pages/7_AB_retrieval.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.text_input, (page, [t.label for t in at.text_input])
        assert not at.get("file_uploader"), page
        assert all("folder..." not in o for o in _options(at).values()), (page, _options(at))
    opts = _options(at)
    assert set(opts["B"]) <= {"frpt", "pt"} and set(opts["A (baseline)"]) <= {"frpt", "pt"}


def test_local_app_keeps_its_path_fields(monkeypatch):
    monkeypatch.delenv(serve.SERVE_ENV)
    at = _app()
    assert not at.exception and [r.label for r in at.radio] == ["Checkpoint"]
    assert list(at.radio[0].options) == ["Demo", "Folder", "Upload"]
    at.radio[0].set_value("Folder").run()
    assert [t.label for t in at.text_input] == ["Checkpoint folder"]
