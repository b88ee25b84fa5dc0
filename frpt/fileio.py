"""Crash-safe file writes: a temp file in the same folder, fsync, then an atomic rename."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# mkstemp creates 0600 files; the renamed file gets the mode a plain open() would give (0666 minus the umask),
# so a checkpoint stays readable by the app or a colleague. Read once, at import (os.umask is process-global).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``; a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable (power loss, not just a killed process)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    atomic_write(path, write)


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete temp files a killed process left behind: ours (``.<name>.<random>.tmp``) and those of safetensors'
    own ``save_file`` (``.tmp`` + 6 random characters), left by runs from before checkpoint tensors were
    serialised in memory."""
    folder = Path(folder)
    for tmp in (*folder.glob(".*.tmp"), *folder.glob(".tmp??????")):
        tmp.unlink(missing_ok=True)
