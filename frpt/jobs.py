"""Background jobs: the long passes over a split (a test gallery, a prompt sweep) run in a child process, one at a
time, while the app's pages work on what is ready (issue 27).

A job is named by the file it produces, so every browser session that asks for one gallery shares one job, and a
job that is already done is never run again. Each job runs the command line (``python -m frpt embed ...``,
``python -m frpt sweep ...``), so what it leaves is exactly what that command leaves, and it inherits that
command's resumption: a gallery continues from its committed shards after a kill or a server restart
(:mod:`frpt.gallery`), and the gallery's file lock keeps two processes (two servers, the app beside a terminal)
from embedding one gallery at once. The child runs at a lower CPU priority (nice :data:`NICE`), so a visitor's
query, edit or Grad-CAM in the server process takes the cores first; it is bound to the server, so it ends with it.

Progress is read from disk, never from the child: the child writes a status file (images done, total) after each
batch, and a gallery's committed rows are its manifest's (:func:`frpt.gallery.gallery_progress`). The module sits
below the UI (pages only read a job's state) and above :mod:`frpt.gallery` and :mod:`frpt.sweep`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.base import RetrievalDataset
from .engine import cache_dir
from .gallery import gallery_file, gallery_progress
from . import procs
from .procs import popen
from .sweep import sweep_file

NICE = 10  # the job's CPU priority below the server's (0): the kernel gives an interactive pass ~90 % of a core
POLL_S = 0.5
PARENT_ENV = "FRPT_JOB_PARENT"  # set for a job's child: the server's pid, which the child exits with
JOBS_ENV = "FRPT_BACKGROUND_JOBS"  # "0": jobs are queued, never run (the test suite, a server without spare CPU)
BACKGROUND_ENV = "FRPT_BACKGROUND_MIN"
BACKGROUND_MIN = 1_000  # splits up to this size are embedded in the page's own pass (seconds); larger ones in a job


def jobs_enabled() -> bool:
    return os.environ.get(JOBS_ENV, "1") != "0"


def background_min() -> int:
    """Splits with more images than this are embedded by a background job (``$FRPT_BACKGROUND_MIN``)."""
    try:
        return int(os.environ.get(BACKGROUND_ENV, BACKGROUND_MIN))
    except ValueError:
        return BACKGROUND_MIN


@dataclass
class Job:
    """One long pass in a child process. ``committed()`` counts what a page can use already (a gallery's
    committed rows); the status file counts the images the child has passed, for the time estimate."""

    key: str                    # the file it produces: one job per file
    kind: str                   # "gallery" or "sweep"
    title: str                  # what the sidebar calls it
    command: list[str]
    total: int                  # images of the split
    committed: Callable[[], int]
    urgent: bool = False        # asked for by a visitor (a server-start job is not, and gives way to one)
    state: str = "queued"       # queued, running, done, failed
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _rate: tuple[float, int] | None = None  # (time, images) when the child's first batch was seen

    @property
    def status_file(self) -> Path:
        return _job_dir() / f"{hashlib.sha256(self.key.encode()).hexdigest()[:16]}.status.json"

    @property
    def log_file(self) -> Path:
        return self.status_file.with_suffix("").with_suffix(".log")

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def done(self) -> int:
        """Images of the split passed so far: the committed rows, or the child's own count when further on."""
        if self.state == "done":
            return self.total
        status = _read_status(self.status_file) if self.state == "running" else None
        passed = int(status["done"]) if status and status.get("total") == self.total else 0
        return max(self.committed(), min(passed, self.total))

    def seconds_left(self) -> float | None:
        """Time to the end at the rate since the child's first batch (start-up excluded), or None before a
        rate is known."""
        if self.state != "running":
            return None
        done, now = self.done(), time.time()
        if self._rate is None:
            if done > 0:
                self._rate = (now, done)
            return None
        t0, d0 = self._rate
        if done <= d0 or now <= t0:
            return None
        return (self.total - done) * (now - t0) / (done - d0)


def _job_dir() -> Path:
    folder = cache_dir() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_status(path: str | os.PathLike, done: int, total: int) -> None:
    """The child's progress (images done of total), replaced atomically so a reader never sees half a file."""
    from .fileio import atomic_write_text

    atomic_write_text(path, json.dumps({"done": int(done), "total": int(total), "time": time.time()}))


class JobQueue:
    """The server's jobs: one worker thread runs them one at a time, urgent ones first; a visitor's request
    pauses a server-start job (its child is stopped and it continues, from its committed shards, afterwards).

    ``spare``: keep a child started ahead of the next job (:func:`spare_main`: Python, torch, timm and OpenVINO
    imported, ~3.5 s of a job's start-up on 2 cores, paid while nothing waits), so a visitor's first gallery rows
    come that much sooner. The server's queue has one; a spare started under another environment is not used."""

    def __init__(self, spare: bool = False) -> None:
        self._spare_wanted = spare
        self._spare: tuple[subprocess.Popen, dict[str, str]] | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._running: Job | None = None
        self._proc: subprocess.Popen | None = None
        self._preempted = False
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, job: Job, *, urgent: bool = False) -> Job:
        """Queue ``job`` unless one for its file is queued, running or done (that one is returned); a failed job
        is tried again only when a visitor asks (``urgent``). An urgent job goes to the front and pauses a running
        job that is not urgent."""
        with self._cond:
            known = self._jobs.get(job.key)
            if known is not None and known.state == "done" and not Path(known.key).exists():
                known = None  # its file was removed since (`frpt embed --recompute`, a hand): run it again
            if known is not None and (known.state != "failed" or not urgent):
                if urgent and known.state == "queued" and not known.urgent:
                    known.urgent = True
                    self._queue.remove(known.key)
                    self._queue.insert(0, known.key)
                    self._preempt_background()
                return known
            job.urgent, job.state, job.error = urgent, "queued", None
            self._jobs[job.key] = job
            if urgent:
                self._queue.insert(0, job.key)
                self._preempt_background()
            else:
                self._queue.append(job.key)
            if jobs_enabled():
                self._start_worker()
            self._cond.notify_all()
            return job

    def get(self, key: str) -> Job | None:
        with self._cond:
            return self._jobs.get(key)

    def jobs(self) -> list[Job]:
        """Running first, then queued in order, then the finished ones."""
        with self._cond:
            queued = [self._jobs[k] for k in self._queue]
            rest = [j for j in self._jobs.values() if j is not self._running and j.state not in ("queued",)]
            return ([self._running] if self._running else []) + queued + rest

    def wait(self, key: str, timeout: float | None = None) -> Job | None:
        """Block until the job for ``key`` is done or failed (tests, scripts); the job, or None if unknown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while key in self._jobs and self._jobs[key].active:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 1.0)
            return self._jobs.get(key)

    def _preempt_background(self) -> None:
        if self._running is not None and not self._running.urgent and self._proc is not None:
            self._preempted = True
            self._proc.terminate()

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="frpt-jobs", daemon=True)
            self._worker.start()
            self._refill_spare()

    def _refill_spare(self) -> None:
        """Start the spare child unless one is waiting (never while a job runs: its imports would take the job's
        CPU)."""
        if not self._spare_wanted or self._running is not None or not jobs_enabled():
            return
        if self._spare is not None and self._spare[0].poll() is None:
            return
        env = procs.child_env(PARENT_ENV)
        with open(_job_dir() / "spare.log", "wb") as log:
            proc = popen([sys.executable, "-c", "from frpt.jobs import spare_main; spare_main()"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, env=env, close_fds=True)
        _lower_priority(proc.pid)
        self._spare = (proc, env)

    def close(self) -> None:
        """End the spare child (the server's ends with the server; tests and scripts call this)."""
        with self._cond:
            spare, self._spare, self._spare_wanted = self._spare, None, False
        if spare is not None:
            spare[0].kill()
            spare[0].wait()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                job = self._jobs[self._queue.pop(0)]
                self._running, self._preempted = job, False
                job.state, job.started = "running", time.time()
                spare, self._spare = self._spare, None
                self._proc = self._spawn(job, spare)
            code = self._proc.wait()
            with self._cond:
                preempted = self._preempted
                if preempted:  # gave way to a visitor's job: back in the queue, after it
                    job.state, job._rate = "queued", None
                    self._queue.insert(1 if self._queue else 0, job.key)
                elif code == 0:
                    job.state = "done"
                else:
                    job.state, job.error = "failed", _last_error(job.log_file, code)
                job.finished = None if preempted else time.time()
                self._running, self._proc = None, None
                self._refill_spare()
                self._cond.notify_all()

    @staticmethod
    def _spawn(job: Job, spare: tuple[subprocess.Popen, dict[str, str]] | None = None) -> subprocess.Popen:
        """The job's child: the spare, handed the job's command line, when it was started under this environment
        and is still waiting; else a fresh ``python -m frpt ...``."""
        job.status_file.unlink(missing_ok=True)
        argv = [*job.command, "--status-file", str(job.status_file)]
        env = procs.child_env(PARENT_ENV)
        if spare is not None:
            proc, spare_env = spare
            if proc.poll() is None and spare_env == env and argv[:3] == [sys.executable, "-m", "frpt"]:
                try:
                    proc.stdin.write((json.dumps({"argv": argv[3:], "log": str(job.log_file)}) + "\n").encode())
                    proc.stdin.close()
                    return proc
                except OSError:  # it died meanwhile: start one as below
                    pass
            proc.kill()
            proc.wait()
        with open(job.log_file, "wb") as log:
            proc = popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                         close_fds=True)
        _lower_priority(proc.pid)
        return proc


def _lower_priority(pid: int) -> None:
    # Set from here, not in the child (preexec_fn is unsafe in a threaded server): the child's threads are created
    # after this, while Python starts, and inherit it.
    try:
        os.setpriority(os.PRIO_PROCESS, pid, NICE)
    except OSError:
        pass


def spare_main() -> None:
    """A spare job child (:class:`JobQueue`): import what every job needs, then wait for one job on stdin (a JSON
    line: the ``frpt`` command line and the job's log file) and run it exactly as ``python -m frpt`` would. An empty
    stdin (the server closed it, or is gone) ends it."""
    bind_to_parent()
    from . import checkpoint, cli, evaluation, gallery, sweep  # noqa: F401 - importing them now is the point
    from .engine import import_openvino, installed

    if installed("openvino"):
        import_openvino()
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit(0)
    spec = json.loads(line)
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 2)  # the job's errors go to its own log, as a fresh child's do
    os.close(log)
    raise SystemExit(cli.main(spec["argv"]))


def _last_error(log: Path, code: int) -> str:
    """The child's one-sentence error (the CLI prints ``error: ...``), else its last line, else its exit code."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    if code < 0:
        return f"The job was stopped by signal {signal.Signals(-code).name}; it continues from its shards when asked again."
    return lines[-1] if lines else f"The job ended with exit code {code}."


def bind_to_parent() -> None:
    """In a job's child: exit when the server that started it exits (Linux PR_SET_PDEATHSIG), so a killed server
    leaves no orphan holding the gallery's lock; the next server continues from the committed shards."""
    if not procs.bind_to_parent(PARENT_ENV):
        raise SystemExit(1)


_QUEUE: JobQueue | None = None
_QUEUE_LOCK = threading.Lock()


def queue() -> JobQueue:
    """This process's job queue (the app server's: shared by every browser session)."""
    global _QUEUE
    with _QUEUE_LOCK:
        if _QUEUE is None:
            _QUEUE = JobQueue(spare=True)
            if jobs_enabled():
                _QUEUE._start_worker()  # and its spare child: imported before the first job is asked for
        return _QUEUE


def _frpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "frpt", *args, "--quiet"]


def _data_args(dataset: RetrievalDataset, root: str | None) -> list[str]:
    return ["--dataset", dataset.name, *(["--root", str(root)] if root else [])]


def gallery_job(checkpoint: str, card: dict[str, Any], dataset: RetrievalDataset, root: str | None,
                title: str | None = None, shard_size: int | None = None) -> Job:
    """The job that stores ``checkpoint``'s gallery of ``dataset`` (its split), as ``frpt embed`` does (the
    UMAP maps are left to the page: they are fitted on what is ready). ``shard_size``: ``frpt embed``'s default
    unless given (tests make small shards)."""
    path = gallery_file(card, dataset, root)
    shards = [] if shard_size is None else ["--shard-size", str(shard_size)]
    return Job(str(path), "gallery", title or f"{Path(checkpoint).name} · {dataset.name} {dataset.split} gallery",
               _frpt("embed", "--checkpoint", str(checkpoint), *_data_args(dataset, root), "--split", dataset.split,
                     "--no-umap", *shards),
               len(dataset), lambda: gallery_progress(card, dataset, root))


def sweep_job(checkpoint: str, card: dict[str, Any], dataset: RetrievalDataset, root: str | None,
              title: str | None = None) -> Job:
    """The job that stores ``checkpoint``'s prompt sweep over ``dataset`` (the test split), as ``frpt sweep``."""
    path = sweep_file(card, dataset, root)
    return Job(str(path), "sweep", title or f"{Path(checkpoint).name} · {dataset.name} prompt sweep",
               _frpt("sweep", "--checkpoint", str(checkpoint), *_data_args(dataset, root)),
               len(dataset), lambda: len(dataset) if path.is_file() else 0)


def describe(job: Job) -> str:
    """One line for the sidebar: what, how far, how long."""
    done = job.done()
    line = f"{job.title}: {done:,} / {job.total:,}"
    if job.state == "running":
        left = job.seconds_left()
        line += "" if left is None else f", {format_duration(left)} left"
    elif job.state == "queued":
        line += ", queued" if jobs_enabled() else f", queued (background jobs are off: {JOBS_ENV}=0)"
    elif job.state == "failed":
        line += f", failed: {job.error}"
    return line


def format_duration(seconds: float) -> str:
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {max(1, round(seconds))} s"
