"""UMAP fits in the app's worker process (frpt.workers): the warm-up runs there and leaves it at normal priority,
a fit there is the fit of this process, and a dead worker is replaced."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from frpt import projection, workers


@pytest.fixture
def fresh_pool(monkeypatch):
    monkeypatch.setattr(workers, "_WORKER", None)
    monkeypatch.setattr(workers, "_WARM_STARTED", False)
    yield
    if workers._WORKER is not None:
        workers._WORKER.proc.kill()
        workers._WORKER.proc.wait()


@pytest.mark.slow
def test_maps_are_fitted_in_a_warmed_worker_that_is_replaced_when_it_dies(fresh_pool, monkeypatch):
    monkeypatch.setenv(workers.WARM_ENV, "1")
    thread = workers.warm()
    assert workers.warm() is None  # once per process
    thread.join(timeout=600)
    x = np.random.default_rng(3).standard_normal((120, 32)).astype(np.float32)
    there = workers.umap_2d(x, 0)
    np.testing.assert_allclose(there, projection.umap_2d(x, 0), atol=1e-4)
    pid = workers.worker_pid()
    assert pid not in (None, os.getpid())
    if hasattr(os, "SCHED_IDLE"):  # the warm-up's idle priority is not left behind for the fits after it
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
    os.kill(pid, signal.SIGKILL)  # out of memory, a hand: the next map starts another worker
    np.testing.assert_allclose(workers.umap_2d(x, 0), there, atol=1e-4)
    assert workers.worker_pid() not in (None, pid)
