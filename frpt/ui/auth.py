"""Serving mode in the UI: the password gate every page passes first, and what the pickers may offer.

Outside serving mode (``make app``) every function here is a no-op or offers today's choices, path fields
included. In serving mode nothing below the gate is drawn until this session has given the password.
"""
from __future__ import annotations

import time

import streamlit as st

from ..errors import FRPTError
from ..serve import ServeConfig, Throttle, active_config

AUTH_KEY = "frpt.auth.ok"
FAILURES_KEY = "frpt.auth.failures"
PASSWORD_KEY = "frpt.login.password"
WRONG = "Wrong password; try again (each wrong try waits longer)."
#: One per server process: wrong tries from every session slow every session down.
THROTTLE = Throttle()
#: How the gate waits before checking a try (THROTTLE.delay seconds); tests swap in a recorder that returns at once.
SLEEP = time.sleep


def config() -> ServeConfig | None:
    """The serving config, or None when the app runs locally; a config that broke after the server started
    (file deleted or edited) stops the page with its one sentence."""
    try:
        return active_config()
    except FRPTError as exc:
        st.error(str(exc))
        st.stop()


def paths_allowed() -> bool:
    """Whether widgets may take a folder (local app only)."""
    return config() is None


def locked() -> bool:
    """Whether this session still has to give the password."""
    cfg = config()
    return cfg is not None and cfg.password is not None and not st.session_state.get(AUTH_KEY, False)


def _check_password() -> None:
    """The Enter button's callback: Streamlit calls it before the next run of the script, so the result is in
    session_state whatever that run does first (app.py leaving the pages/ fallback reruns at once, which would
    lose a button's one-run True). Waits first, longer after each wrong try of this session and while the
    server sees many wrong tries."""
    try:
        cfg = active_config()
    except FRPTError:
        return  # the next run's gate shows the config's sentence
    if cfg is None:
        return
    given = st.session_state.get(PASSWORD_KEY) or ""
    st.session_state[PASSWORD_KEY] = ""  # the field comes back empty; the password is kept nowhere
    failures = int(st.session_state.get(FAILURES_KEY, 0))
    SLEEP(THROTTLE.delay(failures))
    if cfg.check_password(given):
        st.session_state[AUTH_KEY] = True
        st.session_state.pop(FAILURES_KEY, None)
    else:
        THROTTLE.record_failure()
        st.session_state[FAILURES_KEY] = failures + 1


def gate() -> None:
    """Ask for the password and stop the page until this session has given it (serving mode with a password).
    A form: the Enter key in the field submits it too."""
    if not locked():
        return
    st.title("FRPT Studio")
    with st.form("frpt.login", border=False):
        st.text_input("Password", type="password", key=PASSWORD_KEY)
        st.form_submit_button("Enter", type="primary", on_click=_check_password)
    if st.session_state.get(FAILURES_KEY):
        st.error(WRONG)
    st.stop()


def offered_checkpoints() -> dict[str, str]:
    """Display name -> folder of the checkpoints offered by name: the configured ones when serving, else the
    shipped ones (frpt.demo.named_checkpoints)."""
    cfg = config()
    if cfg is not None:
        return dict(cfg.folders)
    from ..demo import named_checkpoints

    return {k: str(v) for k, v in named_checkpoints().items()}


def comparison_checkpoints() -> dict[str, str]:
    """What the Attributions and Checkpoints pages compare with: the synthetic demos locally ("demo: frpt"), the
    configured checkpoints when serving (a shipped one not in the config would write a gallery beside it)."""
    cfg = config()
    if cfg is not None:
        return dict(cfg.folders)
    from ..demo import available_demos

    return {f"demo: {k}": str(v) for k, v in available_demos().items()}
