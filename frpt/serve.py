"""Serving mode: the app on a public port, locked to the checkpoints and datasets of a TOML config.

``make serve`` sets ``FRPT_SERVE=1`` and validates the config first (``python -m frpt serve --check``), so a bad
config stops the server with one sentence before Streamlit starts. The config (``FRPT_SERVE_CONFIG``, default
``serve.toml`` in the repository root; see ``serve.example.toml``)::

    checkpoints = ["cub/compact-frpt-288", "cub/compact-pt"]  # shipped names or checkpoint folders
    password = "..."                                           # optional: without it the server is open
    [datasets]
    cub = "../shared/data/CUB_200_2011"                        # name = root; synthetic = "" (needs none)

Relative folders are read from the config file's folder. No streamlit here: the UI (frpt/ui/auth.py) and the
background gallery jobs both start from :func:`active_config`.
"""
from __future__ import annotations

import hmac
import os
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, FRPTError

SERVE_ENV = "FRPT_SERVE"
CONFIG_ENV = "FRPT_SERVE_CONFIG"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "serve.toml"
KEYS = ("checkpoints", "password", "datasets")


@dataclass(frozen=True)
class ServedCheckpoint:
    """A checkpoint the server offers: its display name (the config's entry) and its resolved folder."""

    name: str
    path: str


@dataclass(frozen=True)
class ServeConfig:
    """A validated serving config. ``datasets``: name -> resolved root (None for a dataset without files, e.g.
    synthetic)."""

    checkpoints: list[ServedCheckpoint]
    password: str | None
    datasets: dict[str, str | None]
    source: str = ""
    folders: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folders", {c.name: c.path for c in self.checkpoints})

    def check_password(self, given: str) -> bool:
        """Constant-time comparison (no early exit that a timing attack could measure)."""
        if self.password is None:
            return True
        return hmac.compare_digest(given.encode("utf-8"), self.password.encode("utf-8"))


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"Serving config {path}, key {key}: {problem.rstrip('.')}.")


def _checkpoint(entry: object, base: Path, path: Path) -> ServedCheckpoint:
    from .checkpoint import load_card
    from .demo import named_checkpoints

    named = named_checkpoints()
    if not isinstance(entry, str) or not entry.strip():
        raise _fail(path, "checkpoints", f"{entry!r} is not a checkpoint name or folder; write one as a string")
    if entry in named:
        folder = named[entry]
    else:
        folder = base / os.path.expanduser(entry)
    try:
        load_card(folder)
    except FRPTError as exc:
        names = ", ".join(named) or "none"
        raise _fail(path, "checkpoints", f"{entry!r} is neither a shipped checkpoint ({names}) nor a usable "
                                         f"checkpoint folder ({str(exc).rstrip('.')})") from None
    return ServedCheckpoint(entry, str(Path(folder).resolve()))


def _dataset(name: object, root: object, base: Path, path: Path) -> tuple[str, str | None]:
    from .data import DATASETS, NEEDS_ROOT, build_dataset

    key = f"datasets.{name}"
    if name not in DATASETS:
        raise _fail(path, key, f"{name!r} is not a dataset; use one of {', '.join(DATASETS)}")
    if not isinstance(root, str):
        raise _fail(path, key, "the root must be a string (a folder; \"\" for a dataset without files)")
    resolved = str((base / os.path.expanduser(root)).resolve()) if name in NEEDS_ROOT else None
    if name in NEEDS_ROOT and not root.strip():
        raise _fail(path, key, f"{name} needs the folder of its files")
    try:
        build_dataset(name, "test", root=resolved)  # reads the metadata and checks every image is present
    except FRPTError as exc:
        raise _fail(path, key, f"{root!r} is not the {name} dataset ({str(exc).rstrip('.')})") from None
    return str(name), resolved


def load_serve_config(path: str | os.PathLike) -> ServeConfig:
    """Read and validate a serving config; raise :class:`ConfigError` (one sentence naming the key) if anything
    in it cannot be served."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Serving config {path} does not exist; copy serve.example.toml to serve.toml or set "
                          f"{CONFIG_ENV} to your config file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Serving config {path} cannot be read ({type(exc).__name__}); check the file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Serving config {path} is not valid TOML ({str(exc).rstrip('.')}); fix that "
                          "line.") from None
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise _fail(path, unknown[0], f"unknown key; the keys are {', '.join(KEYS)}")
    base = path.resolve().parent
    entries = data.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "checkpoints", "list at least one checkpoint, e.g. checkpoints = [\"frpt\"]")
    checkpoints = [_checkpoint(e, base, path) for e in entries]
    if len({c.name for c in checkpoints}) < len(checkpoints):
        raise _fail(path, "checkpoints", "a checkpoint is listed twice; list each once")
    password = data.get("password")
    if password is not None and (not isinstance(password, str) or not password):
        raise _fail(path, "password", "set a non-empty string, or remove the key to serve without a password")
    tables = data.get("datasets")
    if not isinstance(tables, dict) or not tables:
        raise _fail(path, "datasets", "add a [datasets] table with at least one name = root line")
    datasets = dict(_dataset(n, r, base, path) for n, r in tables.items())
    return ServeConfig(checkpoints, password, datasets, str(path))


def config_path() -> Path:
    """The config serving mode reads: ``$FRPT_SERVE_CONFIG``, else serve.toml in the repository root."""
    return Path(os.environ.get(CONFIG_ENV, "").strip() or DEFAULT_CONFIG)


def serving() -> bool:
    """Whether this process serves (``FRPT_SERVE=1``, set by ``make serve``)."""
    return os.environ.get(SERVE_ENV, "").strip() == "1"


_loaded: dict[str, ServeConfig] = {}
_lock = threading.Lock()


def active_config() -> ServeConfig | None:
    """The serving config of this process (validated once per config path), or None when not serving."""
    if not serving():
        return None
    key = str(config_path().resolve())
    with _lock:
        if key not in _loaded:
            _loaded[key] = load_serve_config(config_path())
        return _loaded[key]


class Throttle:
    """Wrong-password slow-down: each session waits longer after each wrong try (1, 2, 4 ... s after the second),
    and every session waits longer while the whole server sees many wrong tries (guessing from fresh sessions)."""

    def __init__(self, window_s: float = 300.0, free: int = 10, cap_s: float = 30.0) -> None:
        self.window_s, self.free, self.cap_s = window_s, free, cap_s
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()

    def record_failure(self, now: float | None = None) -> None:
        with self._lock:
            self._failures.append(time.monotonic() if now is None else now)

    def server_failures(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._failures and self._failures[0] < now - self.window_s:
                self._failures.popleft()
            return len(self._failures)

    def delay(self, session_failures: int, now: float | None = None) -> float:
        """Seconds to wait before checking a session's next try."""
        own = 0.0 if session_failures < 1 else 2.0 ** (session_failures - 1)
        crowd = max(0, self.server_failures(now) - self.free)
        return min(self.cap_s, own + crowd)
