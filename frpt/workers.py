"""UMAP fits in a worker process beside the app server (issues 27 and 28).

A process's first UMAP fit JIT-compiles numba kernels: 11 s for the small-set path and 24 s more for pynndescent's
(above 4,096 points) on 2 cores, every time a process starts (they are not cached on disk). The worker warms the
first only: the Embedding space opens on 2,000 points, and a warm-up still running when a page asks for a map delays
that map by what it has left. numba compiles while
holding the GIL, so done in the server it stalled every page of every session beside it: a cold server's first
gallery rows reached the page 11 s later with the warm-up running (bench/RESULTS.md, "Real data in seconds"). In a
worker process the server's GIL stays free; the server thread that asked only waits on the result.

The worker warms up as soon as the app starts (:func:`warm`), unless a gallery job is queued or running: at idle
priority (Linux SCHED_IDLE: only CPU nothing else wants) where the process may raise its priority back, which it
does when a page asks for a map (:func:`umap_2d`); elsewhere (an unprivileged user without RLIMIT_NICE) at normal
priority. A page that draws maps (the Embedding space) starts it at once, whatever runs (:func:`expect_fit`). One worker, so at most one fit runs at a time
(a second visitor's waits its turn; a fit takes one core: umap-learn is single-threaded with a fixed seed) and the
compiled kernels are paid for once. A plain child process speaking pickles over its pipes, not multiprocessing:
under Streamlit, ``__main__`` is the app's script, which multiprocessing's spawn would run again in the child.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from .procs import bind_to_parent, child_env, popen

PARENT_ENV = "FRPT_WORKER_PARENT"  # the server's pid, set for the worker
WARM_ENV = "FRPT_WARM_UMAP"  # "0": no warm-up (the test suite: its processes end before it would pay off)


def _can_raise_priority() -> bool:
    """Whether a process of this user may go back from idle to normal priority (root, or RLIMIT_NICE allows
    nice 0): only then does the worker warm up at idle priority."""
    if os.geteuid() == 0:
        return True
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20


def _set_normal(pid: int = 0) -> None:
    try:
        if os.sched_getscheduler(pid) != os.SCHED_OTHER:
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------- the worker side

def _send(stream, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - only ever from the other end of our own pipe


def serve() -> None:
    """The worker's loop: requests on stdin, answers on stdout (length-prefixed pickles), until stdin closes (the
    server ended). Anything else the libraries print goes to stderr, never into the answers."""
    if not bind_to_parent(PARENT_ENV, signal.SIGKILL):  # SIGKILL: the server may have paused it (SIGSTOP)
        return
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    from .projection import umap_2d, warm_umap

    while True:
        try:
            kind, *args = _receive(requests)
        except EOFError:
            return
        try:
            if kind == "warm":
                if args[0]:
                    try:
                        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                    except (OSError, AttributeError):
                        pass
                try:
                    warm_umap(large=False)  # the maps a page opens on (2,000 points); larger ones compile when asked
                finally:
                    _set_normal()  # the fits after it run at normal priority
                _send(answers, ("ok", None))
            else:
                _set_normal()
                _send(answers, ("ok", umap_2d(*args)))
        except Exception as exc:  # noqa: BLE001 - reported to the server, which raises it there
            _send(answers, ("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------------------------------- the server side

class _Worker:
    """The worker process and the lock that serialises its requests (one at a time: the pool of one)."""

    def __init__(self, idle: bool = False) -> None:
        env = child_env(PARENT_ENV)
        self.proc = popen([sys.executable, "-c", "from frpt.workers import serve; serve()"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.lock = threading.Lock()
        self.wanted = False  # a page has asked it for a map
        if idle:  # its imports (umap, numba, sklearn: seconds of CPU) too, until a request raises it
            try:
                os.sched_setscheduler(self.proc.pid, os.SCHED_IDLE, os.sched_param(0))
            except (OSError, AttributeError):
                pass

    def call(self, *request: Any) -> Any:
        self.wanted = True  # still warming up (at idle priority, or paused for a job): a visitor is waiting now
        _set_normal(self.proc.pid)
        with contextlib.suppress(OSError):
            os.kill(self.proc.pid, signal.SIGCONT)
        with self.lock:
            try:
                _send(self.proc.stdin, request)
                status, value = _receive(self.proc.stdout)
            except (EOFError, OSError):
                self.proc.kill()  # reaped now, so the next call sees it gone and starts another
                self.proc.wait()
                raise WorkerDied(f"The map worker (pid {self.proc.pid}) ended; the next map starts another.") from None
        if status == "error":
            raise RuntimeError(value)
        return value


class WorkerDied(RuntimeError):
    pass


_LOCK = threading.Lock()
_WORKER: _Worker | None = None
_WARM_STARTED = False
_MAP_EXPECTED = threading.Event()  # a page that draws maps has opened: warm up now, whatever runs


def _worker(idle: bool = False) -> _Worker:
    global _WORKER
    with _LOCK:
        if _WORKER is None or _WORKER.proc.poll() is not None:
            _WORKER = _Worker(idle)
        return _WORKER


def warm(busy=lambda: False) -> threading.Thread | None:
    """Start the worker and its warm-up once per server (no-op when ``$FRPT_WARM_UMAP`` is 0). The warm-up waits
    while ``busy()`` (a gallery job queued or running: even at idle priority, compiling beside the job's first shard
    delayed a cold server's first ranked result by 2-3 s), unless a page that draws maps asks first
    (:func:`expect_fit`). Returns the thread that asks for it (join it to wait for the end), or None when it was
    started before."""
    global _WARM_STARTED
    if os.environ.get(WARM_ENV, "1") == "0":
        return None
    with _LOCK:
        if _WARM_STARTED:
            return None
        _WARM_STARTED = True
    idle = _can_raise_priority()

    def run() -> None:
        while busy() and not _MAP_EXPECTED.is_set():
            _MAP_EXPECTED.wait(1.0)
        done = threading.Event()
        try:
            worker = _worker(idle)
            low = idle and not _MAP_EXPECTED.is_set()
            threading.Thread(target=_pause_while_busy, args=(worker, busy, done), daemon=True).start()
            with worker.lock:  # not _Worker.call: that would raise the priority the warm-up is meant to lower
                _send(worker.proc.stdin, ("warm", low))
                _receive(worker.proc.stdout)
        except (EOFError, OSError):
            pass  # the worker died while warming: the next map starts another (and compiles then)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="frpt-umap-warmup", daemon=True)
    thread.start()
    return thread


def _pause_while_busy(worker: _Worker, busy, done: threading.Event) -> None:
    """While the warm-up runs: stop the worker (SIGSTOP) whenever a gallery job is queued or running and no page
    wants a map, and let it go on (SIGCONT) otherwise; it is never left stopped."""
    stopped = False
    try:
        while not done.is_set() and worker.proc.poll() is None:
            hold = busy() and not _MAP_EXPECTED.is_set() and not worker.wanted
            if hold != stopped:
                os.kill(worker.proc.pid, signal.SIGSTOP if hold else signal.SIGCONT)
                stopped = hold
            done.wait(0.25)
    except OSError:
        pass
    finally:
        if stopped and worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGCONT)


def expect_fit() -> None:
    """A page that will draw a map has opened (before its gallery's first rows land): start the warm-up now if it
    was waiting for a job, at normal priority, so it finishes while those rows are embedded instead of after."""
    _MAP_EXPECTED.set()
    worker = _WORKER
    if worker is not None and worker.proc.poll() is None:
        _set_normal(worker.proc.pid)
        with contextlib.suppress(OSError):
            os.kill(worker.proc.pid, signal.SIGCONT)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """:func:`frpt.projection.umap_2d` of ``x``, computed in the worker (once more in a new worker if it had
    died)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        return _worker().call("fit", x, seed)
    except WorkerDied:
        return _worker().call("fit", x, seed)


def worker_pid() -> int | None:
    """The worker's pid, or None before one is started (tests, the soak bench's memory count)."""
    return _WORKER.proc.pid if _WORKER is not None and _WORKER.proc.poll() is None else None


__all__ = ["warm", "expect_fit", "umap_2d", "worker_pid", "serve"]
