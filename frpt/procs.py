"""Child processes of the app server (background jobs, the map worker) end with it."""
from __future__ import annotations

import signal
import sys


def exit_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when the process that started it exits (PR_SET_PDEATHSIG),
    so a server that was killed leaves no child computing for nobody (or holding a gallery's lock). Elsewhere:
    nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
