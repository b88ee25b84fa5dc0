"""Child processes of the app server (background jobs, the map worker): started from one long-lived thread and
ended with the server."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_REQUESTS: queue.Queue = queue.Queue()
_SPAWNER: threading.Thread | None = None
_LOCK = threading.Lock()


def _spawn_forever() -> None:
    while True:
        args, kwargs, reply = _REQUESTS.get()
        try:
            reply.put((True, subprocess.Popen(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            reply.put((False, exc))


def popen(*args: Any, **kwargs: Any) -> subprocess.Popen:
    """:class:`subprocess.Popen`, forked from a thread that lives as long as this process. Linux's parent-death
    signal (:func:`exit_with_parent`) follows the *thread* that forked a child, and a Streamlit page's thread ends
    with its run: a child it started would be killed moments later."""
    global _SPAWNER
    with _LOCK:
        if _SPAWNER is None or not _SPAWNER.is_alive():
            _SPAWNER = threading.Thread(target=_spawn_forever, name="frpt-spawner", daemon=True)
            _SPAWNER.start()
    reply: queue.Queue = queue.Queue(maxsize=1)
    _REQUESTS.put((args, kwargs, reply))
    ok, value = reply.get()
    if not ok:
        raise value
    return value


def exit_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send this process ``sig`` when the process that started it exits (PR_SET_PDEATHSIG),
    so a server that was killed leaves no child computing for nobody (or holding a gallery's lock). SIGKILL for a
    child the server may have stopped (SIGSTOP): a stopped process never acts on SIGTERM. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_env(parent_env: str) -> dict[str, str]:
    """A child's environment: this process's, with this process's pid under ``parent_env`` (what
    :func:`bind_to_parent` checks) and this package importable (``-m frpt`` from any working folder)."""
    package_root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, parent_env: str(os.getpid()),
            "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}


def bind_to_parent(parent_env: str, sig: int = signal.SIGTERM) -> bool:
    """In a child started with :func:`child_env`: :func:`exit_with_parent`; False when the parent named in
    ``parent_env`` was already gone (the caller should end), True otherwise (also when not started so)."""
    parent = os.environ.get(parent_env)
    if not parent:
        return True
    exit_with_parent(sig)
    return str(os.getppid()) == parent  # else the server was gone before the line above
