"""UMAP fits in the app's worker process (frpt.workers): the warm-up waits for a gallery job and pauses while one
runs, a map asked for meanwhile is computed at once, the worker is left at normal priority, a fit there is the fit
of this process, and a dead worker is replaced."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from frpt import projection, workers


@pytest.fixture
def fresh_pool(monkeypatch):
    monkeypatch.setattr(workers, "_WORKER", None)
    monkeypatch.setattr(workers, "_WARM_STARTED", False)
    monkeypatch.setattr(workers, "_MAP_EXPECTED", workers.threading.Event())
    yield
    if workers._WORKER is not None:
        workers._WORKER.proc.kill()
        workers._WORKER.proc.wait()


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def _until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_maps_are_fitted_in_a_warmed_worker_that_gives_way_to_jobs_and_is_replaced_when_it_dies(fresh_pool,
                                                                                                monkeypatch):
    monkeypatch.setenv(workers.WARM_ENV, "1")
    busy = [True]  # a gallery job is queued: the warm-up waits
    thread = workers.warm(busy=lambda: busy[0])
    assert workers.warm() is None  # once per process
    time.sleep(1.5)
    assert workers.worker_pid() is None
    busy[0] = False  # the job is done: the warm-up starts
    _until(lambda: workers.worker_pid() is not None, "the worker")
    pid = workers.worker_pid()
    busy[0] = True  # another job: the warm-up is paused while it runs
    _until(lambda: _state(pid) == "T", "the paused worker")
    x = np.random.default_rng(3).standard_normal((120, 32)).astype(np.float32)
    there = workers.umap_2d(x, 0)  # a visitor's map: the worker goes on, warms up, then fits
    thread.join(timeout=120)
    assert _state(pid) != "T"
    np.testing.assert_allclose(there, projection.umap_2d(x, 0), atol=1e-4)
    assert pid != os.getpid()
    if hasattr(os, "SCHED_IDLE"):  # the warm-up's idle priority is not left behind for the fits after it
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
    os.kill(pid, signal.SIGKILL)  # out of memory, a hand: the next map starts another worker
    np.testing.assert_allclose(workers.umap_2d(x, 0), there, atol=1e-4)
    assert workers.worker_pid() not in (None, pid)
