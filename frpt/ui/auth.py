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
#: One per server process: wrong tries from every session slow every session down.
THROTTLE = Throttle()


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


def gate() -> None:
    """Ask for the password and stop the page until this session has given it (serving mode with a password)."""
    if not locked():
        return
    cfg = config()
    st.title("FRPT Studio")
    given = st.text_input("Password", type="password", key="frpt.login.password")
    submitted = st.button("Enter", key="frpt.login.enter", type="primary")
    if submitted:
        failures = int(st.session_state.get(FAILURES_KEY, 0))
        time.sleep(THROTTLE.delay(failures))
        if cfg.check_password(given or ""):
            st.session_state[AUTH_KEY] = True
            st.session_state.pop(FAILURES_KEY, None)
            st.rerun()
        THROTTLE.record_failure()
        st.session_state[FAILURES_KEY] = failures + 1
        st.error("Wrong password; try again (each wrong try waits longer).")
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
